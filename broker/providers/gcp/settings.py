"""A gcp connector's configuration read once into typed settings.

``validate`` (register time) and ``mint``/``discover`` (later) read the
configuration through the same code, so a connector that registered cleanly
is read the same way when it is used. The project is the ``project_id``
attribute or, when omitted, the one the key file names; with neither,
nothing can be scoped and registration fails naming ``project_id``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field

from broker.attributes import parse_value
from broker.errors import InvalidArgument
from broker.model import AttributeSpec, AttrKind, Connector
from broker.providers.gcp import adc
from broker.providers.gcp.ids import check_project
from broker.providers.gcp.keys import (
    AUTHORIZED_USER,
    EXTERNAL_ACCOUNT,
    SERVICE_ACCOUNT,
    KeyFile,
    check_principal,
    parse_key,
)
from broker.providers.gcp.spec import (
    AUTH_EXTERNAL,
    AUTH_IMPERSONATION,
    AUTH_IMPLICIT,
    AUTH_SERVICE,
    AUTH_TOKEN,
    AUTH_USER,
)
from broker.providers.values import optional_text, required_text

#: Which attribute holds the key file, and its type, per auth method.
KEY_ATTRIBUTES: dict[str, tuple[str, str]] = {
    AUTH_USER: ("user_account_json", AUTHORIZED_USER),
    AUTH_SERVICE: ("service_account_json", SERVICE_ACCOUNT),
    AUTH_IMPERSONATION: ("service_account_json", SERVICE_ACCOUNT),
    AUTH_EXTERNAL: ("external_account_json", EXTERNAL_ACCOUNT),
}
_GENERATE = AttributeSpec("generate_temporary_tokens", "", kind=AttrKind.BOOL)
_PROJECT_NUMBER = re.compile(r"^[0-9]{1,20}$")


@dataclass(frozen=True)
class GcpSettings:
    """What a connector's attributes mean, checked."""

    connector: str
    auth_method: str
    project: str
    #: The key file (implicit: the daemon's ADC file; None means the metadata server).
    key: KeyFile | None = None
    #: The stored OAuth2 token (oauth2-token only).
    token: str | None = dc_field(default=None, repr=False)
    #: The service account to impersonate (impersonation only).
    target: str | None = None
    generate_tokens: bool = True
    #: The project's number, if the connector names it.
    project_number: str | None = None

    @classmethod
    def from_connector(cls, connector: Connector, env: Mapping[str, str]) -> GcpSettings:
        """Read and check ``connector``; ``env`` is the daemon's (implicit ADC lookup)."""
        config = connector.config
        method = connector.auth_method
        key: KeyFile | None = None
        token = target = None
        if method in KEY_ATTRIBUTES:
            field, kind = KEY_ATTRIBUTES[method]
            key = parse_key(required_text(config, field, method), field, kind)
        elif method == AUTH_IMPLICIT:
            key = adc.load_adc(env, field="auth_method")
        elif method == AUTH_TOKEN:
            token = required_text(config, "token", method).strip()
        else:
            raise InvalidArgument(
                f"connector type 'gcp' has no auth method '{method}'", field="auth_method"
            )
        if method == AUTH_IMPERSONATION:
            target = check_principal(required_text(config, "target_principal", method))
        project = optional_text(config, "project_id")
        if project is None and key is not None:
            project = key.project
        if project is None and method == AUTH_IMPLICIT:
            project = adc.env_project(env)
        if project is None:
            raise InvalidArgument(
                f"attribute 'project_id' is required for connector '{connector.name}': "
                "its credentials name no project",
                field="project_id",
            )
        generate = parse_value(_GENERATE, config.get("generate_temporary_tokens", True))
        number = optional_text(config, "project_number")
        if number is not None and not _PROJECT_NUMBER.match(number):
            raise InvalidArgument(
                "attribute 'project_number' must be the project's number (digits only)",
                field="project_number",
            )
        return cls(
            connector=connector.name,
            auth_method=method,
            project=check_project(project),
            key=key,
            token=token,
            target=target,
            generate_tokens=generate is True,
            project_number=number,
        )
