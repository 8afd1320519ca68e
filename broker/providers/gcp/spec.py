"""What the ``gcp`` connector type declares: four resource types, six auth methods.

Google access tokens from a key (service account, user account, federation)
always live one hour and the token endpoint takes no lifetime, so those
methods declare 3600 s as their only expiration; impersonation asks the IAM
Credentials API for a lifetime, so it offers a range.
"""

from __future__ import annotations

from broker.model import (
    AttributeSpec,
    AttrKind,
    AuthMethodSpec,
    ConnectorTypeSpec,
    ResourceTypeSpec,
)

CONNECTOR_TYPE = "gcp"

RT_GENERIC = "gcp-generic"
RT_GCS = "gcs-bucket"
RT_GKE = "kubernetes-cluster"
RT_REGISTRY = "docker-registry"

AUTH_IMPLICIT = "implicit"
AUTH_USER = "user-account"
AUTH_SERVICE = "service-account"
AUTH_TOKEN = "oauth2-token"
AUTH_IMPERSONATION = "impersonation"
AUTH_EXTERNAL = "external-account"

#: Google's fixed access token lifetime, and the IAM Credentials API's default maximum.
TOKEN_LIFETIME = 3600
MIN_IMPERSONATION_LIFETIME = 600

GENERIC_RESOURCE = ResourceTypeSpec(
    resource_type=RT_GENERIC,
    name="GCP project",
    description=(
        "Any Google Cloud API of the connector's project, reached with an OAuth2 access "
        "token (cloud-platform scope)."
    ),
    supports_instances=False,
    id_formats=("the project ID (canonical), e.g. my-project-123",),
)

GCS_RESOURCE = ResourceTypeSpec(
    resource_type=RT_GCS,
    name="GCS bucket",
    description="Google Cloud Storage buckets, reached with an OAuth2 access token.",
    supports_instances=True,
    id_formats=("gs://BUCKET (canonical)", "BUCKET"),
)

GKE_RESOURCE = ResourceTypeSpec(
    resource_type=RT_GKE,
    name="GKE cluster",
    description=(
        "Google Kubernetes Engine clusters of the connector's project; handed out as a "
        "kubernetes token credential (API server, CA, access token)."
    ),
    supports_instances=True,
    id_formats=(
        "NAME: the cluster name, when no other location has a cluster of that name",
        "LOCATION/NAME: location-qualified, e.g. europe-west1/prod (needed when names "
        "clash across locations)",
        "projects/PROJECT/locations/LOCATION/clusters/NAME or gke_PROJECT_LOCATION_NAME "
        "(canonical LOCATION/NAME)",
    ),
)

REGISTRY_RESOURCE = ResourceTypeSpec(
    resource_type=RT_REGISTRY,
    name="GCR / Artifact Registry",
    description=(
        "Container registries of the connector's project; handed out as a docker password "
        "credential (username oauth2accesstoken, password = access token)."
    ),
    supports_instances=True,
    id_formats=(
        "gcr.io/PROJECT, us.gcr.io/PROJECT, eu.gcr.io/PROJECT, asia.gcr.io/PROJECT",
        "LOCATION-docker.pkg.dev/PROJECT/REPOSITORY (Artifact Registry)",
        "any of these with https:// or an image path after them (both dropped)",
    ),
)

_PROJECT = AttributeSpec(
    "project_id",
    "Google Cloud project ID. Optional when the key file names one (project_id, or "
    "quota_project_id of a user account).",
)
_PROJECT_NUMBER = AttributeSpec(
    "project_number",
    "The project's number (digits), served as the GCE metadata endpoint's "
    "numeric-project-id. Optional: without it the endpoint asks the Resource Manager "
    "API once (needs resourcemanager.projects.get).",
)
_GENERATE = AttributeSpec(
    "generate_temporary_tokens",
    "Hand out short-lived OAuth2 access tokens (default). false hands out the key file "
    "itself for gcp-generic and gcs-bucket (and a service account key as docker "
    "'_json_key' login for registries); GKE clusters always get tokens.",
    kind=AttrKind.BOOL,
    default=True,
)


def _key_attr(name: str, what: str, *, required: bool = True) -> AttributeSpec:
    return AttributeSpec(name, what, kind=AttrKind.JSON, required=required, secret=True)


IMPLICIT_METHOD = AuthMethodSpec(
    auth_method=AUTH_IMPLICIT,
    name="Application Default Credentials of the daemon",
    description=(
        "The daemon's own Google identity: GOOGLE_APPLICATION_CREDENTIALS, the gcloud ADC "
        "file, or the GCE metadata server. Disabled unless the daemon runs with "
        "BROKER_ENABLE_IMPLICIT_AUTH_METHODS=true."
    ),
    attributes=(_PROJECT, _PROJECT_NUMBER),
    min_expiration_seconds=TOKEN_LIFETIME,
    max_expiration_seconds=TOKEN_LIFETIME,
    default_expiration_seconds=TOKEN_LIFETIME,
    implicit=True,
)

USER_METHOD = AuthMethodSpec(
    auth_method=AUTH_USER,
    name="GCP user account",
    description=(
        "An authorized_user credentials file (gcloud auth application-default login); "
        "the refresh token stays in the broker, clients get 1-hour access tokens."
    ),
    attributes=(
        _key_attr(
            "user_account_json", "authorized_user JSON (client_id, client_secret, refresh_token)."
        ),
        _PROJECT,
        _PROJECT_NUMBER,
        _GENERATE,
    ),
    min_expiration_seconds=TOKEN_LIFETIME,
    max_expiration_seconds=TOKEN_LIFETIME,
    default_expiration_seconds=TOKEN_LIFETIME,
)

SERVICE_METHOD = AuthMethodSpec(
    auth_method=AUTH_SERVICE,
    name="GCP service account key",
    description=(
        "A service account key file; the key stays in the broker, clients get 1-hour access tokens."
    ),
    attributes=(
        _key_attr("service_account_json", "service_account key JSON."),
        _PROJECT,
        _PROJECT_NUMBER,
        _GENERATE,
    ),
    min_expiration_seconds=TOKEN_LIFETIME,
    max_expiration_seconds=TOKEN_LIFETIME,
    default_expiration_seconds=TOKEN_LIFETIME,
)

TOKEN_METHOD = AuthMethodSpec(
    auth_method=AUTH_TOKEN,
    name="OAuth2 access token",
    description=(
        "An access token obtained elsewhere (e.g. gcloud auth print-access-token), handed "
        "out until the connector's expires_at; needs project_id."
    ),
    attributes=(
        AttributeSpec("token", "OAuth2 access token.", required=True, secret=True),
        _PROJECT,
        _PROJECT_NUMBER,
    ),
    requires_expires_at=True,
)

IMPERSONATION_METHOD = AuthMethodSpec(
    auth_method=AUTH_IMPERSONATION,
    name="GCP service account impersonation",
    description=(
        "A source service account key impersonates target_principal through the IAM "
        "Credentials API (the source needs roles/iam.serviceAccountTokenCreator on it); "
        "clients get tokens of the target with the connector's expiration."
    ),
    attributes=(
        _key_attr("service_account_json", "service_account key JSON of the source account."),
        AttributeSpec(
            "target_principal",
            "Email of the service account to impersonate.",
            required=True,
        ),
        _PROJECT,
        _PROJECT_NUMBER,
    ),
    min_expiration_seconds=MIN_IMPERSONATION_LIFETIME,
    max_expiration_seconds=TOKEN_LIFETIME,
    default_expiration_seconds=TOKEN_LIFETIME,
)

EXTERNAL_METHOD = AuthMethodSpec(
    auth_method=AUTH_EXTERNAL,
    name="GCP external account (workload identity federation)",
    description=(
        "An external_account credential configuration: a subject token from a file or URL "
        "is exchanged at Google STS, optionally impersonating a service account."
    ),
    attributes=(
        _key_attr("external_account_json", "external_account credential configuration JSON."),
        _PROJECT,
        _PROJECT_NUMBER,
    ),
    min_expiration_seconds=TOKEN_LIFETIME,
    max_expiration_seconds=TOKEN_LIFETIME,
    default_expiration_seconds=TOKEN_LIFETIME,
)

SPEC = ConnectorTypeSpec(
    connector_type=CONNECTOR_TYPE,
    name="Google Cloud Platform",
    description=(
        "Google Cloud credentials handing out short-lived OAuth2 access tokens for the "
        "project, GCS buckets, GKE clusters and GCR / Artifact Registry registries."
    ),
    resource_types=(GENERIC_RESOURCE, GCS_RESOURCE, GKE_RESOURCE, REGISTRY_RESOURCE),
    auth_methods=(
        IMPLICIT_METHOD,
        USER_METHOD,
        SERVICE_METHOD,
        TOKEN_METHOD,
        IMPERSONATION_METHOD,
        EXTERNAL_METHOD,
    ),
    supports_auto_configuration=True,
)
