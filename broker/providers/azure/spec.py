"""What the ``azure`` connector type declares: four resource types, four auth methods.

Entra ID access tokens live 60 to 90 minutes, as Entra decides: no request can
choose their lifetime, so the expiration a connector sets bounds what the
broker mints itself (the blob containers' user-delegation SAS). The endpoint
attributes move every Azure endpoint the connector calls, for sovereign clouds
(Azure China, US Government) and for private or local stand-ins.
"""

from __future__ import annotations

from broker.model import (
    AttributeSpec,
    AuthMethodSpec,
    ConnectorTypeSpec,
    ResourceTypeSpec,
)

CONNECTOR_TYPE = "azure"

RT_GENERIC = "azure-generic"
RT_BLOB = "blob-container"
RT_AKS = "kubernetes-cluster"
RT_REGISTRY = "docker-registry"

AUTH_SERVICE_PRINCIPAL = "service-principal"
AUTH_TOKEN = "access-token"
AUTH_IMPLICIT = "implicit"

#: User-delegation SAS bounds: Azure allows a delegation key (and so a SAS) up to 7 days.
MIN_SAS_LIFETIME = 300
MAX_SAS_LIFETIME = 7 * 24 * 3600
DEFAULT_SAS_LIFETIME = 3600

#: What blob-container consumers get: a SAS for the one container, or a storage token.
BLOB_SAS = "user-delegation-sas"
BLOB_TOKEN = "access-token"

GENERIC_RESOURCE = ResourceTypeSpec(
    resource_type=RT_GENERIC,
    name="Azure subscription",
    description=(
        "Azure Resource Manager for the connector's subscription, reached with an Entra "
        "access token for https://management.azure.com/.default. Without subscription_id: "
        "the tenant by default, and any Enabled subscription the identity sees (listed as "
        "az account list does); the credential names the subscription asked for."
    ),
    supports_instances=False,
    id_formats=(
        "the subscription ID (canonical, a GUID), or the tenant when no subscription is set",
        "/subscriptions/SUBSCRIPTION_ID",
        "without subscription_id: any Enabled subscription's ID the identity sees",
    ),
)

BLOB_RESOURCE = ResourceTypeSpec(
    resource_type=RT_BLOB,
    name="Azure Blob Storage container",
    description=(
        "One blob container, handed out as a user-delegation SAS scoped to that container "
        "(blob_credential=access-token: a storage-scoped Entra token instead)."
    ),
    supports_instances=True,
    id_formats=(
        "az://ACCOUNT/CONTAINER (canonical)",
        "https://ACCOUNT.blob.core.windows.net/CONTAINER (with the connector's storage suffix)",
        "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Storage/storageAccounts/"
        "ACCOUNT/blobServices/default/containers/CONTAINER",
    ),
)

AKS_RESOURCE = ResourceTypeSpec(
    resource_type=RT_AKS,
    name="AKS cluster",
    description=(
        "Azure Kubernetes Service clusters of the subscription; handed out as a kubernetes "
        "token credential (server, CA, an Entra token for the AKS server application, as "
        "kubelogin gets)."
    ),
    supports_instances=True,
    id_formats=(
        "RESOURCE_GROUP/NAME (canonical; the resource group in lower case)",
        "NAME, when no other resource group has a cluster of that name",
        "SUBSCRIPTION_ID/RESOURCE_GROUP/NAME (canonical, and what listings show, when the "
        "connector names no subscription_id: the same RESOURCE_GROUP/NAME may exist in "
        "several subscriptions)",
        "/subscriptions/S/resourceGroups/RG/providers/Microsoft.ContainerService/"
        "managedClusters/NAME",
    ),
)

REGISTRY_RESOURCE = ResourceTypeSpec(
    resource_type=RT_REGISTRY,
    name="Azure Container Registry",
    description=(
        "ACR registries; handed out as a docker password credential: user "
        "00000000-0000-0000-0000-000000000000 and an ACR refresh token from the registry's "
        "/oauth2/exchange."
    ),
    supports_instances=True,
    id_formats=(
        "NAME.azurecr.io (canonical; the connector's ACR suffix), https:// and an image "
        "path dropped",
        "/subscriptions/S/resourceGroups/RG/providers/Microsoft.ContainerRegistry/registries/NAME",
    ),
)

_SUBSCRIPTION = AttributeSpec(
    "subscription_id",
    "Azure subscription ID (GUID) the connector works in. Unset: storage accounts, AKS "
    "clusters and ACR registries are listed in every Enabled subscription the identity sees "
    "(a few at a time; a failing one is named in a partial error), and AKS IDs carry the "
    "subscription.",
)
_ENDPOINTS = (
    AttributeSpec(
        "authority_host",
        "Entra ID authority (https), e.g. https://login.chinacloudapi.cn. Default "
        "https://login.microsoftonline.com.",
    ),
    AttributeSpec(
        "arm_endpoint",
        "Azure Resource Manager endpoint; tokens for it ask for ENDPOINT/.default. Default "
        "https://management.azure.com.",
    ),
    AttributeSpec(
        "storage_endpoint_suffix",
        "Storage DNS suffix: blob endpoints are https://ACCOUNT.blob.SUFFIX. Default "
        "core.windows.net.",
    ),
    AttributeSpec(
        "blob_endpoint",
        "Blob endpoint template with {account}, for private endpoints and emulators, e.g. "
        "https://127.0.0.1:10000/{account}. Default https://{account}.blob.SUFFIX.",
    ),
    AttributeSpec(
        "acr_suffix",
        "ACR login server suffix: registries are NAME.SUFFIX. Default azurecr.io.",
    ),
    AttributeSpec(
        "acr_scheme",
        "Scheme of the ACR login servers' token endpoints (https, or http for a local "
        "stand-in). Default https.",
    ),
    AttributeSpec(
        "acr_endpoint",
        "Base URL template with {name} the broker calls for a registry's /oauth2/exchange "
        "(private endpoints, stand-ins). Default ACR_SCHEME://NAME.ACR_SUFFIX.",
    ),
    AttributeSpec(
        "certificate_authority",
        "PEM CA that is then the only trust root for every Azure endpoint (private "
        "endpoints, stand-ins).",
    ),
    AttributeSpec(
        "blob_credential",
        "What blob-container consumers get: user-delegation-sas (default; scoped to the "
        "container, with the connector's expiration) or access-token (storage-scoped, "
        "reaches every container the identity can).",
        default=BLOB_SAS,
    ),
)

SERVICE_PRINCIPAL_METHOD = AuthMethodSpec(
    auth_method=AUTH_SERVICE_PRINCIPAL,
    name="Entra ID service principal",
    description=(
        "An app registration's client secret or certificate; the secret stays in the broker, "
        "clients get Entra access tokens, ACR refresh tokens and container SAS."
    ),
    attributes=(
        AttributeSpec(
            "tenant_id", "Tenant ID (GUID) or domain (contoso.onmicrosoft.com).", required=True
        ),
        AttributeSpec("client_id", "Application (client) ID, a GUID.", required=True),
        AttributeSpec("client_secret", "Client secret.", secret=True),
        AttributeSpec(
            "client_certificate",
            "PEM certificate and its RSA private key (instead of client_secret).",
            secret=True,
        ),
        _SUBSCRIPTION,
        *_ENDPOINTS,
    ),
    min_expiration_seconds=MIN_SAS_LIFETIME,
    max_expiration_seconds=MAX_SAS_LIFETIME,
    default_expiration_seconds=DEFAULT_SAS_LIFETIME,
)

TOKEN_METHOD = AuthMethodSpec(
    auth_method=AUTH_TOKEN,
    name="Entra access token",
    description=(
        "An access token obtained elsewhere (az account get-access-token), handed through "
        "until the connector's expires_at; it reaches what its audience allows."
    ),
    attributes=(
        AttributeSpec("token", "Entra access token.", required=True, secret=True),
        AttributeSpec("tenant_id", "Tenant ID (GUID) or domain, for the record."),
        _SUBSCRIPTION,
        *_ENDPOINTS,
    ),
    requires_expires_at=True,
)

IMPLICIT_METHOD = AuthMethodSpec(
    auth_method=AUTH_IMPLICIT,
    name="The daemon's own Azure identity",
    description=(
        "AZURE_* service principal or workload identity variables of the daemon, else "
        "DefaultAzureCredential (managed identity, az login). Disabled unless the daemon "
        "runs with BROKER_ENABLE_IMPLICIT_AUTH_METHODS=true."
    ),
    attributes=(
        AttributeSpec("tenant_id", "Tenant ID (GUID) or domain; default AZURE_TENANT_ID."),
        _SUBSCRIPTION,
        *_ENDPOINTS,
    ),
    min_expiration_seconds=MIN_SAS_LIFETIME,
    max_expiration_seconds=MAX_SAS_LIFETIME,
    default_expiration_seconds=DEFAULT_SAS_LIFETIME,
    implicit=True,
)

SPEC = ConnectorTypeSpec(
    connector_type=CONNECTOR_TYPE,
    name="Microsoft Azure",
    description=(
        "Entra ID credentials handing out short-lived access tokens, container-scoped SAS, "
        "AKS cluster tokens and ACR refresh tokens."
    ),
    resource_types=(GENERIC_RESOURCE, BLOB_RESOURCE, AKS_RESOURCE, REGISTRY_RESOURCE),
    auth_methods=(SERVICE_PRINCIPAL_METHOD, TOKEN_METHOD, IMPLICIT_METHOD),
    supports_auto_configuration=True,
)
