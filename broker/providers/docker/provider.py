"""The ``docker`` connector type: a registry username/password, verified and handed out as is.

A password cannot be down-scoped or made short-lived, so minting is just
returning the stored credential for the one registry the connector names:
long-lived, or expiring with the connector's ``expires_at`` when it has one.
Verification is the registry's own ``/v2/`` login check.
"""

from __future__ import annotations

from broker.attributes import parse_value
from broker.errors import InvalidArgument
from broker.model import ClientCredential, Connector, Value
from broker.providers.base import Provider
from broker.providers.docker.ids import DOCKER_HUB, canonical_registry
from broker.providers.docker.registry_client import verify_login
from broker.providers.docker.spec import AUTH_PASSWORD, PASSWORD_METHOD, RESOURCE_TYPE, SPEC
from broker.token_times import stored_window


class DockerProvider(Provider):
    """Docker/OCI registries (Docker Hub or private) with the ``password`` auth method."""

    spec = SPEC

    # -- validation -------------------------------------------------------
    def validate(self, connector: Connector) -> None:
        self.registry(connector)
        if ":" in _text(connector, "username"):
            # Basic auth joins user and password with ':'; a colon in the user is ambiguous.
            raise InvalidArgument("attribute 'username' must not contain ':'", field="username")

    def canonical_resource_id(self, connector: Connector, resource_type: str, raw: str) -> str:
        self.check_resource_type(resource_type)
        canonical = canonical_registry(raw, field="resource_id")
        served = self.registry(connector)
        if canonical != served:
            raise InvalidArgument(
                f"connector '{connector.name}' serves registry '{served}' only, not '{canonical}'",
                field="resource_id",
            )
        return canonical

    def default_resource_id(self, connector: Connector, resource_type: str) -> str | None:
        self.check_resource_type(resource_type)
        return self.registry(connector)

    @staticmethod
    def registry(connector: Connector) -> str:
        """The canonical registry a connector serves (Docker Hub when unset or empty)."""
        raw = connector.config.get("registry")
        if raw is None or raw == "":
            return DOCKER_HUB
        return canonical_registry(str(raw), field="registry")

    # -- upstream ---------------------------------------------------------
    async def discover(
        self, connector: Connector, resource_type: str, resource_id: str | None
    ) -> list[str]:
        if resource_id:
            registry = self.canonical_resource_id(connector, resource_type, resource_id)
        else:
            self.check_resource_type(resource_type)
            registry = self.registry(connector)
        await verify_login(
            registry,
            _text(connector, "username"),
            _text(connector, "password"),
            request_timeout=self.context.request_timeout,
            certificate_authority=_optional_text(connector, "certificate_authority"),
            insecure=_insecure(connector),
            transport=self.context.transport,
        )
        return [registry]

    async def mint(
        self, connector: Connector, resource_type: str, resource_id: str
    ) -> ClientCredential:
        registry = self.canonical_resource_id(connector, resource_type, resource_id)
        config: dict[str, Value] = {
            "username": _text(connector, "username"),
            "password": _text(connector, "password"),
            "registry": registry,
        }
        ca = _optional_text(connector, "certificate_authority")
        if ca:
            config["certificate_authority"] = ca
        if _insecure(connector):
            config["insecure"] = True
        # The stored password, handed through: it dies with the connector's expires_at
        # (or a JWT password's exp), and nobody declared when it was issued.
        issued_at, expires_at = stored_window(_text(connector, "password"), connector.expires_at)
        return ClientCredential(
            connector_type=SPEC.connector_type,
            auth_method=AUTH_PASSWORD,
            resource_type=RESOURCE_TYPE,
            resource_id=registry,
            config=config,
            secret_names=frozenset({"password"}),
            expires_at=expires_at,
            issued_at=issued_at,
        )


def _optional_text(connector: Connector, name: str) -> str | None:
    value = connector.config.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidArgument(
            f"attribute '{name}' of connector '{connector.name}' must be text", field=name
        )
    return value


def _text(connector: Connector, name: str) -> str:
    value = _optional_text(connector, name)
    if value is None:
        raise InvalidArgument(
            f"attribute '{name}' is required for connector '{connector.name}'", field=name
        )
    return value


def _insecure(connector: Connector) -> bool:
    """The ``insecure`` flag, tolerant of text from stores that keep values as strings."""
    spec = PASSWORD_METHOD.attribute("insecure")
    assert spec is not None
    return parse_value(spec, connector.config.get("insecure", False)) is True
