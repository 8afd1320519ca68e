"""Finds connector types: the built-in ones and plugins from the entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points

import structlog

from broker.errors import NotFound
from broker.providers.base import Provider, ProviderContext

#: Third-party connector types register a Provider subclass under this group.
ENTRY_POINT_GROUP = "broker.connector_types"

#: Built-in connector types, importable even when the package is not installed.
BUILTIN: dict[str, str] = {
    "docker": "broker.providers.docker:DockerProvider",
    "kubernetes": "broker.providers.kubernetes:KubernetesProvider",
    "aws": "broker.providers.aws:AwsProvider",
    "gcp": "broker.providers.gcp:GcpProvider",
    "azure": "broker.providers.azure:AzureProvider",
}

log = structlog.get_logger(__name__)


def _load(target: str) -> type[Provider]:
    module_name, _, attr = target.partition(":")
    module = __import__(module_name, fromlist=[attr])
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise TypeError(f"{target} is not a broker Provider")
    return cls


class ProviderRegistry:
    """Connector type name -> provider instance."""

    def __init__(self, providers: dict[str, Provider]) -> None:
        self._providers = dict(sorted(providers.items()))

    @classmethod
    def discover(cls, context: ProviderContext, *, plugins: bool = True) -> ProviderRegistry:
        """Load built-ins that are present and every plugin of the entry-point group."""
        targets: dict[str, str] = {}
        for name, target in BUILTIN.items():
            targets[name] = target
        if plugins:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                targets.setdefault(ep.name, ep.value)
        providers: dict[str, Provider] = {}
        for name, target in targets.items():
            try:
                provider = _load(target)(context)
            except ModuleNotFoundError as exc:
                if target == BUILTIN.get(name) and exc.name and exc.name.startswith("broker."):
                    continue  # a built-in not written yet in this build
                log.error("connector_type_load_failed", connector_type=name, error=str(exc))
                continue
            except Exception as exc:  # a broken plugin must not stop the daemon
                log.error("connector_type_load_failed", connector_type=name, error=str(exc))
                continue
            providers[provider.spec.connector_type] = provider
        return cls(providers)

    def get(self, connector_type: str) -> Provider:
        provider = self._providers.get(connector_type)
        if provider is None:
            known = ", ".join(self._providers) or "none"
            raise NotFound(
                f"unknown connector type '{connector_type}' (known: {known})",
                field="connector_type",
            )
        return provider

    def all(self) -> list[Provider]:
        return list(self._providers.values())

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
