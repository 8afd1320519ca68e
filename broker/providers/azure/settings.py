"""An azure connector's configuration read once into typed settings.

``validate`` (register time) and ``mint``/``discover`` (later) read the
configuration through this same code. Endpoints default to the public cloud;
each can be moved (sovereign clouds, private endpoints, local stand-ins).
Implicit auth reads the daemon's ``AZURE_*`` variables as the Azure SDKs'
EnvironmentCredential does; without them the daemon's DefaultAzureCredential
(managed identity, az login) answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from urllib.parse import urlsplit

from broker.errors import InvalidArgument
from broker.model import Connector, Value
from broker.providers.azure import ids
from broker.providers.azure.spec import (
    AUTH_IMPLICIT,
    AUTH_SERVICE_PRINCIPAL,
    AUTH_TOKEN,
    BLOB_SAS,
    BLOB_TOKEN,
    CONNECTOR_TYPE,
)
from broker.providers.values import optional_text, required_text

PUBLIC_AUTHORITY = "https://login.microsoftonline.com"
PUBLIC_ARM = "https://management.azure.com"
PUBLIC_STORAGE_SUFFIX = "core.windows.net"
PUBLIC_ACR_SUFFIX = "azurecr.io"
#: The Entra scope of Azure Storage (same in every cloud's public name).
STORAGE_SCOPE = "https://storage.azure.com/.default"
#: The AKS Entra server application every AKS-managed-Entra cluster trusts (kubelogin's).
AKS_SCOPE = "6dae42f8-4368-4678-94ff-3960e28e3630/.default"


@dataclass(frozen=True)
class Endpoints:
    """Where the connector's Azure calls go."""

    authority: str = PUBLIC_AUTHORITY
    arm: str = PUBLIC_ARM
    storage_suffix: str = PUBLIC_STORAGE_SUFFIX
    blob_template: str | None = None
    acr_suffix: str = PUBLIC_ACR_SUFFIX
    acr_scheme: str = "https"
    acr_template: str | None = None
    certificate_authority: str | None = None

    @property
    def arm_scope(self) -> str:
        return f"{self.arm}/.default"

    def blob_url(self, account: str) -> str:
        if self.blob_template:
            return self.blob_template.replace("{account}", account)
        return f"https://{account}.blob.{self.storage_suffix}"

    def acr_url(self, login_server: str) -> str:
        if self.acr_template:
            return self.acr_template.replace("{name}", login_server.split(".", 1)[0])
        return f"{self.acr_scheme}://{login_server}"


@dataclass(frozen=True)
class AzureSettings:
    """What a connector's attributes mean, checked."""

    connector: str
    auth_method: str
    endpoints: Endpoints
    tenant: str | None = None
    client_id: str | None = None
    client_secret: str | None = dc_field(default=None, repr=False)
    #: PEM certificate plus RSA key (service principal by certificate).
    certificate: str | None = dc_field(default=None, repr=False)
    #: Workload identity: the file the federated token is read from (implicit via env).
    federated_token_file: str | None = None
    token: str | None = dc_field(default=None, repr=False)
    subscription: str | None = None
    blob_credential: str = BLOB_SAS

    @property
    def generic_id(self) -> str | None:
        return self.subscription or self.tenant

    @classmethod
    def from_connector(cls, connector: Connector, env: Mapping[str, str]) -> AzureSettings:
        config = connector.config
        method = connector.auth_method
        tenant_raw = optional_text(config, "tenant_id")
        client_id = secret = certificate = token = federated = None
        if method == AUTH_SERVICE_PRINCIPAL:
            tenant_raw = required_text(config, "tenant_id", method)
            client_id = ids.check_guid(
                required_text(config, "client_id", method),
                "client_id",
                "an application (client) ID",
            )
            secret = optional_text(config, "client_secret")
            certificate = optional_text(config, "client_certificate")
            if (secret is None) == (certificate is None):
                raise InvalidArgument(
                    "auth method 'service-principal' takes exactly one of client_secret and "
                    "client_certificate",
                    field="client_secret" if secret is None else "client_certificate",
                )
            if certificate is not None:
                _check_certificate(certificate)
        elif method == AUTH_TOKEN:
            token = required_text(config, "token", method).strip()
        elif method == AUTH_IMPLICIT:
            tenant_raw = tenant_raw or env.get("AZURE_TENANT_ID") or None
            if env.get("AZURE_CLIENT_ID"):
                client_id = ids.check_guid(env["AZURE_CLIENT_ID"], "AZURE_CLIENT_ID", "a client ID")
            secret = env.get("AZURE_CLIENT_SECRET") or None
            path = env.get("AZURE_CLIENT_CERTIFICATE_PATH")
            if path and not secret:
                certificate = _read_file(path, "AZURE_CLIENT_CERTIFICATE_PATH")
            federated = env.get("AZURE_FEDERATED_TOKEN_FILE") or None
        else:
            raise InvalidArgument(
                f"connector type '{CONNECTOR_TYPE}' has no auth method '{method}'",
                field="auth_method",
            )
        tenant = ids.check_tenant(tenant_raw) if tenant_raw else None
        subscription_raw = optional_text(config, "subscription_id")
        if subscription_raw is None and method == AUTH_IMPLICIT:
            subscription_raw = env.get("AZURE_SUBSCRIPTION_ID") or None
        subscription = (
            ids.check_guid(subscription_raw, "subscription_id", "a subscription ID")
            if subscription_raw
            else None
        )
        blob = optional_text(config, "blob_credential") or BLOB_SAS
        if blob not in (BLOB_SAS, BLOB_TOKEN):
            raise InvalidArgument(
                f"attribute 'blob_credential' must be {BLOB_SAS} or {BLOB_TOKEN}",
                field="blob_credential",
            )
        return cls(
            connector=connector.name,
            auth_method=method,
            endpoints=_endpoints(config),
            tenant=tenant,
            client_id=client_id,
            client_secret=secret,
            certificate=certificate,
            federated_token_file=federated,
            token=token,
            subscription=subscription,
            blob_credential=blob,
        )


def _endpoints(config: Mapping[str, Value]) -> Endpoints:
    acr_scheme = (optional_text(config, "acr_scheme") or "https").lower()
    if acr_scheme not in ("https", "http"):
        raise InvalidArgument("attribute 'acr_scheme' must be https or http", field="acr_scheme")
    blob_template = _url(config, "blob_endpoint", placeholder="{account}")
    acr_template = _url(config, "acr_endpoint", placeholder="{name}")
    return Endpoints(
        authority=_url(config, "authority_host", https=True) or PUBLIC_AUTHORITY,
        arm=_url(config, "arm_endpoint", https=True) or PUBLIC_ARM,
        storage_suffix=ids.check_suffix(
            optional_text(config, "storage_endpoint_suffix") or PUBLIC_STORAGE_SUFFIX,
            "storage_endpoint_suffix",
        ),
        blob_template=blob_template,
        acr_suffix=ids.check_suffix(
            optional_text(config, "acr_suffix") or PUBLIC_ACR_SUFFIX, "acr_suffix"
        ),
        acr_scheme=acr_scheme,
        acr_template=acr_template,
        certificate_authority=optional_text(config, "certificate_authority"),
    )


def _url(
    config: Mapping[str, Value], name: str, *, https: bool = False, placeholder: str | None = None
) -> str | None:
    """An endpoint attribute: an absolute URL (https where tokens are sent in the clear
    otherwise), no query, no trailing slash."""
    text = optional_text(config, name)
    if text is None:
        return None
    probe = text.replace(placeholder, "x") if placeholder else text
    parts = urlsplit(probe)
    allowed = ("https",) if https else ("https", "http")
    if parts.scheme not in allowed or not parts.hostname or parts.query or parts.fragment:
        need = "an https:// URL" if https else "an http(s):// URL"
        raise InvalidArgument(f"attribute '{name}' must be {need} without a query", field=name)
    if placeholder and placeholder not in text:
        raise InvalidArgument(
            f"attribute '{name}' must contain {placeholder}, e.g. https://host/{placeholder}",
            field=name,
        )
    return text.rstrip("/")


def _check_certificate(pem: str) -> None:
    """A PEM certificate with an RSA private key (Entra's client assertions are RS256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = pem.encode()
    try:
        x509.load_pem_x509_certificate(data)
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InvalidArgument(
            "attribute 'client_certificate' must hold a PEM certificate and its unencrypted "
            "private key",
            field="client_certificate",
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise InvalidArgument(
            "attribute 'client_certificate' must hold an RSA key (Entra signs client "
            "assertions with RS256)",
            field="client_certificate",
        )


def _read_file(path: str, field: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{field} '{path}' cannot be read: {exc}", field=field) from None
