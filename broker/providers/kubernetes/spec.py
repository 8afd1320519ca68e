"""What the ``kubernetes`` connector type declares: one cluster, three auth methods."""

from __future__ import annotations

from broker.model import (
    AttributeSpec,
    AttrKind,
    AuthMethodSpec,
    ConnectorTypeSpec,
    ResourceTypeSpec,
)

CONNECTOR_TYPE = "kubernetes"
RESOURCE_TYPE = "kubernetes-cluster"
AUTH_PASSWORD = "password"
AUTH_TOKEN = "token"
AUTH_SERVICE_ACCOUNT_TOKEN = "service-account-token"

#: TokenRequest bounds. Kubernetes refuses expirationSeconds under 600 (10 min); the
#: upper bound keeps minted tokens short-lived (a cluster may cap them lower still,
#: and the expiry handed out is always the one the TokenRequest status reports).
MIN_TOKEN_SECONDS = 600
MAX_TOKEN_SECONDS = 24 * 3600
#: What the TokenRequest API itself defaults to.
DEFAULT_TOKEN_SECONDS = 3600

CLUSTER_RESOURCE = ResourceTypeSpec(
    resource_type=RESOURCE_TYPE,
    name="Kubernetes cluster",
    description=(
        "One Kubernetes API server. A kubernetes connector serves exactly one cluster, "
        "named by its 'cluster_name' attribute or, when that is empty, by the server's "
        "host[:port]."
    ),
    supports_instances=False,
    id_formats=(
        "the cluster name (canonical), e.g. prod-eu",
        "the API server URL, e.g. https://10.0.0.1:6443 (must be the connector's server)",
    ),
)

# Attributes every method shares: where the API server is and how to trust it.
_SERVER = AttributeSpec(
    "server",
    "API server URL, e.g. https://10.0.0.1:6443. Plain http:// is accepted for loopback "
    "addresses only (kubectl proxy); credentials never cross a network in clear text.",
    kind=AttrKind.URL,
    required=True,
)
_CA = AttributeSpec(
    "certificate_authority",
    "PEM (or base64 PEM) of the CA that signed the API server's certificate; when set it "
    "is the only CA trusted. Unset: the system trust store.",
    kind=AttrKind.PEM,
)
_INSECURE = AttributeSpec(
    "insecure",
    "Skip TLS verification of the API server (test clusters only). Honoured, never ignored.",
    kind=AttrKind.BOOL,
    default=False,
)
_CLUSTER_NAME = AttributeSpec(
    "cluster_name",
    "Name of the cluster, used as its resource ID. Empty: the server's host[:port].",
)

PASSWORD_METHOD = AuthMethodSpec(
    auth_method=AUTH_PASSWORD,
    name="Username and password",
    description=(
        "HTTP basic authentication. Long-lived and handed out as is; few clusters still "
        "accept it, prefer a token."
    ),
    attributes=(
        _SERVER,
        AttributeSpec("username", "Kubernetes user name.", required=True),
        AttributeSpec("password", "Password of that user.", required=True, secret=True),
        _CA,
        _INSECURE,
        _CLUSTER_NAME,
    ),
)

TOKEN_METHOD = AuthMethodSpec(
    auth_method=AUTH_TOKEN,
    name="Token and/or client certificate",
    description=(
        "A bearer token (e.g. a service account token), a client certificate and key, or "
        "both. Handed out as stored: the broker cannot shorten their lifetime."
    ),
    attributes=(
        _SERVER,
        AttributeSpec("token", "Bearer token.", secret=True),
        AttributeSpec(
            "client_certificate",
            "PEM (or base64 PEM) client certificate; needs client_key.",
            kind=AttrKind.PEM,
        ),
        AttributeSpec(
            "client_key",
            "PEM (or base64 PEM) private key of client_certificate.",
            kind=AttrKind.PEM,
            secret=True,
        ),
        _CA,
        _INSECURE,
        _CLUSTER_NAME,
    ),
)

_BOOTSTRAP_TOKEN = AttributeSpec(
    "token",
    "Bootstrap bearer token of an identity allowed to create serviceaccounts/token for "
    "service_account. Never handed out.",
    secret=True,
)
_BOOTSTRAP_CERT = AttributeSpec(
    "client_certificate",
    "PEM (or base64 PEM) bootstrap client certificate (instead of or with token); needs "
    "client_key. Never handed out.",
    kind=AttrKind.PEM,
)
_BOOTSTRAP_KEY = AttributeSpec(
    "client_key",
    "PEM (or base64 PEM) private key of client_certificate.",
    kind=AttrKind.PEM,
    secret=True,
)

SERVICE_ACCOUNT_TOKEN_METHOD = AuthMethodSpec(
    auth_method=AUTH_SERVICE_ACCOUNT_TOKEN,
    name="Minted service account tokens (TokenRequest)",
    description=(
        "The connector keeps a bootstrap credential (token and/or client certificate) whose "
        "identity may 'create' 'serviceaccounts/token' on service_account, and hands out "
        "only fresh bound tokens of that service account, minted with the TokenRequest API "
        "for expiration_seconds (600..86400, default 3600; the cluster may shorten it) and "
        "renewed before they expire. The bootstrap credential never leaves the daemon."
    ),
    attributes=(
        _SERVER,
        AttributeSpec(
            "service_account",
            "NAMESPACE/NAME of the service account whose tokens are minted, e.g. ci/deployer.",
            required=True,
        ),
        AttributeSpec(
            "audiences",
            "Audiences of the minted tokens (JSON list or comma-separated). Empty: the API "
            "server's own audience, so the token works against this cluster.",
            kind=AttrKind.LIST,
        ),
        _BOOTSTRAP_TOKEN,
        _BOOTSTRAP_CERT,
        _BOOTSTRAP_KEY,
        _CA,
        _INSECURE,
        _CLUSTER_NAME,
    ),
    min_expiration_seconds=MIN_TOKEN_SECONDS,
    max_expiration_seconds=MAX_TOKEN_SECONDS,
    default_expiration_seconds=DEFAULT_TOKEN_SECONDS,
)

SPEC = ConnectorTypeSpec(
    connector_type=CONNECTOR_TYPE,
    name="Kubernetes cluster",
    description=(
        "Credentials for one generic Kubernetes API server, verified with GET /version, or "
        "service account tokens minted with TokenRequest; can be auto-configured from a "
        "kubeconfig context."
    ),
    resource_types=(CLUSTER_RESOURCE,),
    auth_methods=(PASSWORD_METHOD, TOKEN_METHOD, SERVICE_ACCOUNT_TOKEN_METHOD),
    supports_auto_configuration=True,
)
