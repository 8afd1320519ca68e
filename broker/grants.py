"""SDK endpoint grants as the application sees them: the value and the interface.

The local endpoints (``broker.local.sdk``) implement :class:`SdkGrants`; the
gRPC front end only talks to this interface, so front ends never import each
other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from broker.identity.principal import Principal


@dataclass(frozen=True)
class Grant:
    """One SDK endpoint grant: who made it, for what, until when, and for which uid."""

    id: str
    kind: Literal["aws", "gcp"]
    connector: str
    resource_type: str | None
    resource_id: str | None
    owner: Principal
    created_at: datetime
    expires_at: datetime
    #: gcp: the only local uid whose sockets may use the endpoint (None: any).
    bound_uid: int | None = None
    token_hash: bytes = b""
    #: The process the grant ends with (``broker exec``'s, from the kernel), if any.
    bound_pid: int | None = None


class SdkGrants(Protocol):
    """What the gRPC front end needs from the SDK endpoints."""

    def list(self, principal: Principal) -> list[Grant]: ...

    async def create(
        self,
        kind: str,
        connector: str,
        resource_type: str | None,
        resource_id: str | None,
        *,
        principal: Principal,
        ttl_seconds: int | None = None,
        bind_uid: int | None = None,
        bound_to_caller: bool = False,
    ) -> tuple[Grant, dict[str, str]]: ...

    async def revoke(self, grant_id: str, principal: Principal) -> None: ...
