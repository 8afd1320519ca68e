"""The Docker attestor: inspects the caller's container through the Engine API (aiodocker).

Selectors, from ``GET /containers/ID/json``:

- ``docker:label:KEY:VALUE`` for each label (``Config.Labels``, image labels included);
- ``docker:image_id:sha256:…`` (``Image``: the image the container runs);
- ``docker:image:NAME`` (``Config.Image``: the name it was created from, as given);
- ``docker:env:NAME`` for each variable of ``Config.Env``: names only, a value is
  never read into a selector, a log line or an audit line.

A 404 means the Engine does not know the container (another runtime's, or one
already removed): a note, no selectors. A container whose cgroup names another
runtime (``cri-containerd-…``, ``crio-…``, ``libpod-…``) is not asked about.
Anything else that keeps the Engine from answering (no socket, refused, a
timeout, a 5xx) is :class:`~broker.identity.attestors.base.AttestorUnavailable`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from broker.identity.attestors.base import AttestorUnavailable, Finding
from broker.identity.attestors.settings import DockerSettings
from broker.identity.cgroups import Container


def selectors_of(inspected: dict[str, Any]) -> frozenset[str]:
    """The selectors of one ``docker inspect`` document."""
    config = inspected.get("Config") or {}
    out: set[str] = set()
    for key, value in (config.get("Labels") or {}).items():
        out.add(f"docker:label:{key}:{value}")
    image_id = inspected.get("Image")
    if isinstance(image_id, str) and image_id:
        out.add(f"docker:image_id:{image_id}")
    image = config.get("Image")
    if isinstance(image, str) and image:
        out.add(f"docker:image:{image}")
    for entry in config.get("Env") or ():
        name = str(entry).split("=", 1)[0]
        if name:
            out.add(f"docker:env:{name}")
    return frozenset(out)


#: Runtimes whose containers the Engine cannot know: not asked, no note.
_OTHER_RUNTIMES = frozenset({"containerd", "cri-o", "podman"})
#: aiodocker's status for "could not connect" (no HTTP answer at all).
_NO_CONNECTION = 900


def _reason(message: object) -> str:
    """The OS's words out of aiodocker's "Cannot connect … [Cannot connect to … (reason)]"."""
    text = str(message)
    start = text.rfind("[")
    return (text[start + 1 :].rstrip("]") if start >= 0 else text)[:300]


class DockerAttestor:
    name = "docker"

    def __init__(self, settings: DockerSettings) -> None:
        self.settings = settings
        self._docker: Any = None

    async def start(self) -> None:
        import aiodocker  # only a daemon with [attestors.docker] pays for the import

        # The API version is the Engine's own (asked once): old and new Engines refuse
        # versions outside their range.
        self._docker = aiodocker.Docker(url=self.settings.host)

    async def aclose(self) -> None:
        if self._docker is not None:
            await self._docker.close()

    async def attest(self, container: Container) -> Finding:
        from aiodocker.exceptions import DockerError

        assert self._docker is not None, "start() first"
        if container.runtime in _OTHER_RUNTIMES:
            return Finding()  # its cgroup says CRI-containerd / CRI-O / podman made it
        host = self.settings.host
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                inspected = await self._docker.containers.container(container.id).show()
        except DockerError as exc:
            if exc.status == 404:
                return _unknown(host, container)
            if exc.status == _NO_CONNECTION:
                raise AttestorUnavailable(
                    f"the Engine API at {host} is unreachable: {_reason(exc.message)}"
                ) from None
            raise AttestorUnavailable(
                f"the Engine API at {host} answered {exc.status}: {str(exc.message)[:200]}"
            ) from None
        except TimeoutError:
            raise AttestorUnavailable(
                f"the Engine API at {host} did not answer within "
                f"{self.settings.timeout_seconds:g} s"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise AttestorUnavailable(f"the Engine API at {host} is unreachable: {exc}") from None
        if not isinstance(inspected, dict) or inspected.get("Id") != container.id:
            return _unknown(host, container)
        return Finding(selectors_of(inspected))


def _unknown(host: str, container: Container) -> Finding:
    return Finding(note=f"the Engine API at {host} knows no container {container.short}")
