"""What the SDK endpoints accept: grant lifetimes and uids, and request shapes.

A request that went through a proxy, came from a web page or names another
host than the listener's own loopback address is refused before anything
else (:func:`refusal`), as the cloud metadata servers do.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from broker.errors import InvalidArgument

#: How long a grant lives unless its creator asks otherwise.
DEFAULT_GRANT_TTL_SECONDS = 12 * 3600
MIN_GRANT_TTL_SECONDS = 60
MAX_GRANT_TTL_SECONDS = 7 * 24 * 3600
#: ``bind_uid`` value meaning "any local uid" (admin only).
ANY_UID = -1
MAX_UID = 2**32 - 2
#: Headers a proxy adds: the endpoints serve local clients directly, never through one.
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded")


def aws_location(config: Mapping[str, object]) -> dict[str, str]:
    """Where the connector's AWS is: SDKs and the aws CLI read these, so `aws s3 ls` after
    `eval "$(broker env aws ...)"` goes to the connector's endpoint and region, not AWS's."""
    env: dict[str, str] = {}
    if config.get("endpoint_url"):
        env["AWS_ENDPOINT_URL"] = str(config["endpoint_url"])
    if config.get("region"):
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = str(config["region"])
    return env


def validate_ttl(ttl_seconds: int | None) -> int:
    """The grant's lifetime in seconds: the default, or a value within the bounds."""
    if ttl_seconds is None:
        return DEFAULT_GRANT_TTL_SECONDS
    if not MIN_GRANT_TTL_SECONDS <= ttl_seconds <= MAX_GRANT_TTL_SECONDS:
        raise InvalidArgument(
            f"ttl_seconds must be between {MIN_GRANT_TTL_SECONDS} (1 minute) and "
            f"{MAX_GRANT_TTL_SECONDS} (7 days), got {ttl_seconds}",
            field="ttl_seconds",
        )
    return ttl_seconds


def own_hosts(request: web.Request) -> list[str]:
    """The ``Host`` values naming this listener: its loopback address and port."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport else None
    if not sockname:
        return []
    host, port = str(sockname[0]), int(sockname[1])
    literal = f"[{host}]" if ":" in host else host
    return [f"{literal}:{port}", f"localhost:{port}"]


def refusal(request: web.Request) -> str | None:
    """Why a request must not be served (proxied, from a web page, or for another host)."""
    for name in FORWARDING_HEADERS:
        if name in request.headers:
            return f"requests carrying a {name} header are refused: no proxies"
    if "Origin" in request.headers:
        return "requests carrying an Origin header (from a web page) are refused"
    own = own_hosts(request)
    hosts = request.headers.getall("Host", [])
    if len(hosts) != 1 or hosts[0].strip().lower() not in own:
        expected = own[0] if own else "this listener's address"
        return f"the Host header must be this listener's own address {expected}"
    return None
