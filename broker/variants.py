"""Credential variants: what a front end may ask for besides a plain credential.

Shared vocabulary of the front ends and the providers (plain strings, no I/O),
so the local endpoints never import a provider.

* ``sdk-session`` (aws): STS session credentials for the container endpoint,
  minted from long-lived keys rather than handing those out.

The gcp variants: the GCE metadata endpoint (:mod:`broker.local.gce`) asks for them through
``BrokerService.get_credentials(variant=...)``; each is its own cache entry,
renewed on its own. A variant is a string (the cache key's ``variant``):

* ``scopes:S1 S2 ...`` - an access token for exactly these OAuth2 scopes
  (sorted, without duplicates). The cloud-platform scope alone is the plain
  credential and shares its entry.
* ``id-token:full:AUDIENCE`` / ``id-token:standard:AUDIENCE`` - an OpenID
  Connect ID token for AUDIENCE; ``full`` asks for the email claims (GCE's
  ``format=full``).

Scopes and audiences come from local clients, so both are bounded and
checked here, where the strings are built and read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from broker.errors import InvalidArgument

#: The scope of a plain gcp access token.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: aws: session credentials for SDK endpoints, never the long-lived keys themselves.
VARIANT_SDK_SESSION = "sdk-session"

SCOPES_PREFIX = "scopes:"
ID_TOKEN_PREFIX = "id-token:"
DEFAULT_SCOPES = (CLOUD_PLATFORM_SCOPE,)
#: Bounds on what a client may ask for (a cache entry per distinct request).
MAX_SCOPES = 32
MAX_SCOPE_LENGTH = 256
MAX_AUDIENCE_LENGTH = 1024
#: OAuth2 scope tokens (RFC 6749 3.3 allows more; Google's are URLs or short names).
_SCOPE = re.compile(r"^[A-Za-z0-9._~:/?=&%+-]+$")
#: Printable ASCII without spaces: a URL, a client ID or any other audience string.
_AUDIENCE = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True)
class Variant:
    """A parsed variant: an access token for ``scopes``, or an ID token for ``audience``."""

    scopes: tuple[str, ...] = DEFAULT_SCOPES
    audience: str | None = None
    include_email: bool = False

    @property
    def is_id_token(self) -> bool:
        return self.audience is not None


def normal_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Checked, sorted and without duplicates; InvalidArgument naming ``scopes``."""
    unique = sorted({s.strip() for s in scopes if s.strip()})
    if not unique:
        raise InvalidArgument("scopes must name at least one OAuth2 scope", field="scopes")
    if len(unique) > MAX_SCOPES:
        raise InvalidArgument(f"at most {MAX_SCOPES} scopes may be asked for", field="scopes")
    for scope in unique:
        if len(scope) > MAX_SCOPE_LENGTH or not _SCOPE.match(scope):
            shown = scope[:60] + ("..." if len(scope) > 60 else "")
            raise InvalidArgument(f"'{shown}' is not an OAuth2 scope", field="scopes")
    return tuple(unique)


def scopes_variant(scopes: Iterable[str]) -> str:
    """The variant for an access token of ``scopes`` ("" for the plain credential's)."""
    normal = normal_scopes(scopes)
    return "" if normal == DEFAULT_SCOPES else SCOPES_PREFIX + " ".join(normal)


def check_audience(audience: str) -> str:
    if not audience:
        raise InvalidArgument("a non-empty audience is required", field="audience")
    if len(audience) > MAX_AUDIENCE_LENGTH or not _AUDIENCE.match(audience):
        raise InvalidArgument(
            f"the audience must be at most {MAX_AUDIENCE_LENGTH} printable characters "
            "without spaces",
            field="audience",
        )
    return audience


def id_token_variant(audience: str, *, include_email: bool) -> str:
    """The variant for an ID token of ``audience`` (with the email claims if asked)."""
    kind = "full" if include_email else "standard"
    return f"{ID_TOKEN_PREFIX}{kind}:{check_audience(audience)}"


def parse(variant: str) -> Variant:
    """Read a variant string; InvalidArgument for anything this module did not write."""
    if variant.startswith(SCOPES_PREFIX):
        return Variant(scopes=normal_scopes(variant[len(SCOPES_PREFIX) :].split(" ")))
    if variant.startswith(ID_TOKEN_PREFIX):
        kind, _, audience = variant[len(ID_TOKEN_PREFIX) :].partition(":")
        if kind in ("full", "standard"):
            return Variant(audience=check_audience(audience), include_email=kind == "full")
    shown = variant[:60] + ("..." if len(variant) > 60 else "")
    raise InvalidArgument(
        f"gcp connectors issue no '{shown}' credentials (variants: "
        f"'{SCOPES_PREFIX}SCOPE ...', '{ID_TOKEN_PREFIX}full|standard:AUDIENCE')",
        field="variant",
    )
