"""What the ``docker`` connector type declares: one resource type, one auth method."""

from __future__ import annotations

from broker.model import (
    AttributeSpec,
    AttrKind,
    AuthMethodSpec,
    ConnectorTypeSpec,
    ResourceTypeSpec,
)

CONNECTOR_TYPE = "docker"
RESOURCE_TYPE = "docker-registry"
AUTH_PASSWORD = "password"

REGISTRY_RESOURCE = ResourceTypeSpec(
    resource_type=RESOURCE_TYPE,
    name="Docker/OCI registry",
    description=(
        "One container registry reached with a username and password; the connector "
        "serves exactly the registry named by its 'registry' attribute."
    ),
    supports_instances=False,
    id_formats=(
        "host[:port] (canonical), e.g. registry.example.com:5000",
        "https://host[:port]/any/path (scheme and path dropped)",
        "docker.io, index.docker.io, registry-1.docker.io, https://index.docker.io/v1/ "
        "(Docker Hub, canonical docker.io)",
    ),
)

PASSWORD_METHOD = AuthMethodSpec(
    auth_method=AUTH_PASSWORD,
    name="Username and password",
    description=(
        "A registry account or access token used as a password. It is long-lived and "
        "handed out as is: prefer a scoped access token over an account password."
    ),
    attributes=(
        AttributeSpec("username", "Registry user name.", required=True),
        AttributeSpec("password", "Password or access token.", required=True, secret=True),
        AttributeSpec(
            "registry",
            "Registry address, host[:port]; empty or unset means Docker Hub (docker.io).",
        ),
        AttributeSpec(
            "certificate_authority",
            "PEM (or base64 PEM) CA certificate to trust instead of the system store, "
            "for registries with their own TLS.",
            kind=AttrKind.PEM,
        ),
        AttributeSpec(
            "insecure",
            "Skip TLS verification and allow plain HTTP. Only for test registries.",
            kind=AttrKind.BOOL,
            default=False,
        ),
    ),
)

SPEC = ConnectorTypeSpec(
    connector_type=CONNECTOR_TYPE,
    name="Docker registry",
    description=(
        "Credentials for a Docker/OCI registry (Docker Hub or private), verified "
        "against the registry's /v2/ API without a Docker engine."
    ),
    resource_types=(REGISTRY_RESOURCE,),
    auth_methods=(PASSWORD_METHOD,),
    supports_auto_configuration=False,
)
