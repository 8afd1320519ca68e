"""What an attestor is: something that turns a container id into selectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from broker.identity.cgroups import Container


class AttestorUnavailable(Exception):
    """The attestor's API could not answer (unreachable, timed out, refused us)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Finding:
    """What one attestor says about one container."""

    selectors: frozenset[str] = frozenset()
    #: Why there are none, when the attestor does not know the container.
    note: str | None = None


class Attestor(Protocol):
    #: "docker", "kubernetes": names it in notes and logs.
    name: str

    async def start(self) -> None:
        """Load client libraries and configuration; errors here stop the daemon's start."""

    async def attest(self, container: Container) -> Finding:
        """Selectors of the container; AttestorUnavailable when the API cannot answer."""
        ...

    async def aclose(self) -> None: ...
