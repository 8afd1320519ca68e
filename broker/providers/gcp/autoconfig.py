"""Auto-configuration from the caller's Application Default Credentials.

Runs in the CLI process with the user's environment: a service account key
becomes a service-account connector (or the source of an impersonation one
when asked), an authorized_user file a user-account connector, an
external_account file an external-account connector. The project comes from,
in order: the CLI option, GOOGLE_CLOUD_PROJECT / CLOUDSDK_CORE_PROJECT, the
file, gcloud's active configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from broker.errors import FailedPrecondition, InvalidArgument
from broker.model import AutoConfigured, AutoConfigureOptions, Value
from broker.providers.gcp import adc
from broker.providers.gcp.keys import AUTHORIZED_USER, EXTERNAL_ACCOUNT, SERVICE_ACCOUNT
from broker.providers.gcp.spec import (
    AUTH_EXTERNAL,
    AUTH_IMPERSONATION,
    AUTH_IMPLICIT,
    AUTH_SERVICE,
    AUTH_USER,
)

_METHODS = {
    SERVICE_ACCOUNT: (AUTH_SERVICE, AUTH_IMPERSONATION),
    AUTHORIZED_USER: (AUTH_USER,),
    EXTERNAL_ACCOUNT: (AUTH_EXTERNAL,),
}
_ATTRIBUTE = {
    AUTH_SERVICE: "service_account_json",
    AUTH_IMPERSONATION: "service_account_json",
    AUTH_USER: "user_account_json",
    AUTH_EXTERNAL: "external_account_json",
}


def auto_configure(options: AutoConfigureOptions, env: Mapping[str, str]) -> AutoConfigured:
    """A gcp configuration from the ADC found in ``env``."""
    wanted = options.auth_method or None
    explicit_project = options.options.get("project_id") or options.options.get("project")
    if wanted == AUTH_IMPLICIT:
        # The daemon's own identity: nothing to copy from this environment but a project.
        project = explicit_project or adc.env_project(env) or adc.gcloud_project(env)
        config: dict[str, Value] = {"project_id": project} if project else {}
        return _result(AUTH_IMPLICIT, config, options)
    key = adc.load_adc(env, field="auto_configure")
    if key is None:
        raise FailedPrecondition(
            "no Application Default Credentials found: set GOOGLE_APPLICATION_CREDENTIALS "
            "to a key file or run 'gcloud auth application-default login'"
        )
    methods = _METHODS[key.type]
    method = wanted or methods[0]
    if method not in methods:
        raise InvalidArgument(
            f"the Application Default Credentials hold a {key.type} file, which auth method "
            f"'{method}' cannot use (it fits: {', '.join(methods)})",
            field="auth_method",
        )
    config = {_ATTRIBUTE[method]: json.dumps(dict(key.data))}
    project = explicit_project or adc.env_project(env) or key.project or adc.gcloud_project(env)
    if project:
        config["project_id"] = project
    if method == AUTH_IMPERSONATION and options.options.get("target_principal"):
        config["target_principal"] = options.options["target_principal"]
    return _result(method, config, options)


def _result(method: str, config: dict[str, Value], options: AutoConfigureOptions) -> AutoConfigured:
    return AutoConfigured(
        auth_method=method,
        config=config,
        resource_type=options.resource_type,
        resource_id=options.resource_id,
    )
