"""Registry addresses: every accepted spelling of a registry turned into one ``host[:port]``.

Users paste registries in many forms (``https://index.docker.io/v1/`` from a
docker config, ``localhost:5000/app:1.0`` from an image reference, upper-case
hosts). The cache and the docker credential helper key credentials by the
canonical form, so two spellings of one registry must meet here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from broker import hosts
from broker.errors import InvalidArgument
from broker.providers.values import clip

#: The canonical ID of Docker Hub, whatever alias names it.
DOCKER_HUB = "docker.io"
#: Where Docker Hub's registry API actually answers.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
#: Host names that mean Docker Hub when no port is given.
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

#: One DNS label as the Docker reference grammar allows it (no underscores).
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_HOST = 253

#: Builds the one error message format from a reason (see canonical_registry).
_Bad = Callable[[str], InvalidArgument]


def canonical_registry(raw: str, *, field: str = "resource_id") -> str:
    """Return ``host[:port]`` for a registry address, or raise InvalidArgument naming ``field``.

    Accepted: ``host``, ``host:port``, ``[v6]:port``, any of those with an
    ``http(s)://`` scheme and/or a path (both dropped). Host names are
    lower-cased; Docker Hub aliases become ``docker.io``. Like ``docker pull``,
    a schemeless ``name/...`` whose first part has no ``.`` or ``:`` and is not
    ``localhost`` is a Docker Hub repository. User info (``user:pass@``) is
    refused without echoing it, since it may hold a password.
    """
    text = raw.strip()

    def bad(reason: str, echo: bool = True) -> InvalidArgument:
        shown = f" '{clip(raw)}'" if echo else ""
        return InvalidArgument(
            f"{field}{shown} is not a registry address ({reason}); "
            "expected host[:port], e.g. registry.example.com:5000 or docker.io",
            field=field,
        )

    if not text:
        raise bad("it is empty", echo=False)
    if any(ch.isspace() for ch in text):
        raise bad("it contains whitespace")
    scheme: str | None = None
    rest = text
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme.lower() not in ("http", "https"):
            raise bad(f"scheme '{clip(scheme)}' is not http or https")
    hostport, slash, _path = rest.partition("/")
    if "@" in hostport:
        raise bad("it must not contain a user name or password", echo=False)
    if not hostport:
        raise bad("it has no host")
    if (
        scheme is None
        and slash
        and "." not in hostport
        and ":" not in hostport
        and hostport.lower() != "localhost"
    ):
        return DOCKER_HUB
    host, port = _split_host_port(hostport, bad)
    if port is None and host in _HUB_ALIASES:
        return DOCKER_HUB
    return host if port is None else f"{host}:{port}"


def _split_host_port(hostport: str, bad: _Bad) -> tuple[str, int | None]:
    port_text: str | None = None
    if hostport.startswith("["):
        inner, closed, after = hostport[1:].partition("]")
        if not closed:
            raise bad("unclosed '[' in an IPv6 address")
        host = f"[{_ipv6(inner, bad)}]"
        if after:
            if not after.startswith(":"):
                raise bad("unexpected text after the IPv6 address")
            port_text = after[1:]
    elif hostport.count(":") > 1:
        host = f"[{_ipv6(hostport, bad)}]"
    else:
        name, colon, after = hostport.partition(":")
        host = _hostname(name.lower(), bad)
        if colon:
            port_text = after
    if port_text is None:
        return host, None
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise bad(f"port '{clip(port_text)}' is not a number from 1 to 65535")
    return host, int(port_text)


def _ipv6(text: str, bad: _Bad) -> str:
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise bad(f"'{clip(text)}' is not an IPv6 address") from None


def _hostname(name: str, bad: _Bad) -> str:
    if not name:
        raise bad("it has no host")
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        pass
    if len(name) > _MAX_HOST or not all(_LABEL.match(label) for label in name.split(".")):
        raise bad(f"'{clip(name)}' is not a valid host name")
    return name


def api_host(registry: str) -> str:
    """The ``host[:port]`` the registry API answers on (Docker Hub's differs from its ID)."""
    return DOCKER_HUB_API_HOST if registry == DOCKER_HUB else registry


def is_loopback(registry: str) -> bool:
    """Whether a canonical registry is on this machine (``localhost``, 127.0.0.0/8, ``[::1]``)."""
    if registry.startswith("["):
        host = registry[1 : registry.index("]")]
    else:
        host = registry.partition(":")[0]
    return hosts.is_loopback(host)
