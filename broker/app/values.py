"""What front ends and the application exchange: requests, answers, and the cache seam."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from broker.cache.cache import CacheKey
from broker.model import ClientCredential, Connector, TypeResources, Value
from broker.streams.hub import WatchEvent

Mint = Callable[[], Awaitable[ClientCredential]]


class CredentialCache(Protocol):
    """What the service needs from the renewal engine."""

    async def get(self, key: CacheKey, mint: Mint) -> ClientCredential: ...

    def watch(self, key: CacheKey, mint: Mint) -> AsyncIterator[WatchEvent]: ...

    async def rotate(
        self, key: CacheKey, mint: Mint
    ) -> tuple[ClientCredential, ClientCredential | None]: ...

    def restore(self, key: CacheKey, mint: Mint, credential: ClientCredential) -> bool: ...

    def invalidate_connector(
        self,
        connector_id: str,
        event: Literal["updated", "deleted"],
        *,
        revision: int | None = None,
    ) -> None: ...

    def stats(self) -> Mapping[str, int]: ...


@dataclass(frozen=True)
class ConnectorUpdate:
    """A partial change: None leaves a field as it is; ``clear_*`` unsets it."""

    auth_method: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    config: Mapping[str, Value] = field(default_factory=dict)
    remove_attributes: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    remove_labels: Sequence[str] = ()
    expiration_seconds: int | None = None
    expires_at: datetime | None = None
    description: str | None = None
    clear_resource_type: bool = False
    clear_resource_id: bool = False
    clear_expiration_seconds: bool = False
    clear_expires_at: bool = False


@dataclass(frozen=True)
class Issued:
    """A client credential together with the connector it came from."""

    connector: Connector
    credential: ClientCredential


@dataclass(frozen=True)
class IssuedEvent:
    """One event of a watch, with the connector revision the credential came from."""

    kind: Literal["issued", "renewed", "updated", "deleted", "error"]
    issued: Issued | None = None
    error: str | None = None


@dataclass(frozen=True)
class DaemonStatus:
    version: str
    uptime_seconds: float
    connectors: int
    cached_credentials: int
    subscribers: int
    connector_types: list[str]
    #: Why the daemon may be behind (e.g. its change feed is reconnecting); empty: all well.
    degraded: list[str] = field(default_factory=list)
    #: Where connectors are kept, safe to show (never a password).
    store: str = ""


@dataclass(frozen=True)
class ListedResources:
    connector: Connector
    result: TypeResources
