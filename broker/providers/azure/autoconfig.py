"""Auto-configuration from the caller's Azure environment.

Runs in the CLI process with the user's environment, in the order the Azure
SDKs' EnvironmentCredential reads it: ``AZURE_TENANT_ID`` + ``AZURE_CLIENT_ID``
with ``AZURE_CLIENT_SECRET`` or ``AZURE_CLIENT_CERTIFICATE_PATH`` become a
service-principal connector (the secret or certificate copied into the
broker). Otherwise the Azure CLI's cached login (``azureProfile.json`` in
``AZURE_CONFIG_DIR`` or ``~/.azure``) gives the default subscription and its
tenant for an implicit connector: the CLI's refresh tokens stay where they are,
and the daemon uses its own ``az login`` (DefaultAzureCredential).
``AZURE_SUBSCRIPTION_ID`` names the subscription in either case.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.errors import FailedPrecondition, InvalidArgument
from broker.model import AutoConfigured, AutoConfigureOptions, Value
from broker.providers.azure.spec import AUTH_IMPLICIT, AUTH_SERVICE_PRINCIPAL


def auto_configure(options: AutoConfigureOptions, env: Mapping[str, str]) -> AutoConfigured:
    wanted = options.auth_method or None
    config: dict[str, Value] = {}
    tenant, client = env.get("AZURE_TENANT_ID"), env.get("AZURE_CLIENT_ID")
    secret, cert_path = env.get("AZURE_CLIENT_SECRET"), env.get("AZURE_CLIENT_CERTIFICATE_PATH")
    subscription = options.options.get("subscription_id") or env.get("AZURE_SUBSCRIPTION_ID")
    if wanted in (None, AUTH_SERVICE_PRINCIPAL) and tenant and client and (secret or cert_path):
        config = {"tenant_id": tenant, "client_id": client}
        if secret:
            config["client_secret"] = secret
        else:
            assert cert_path is not None
            try:
                config["client_certificate"] = Path(cert_path).read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidArgument(
                    f"AZURE_CLIENT_CERTIFICATE_PATH '{cert_path}' cannot be read: {exc}",
                    field="auto_configure",
                ) from None
        method = AUTH_SERVICE_PRINCIPAL
    elif wanted == AUTH_SERVICE_PRINCIPAL:
        raise FailedPrecondition(
            "no service principal in the environment: set AZURE_TENANT_ID, AZURE_CLIENT_ID "
            "and AZURE_CLIENT_SECRET (or AZURE_CLIENT_CERTIFICATE_PATH)"
        )
    elif wanted in (None, AUTH_IMPLICIT):
        profile = _cli_default_subscription(env)
        if profile is None and wanted is None and not tenant:
            raise FailedPrecondition(
                "no Azure credentials found: set AZURE_TENANT_ID, AZURE_CLIENT_ID and "
                "AZURE_CLIENT_SECRET, or run 'az login'"
            )
        method = AUTH_IMPLICIT
        if profile is not None:
            subscription = subscription or profile.get("id")
            tenant = tenant or profile.get("tenantId")
        if tenant:
            config["tenant_id"] = tenant
    else:
        raise InvalidArgument(
            f"auth method '{wanted}' cannot be auto-configured (service-principal and "
            "implicit can)",
            field="auth_method",
        )
    if subscription:
        config["subscription_id"] = str(subscription)
    return AutoConfigured(
        auth_method=method,
        config=config,
        resource_type=options.resource_type,
        resource_id=options.resource_id,
    )


def _cli_default_subscription(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The Azure CLI's default subscription (``isDefault``) from azureProfile.json."""
    base = env.get("AZURE_CONFIG_DIR") or (
        str(Path(env["HOME"]) / ".azure") if env.get("HOME") else None
    )
    if base is None:
        return None
    try:
        # The CLI writes it with a UTF-8 byte order mark.
        doc = json.loads(Path(base, "azureProfile.json").read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None
    for sub in doc.get("subscriptions") or () if isinstance(doc, dict) else ():
        if isinstance(sub, dict) and sub.get("isDefault"):
            return sub
    return None
