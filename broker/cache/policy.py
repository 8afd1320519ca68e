"""When to renew a credential and when it may no longer be served: pure functions.

Nothing here reads a clock or does I/O: callers pass ``now`` and a random
source, so every rule is tested with plain values. The vocabulary follows
google-auth (a token is fresh, stale or invalid) and botocore's two refresh
windows (advisory: renew in the background, keep serving; mandatory: callers
wait for the renewal).

Timeline of one credential (``issued_at`` -> ``expires_at``)::

    issued_at        renew point (jittered)       margin starts     expires_at
    |------ FRESH ------|--------- STALE ---------|---- INVALID ----|
                         serve + renew in the      never served:
                         background (advisory)     callers wait (mandatory)

The *servable lifetime* is ``issued_at`` -> margin start. The renew point lies
where 1/3 +/- 10 % of the servable lifetime remains before the margin. For
credentials with small margins (Kubernetes, most short tokens) that is about
1/3 of the whole lifetime; for AWS keys, whose 15-minute margin is a quarter
of a 1-hour session, measuring from the margin keeps every jittered point
ahead of it, so a failed renewal still has time to be retried before the
cached credential must stop being served.

**The margin rule** (README "Credentials, renewal and watching" states it too)::

    margin = kind margin                                   lifetime unknown
    margin = min(kind margin, 3/4 x declared lifetime)     lifetime declared

The *declared lifetime* is ``expires_at - issued_at`` as the provider states it
for the credential it returns: the issue time the upstream declared (STS
``Expiration`` minus the requested ``DurationSeconds``, or the request if later;
the request a token endpoint answered with a fresh token; an EKS token's
signature; a JWT's ``iat``). It is a fact about the credential, never the
moment this daemon first saw it, so it is the same after an update, a restart
or an eviction. A credential whose issue time is unknown (``issued_at`` None: a
stored token handed through, anything that dies with the connector's own
``expires_at``, a token the upstream caches such as the GCE metadata server's)
gets the whole kind margin. The 3/4 cap bites only where the
kind margin would leave less than a quarter of the lifetime servable (AWS
sessions under 20 min, Google tokens under 5 min 20 s, Kubernetes tokens under
80 s, registry passwords under 6 min 40 s); everything longer keeps the full
documented margin.
"""

from __future__ import annotations

import enum
import random
from datetime import datetime, timedelta

from broker.model import ClientCredential

# -- safety margins: how long before its real expiry a credential stops being served --

#: AWS SDKs refresh credentials that have less than 15 minutes left (botocore's
#: advisory window), so keys handed out with less would be refreshed straight away.
AWS_MARGIN = timedelta(minutes=15)
#: google-auth treats tokens with less than 3 min 45 s left as expired
#: (``REFRESH_THRESHOLD``); 4 minutes keeps clients clear of that.
GOOGLE_MARGIN = timedelta(minutes=4)
#: kubectl trusts ``expirationTimestamp`` as is and applies no margin of its own;
#: 60 s covers clock skew and one in-flight request.
KUBERNETES_MARGIN = timedelta(seconds=60)
#: docker and containerd authenticate at the start of a pull or push and again
#: when a long transfer refreshes its registry token; 5 minutes covers a slow
#: layer upload (ECR passwords live 12 h, GCR / Artifact Registry ones 1 h).
DOCKER_MARGIN = timedelta(minutes=5)
#: azure-core's bearer-token policy (every Azure SDK) fetches a new token once less
#: than 5 minutes are left, so tokens handed out with less would be refreshed at once.
AZURE_MARGIN = timedelta(minutes=5)
#: Any other (plug-in) credential type: enough for clock skew and one request.
DEFAULT_MARGIN = timedelta(seconds=60)

#: Margins by the *client* credential's connector type (an AWS connector's EKS
#: token is a ``kubernetes`` credential and gets the kubectl margin).
KIND_MARGINS: dict[str, timedelta] = {
    "aws": AWS_MARGIN,
    "gcp": GOOGLE_MARGIN,
    "kubernetes": KUBERNETES_MARGIN,
    "docker": DOCKER_MARGIN,
    "azure": AZURE_MARGIN,
}

#: The margin never exceeds this fraction of the credential's declared lifetime, so
#: at least a quarter of any credential's life is servable. Without the cap a
#: credential living no longer than its kind's margin (a 15-minute STS session,
#: the shortest STS allows, against the 15-minute AWS margin) could never be
#: served. It changes nothing for lifetimes of 4/3 of the kind margin or more.
MARGIN_LIFETIME_CAP = 0.75

#: Resource types whose client credentials are of another kind than their
#: connector's: an aws or gcp connector hands kubectl and docker credentials.
RESOURCE_TYPE_KINDS: dict[str, str] = {
    "kubernetes-cluster": "kubernetes",
    "docker-registry": "docker",
}

# -- renewal point --

#: Renew when this fraction of the servable lifetime remains: early enough for
#: several retries before the margin, late enough not to mint three times as
#: often as needed.
RENEW_REMAINING_FRACTION = 1 / 3
#: +/- this fraction of the servable lifetime, drawn uniformly, so thousands of
#: credentials minted in the same second (a restart, a deploy) do not all
#: renew in the same second either.
RENEW_JITTER_FRACTION = 0.10

# -- retries after a failed mint --

#: First retry after about this long: upstream blips usually clear in a second.
RETRY_BASE_SECONDS = 1.0
#: Never wait longer than this between retries, so recovery is noticed within a minute.
RETRY_CAP_SECONDS = 60.0
#: ...nor longer than this fraction of the key's credential lifetime: a key whose
#: tokens live 20 s should not wait a minute to recover, and retrying every
#: quarter lifetime costs the provider no more than ordinary renewals do.
RETRY_CAP_LIFETIME_FRACTION = 0.25
#: Exponent bound: 2**RETRY_MAX_EXPONENT * base is far past the cap already.
_RETRY_MAX_EXPONENT = 32
#: Callers get a permanent error (rejected credentials, an expired connector)
#: from memory for this long instead of re-asking the provider: bad
#: credentials must not hammer it, and the fix (a connector update) changes the
#: cache key anyway.
PERMANENT_ERROR_HOLD_SECONDS = 30.0


class SpreadRandom(random.Random):
    """The cache's default random source: :meth:`uniform` walks its range evenly.

    Independent uniform draws leave Poisson clumps: 10,000 keys minted in the
    same second renew with about twice the mean rate in their busiest second
    (``bench/bench_renewal_spread.py``). Successive draws here follow an
    additive walk by the golden ratio from a random start (a Weyl sequence), so
    any run of draws covers the range evenly and the busiest second stays
    near the mean. Each draw still lies anywhere in the range; every other
    method is the ordinary seeded PRNG.
    """

    #: The golden-ratio conjugate: the additive step that leaves the most even gaps.
    _STEP = (5**0.5 - 1) / 2

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self._walk = self.random()

    def uniform(self, a: float, b: float) -> float:
        self._walk = (self._walk + self._STEP) % 1.0
        return a + (b - a) * self._walk


class TokenState(enum.Enum):
    """What a cached credential may be used for right now."""

    FRESH = "fresh"  # serve it
    STALE = "stale"  # serve it, and renew in the background (advisory)
    INVALID = "invalid"  # never serve it: callers wait for a new one (mandatory)


def margin_of_kind(kind: str) -> timedelta:
    """The documented margin for client credentials of connector type ``kind``."""
    return KIND_MARGINS.get(kind, DEFAULT_MARGIN)


def kind_margin(credential: ClientCredential) -> timedelta:
    """The margin the consumers of this kind of credential need."""
    return margin_of_kind(credential.connector_type)


def client_kind(connector_type: str, resource_type: str | None = None) -> str:
    """The kind of client credential a connector type issues for a resource type."""
    if resource_type is None:
        return connector_type
    return RESOURCE_TYPE_KINDS.get(resource_type, connector_type)


def lifetime(credential: ClientCredential) -> timedelta | None:
    """The declared lifetime, issue to expiry (None: unknown, unlimited or nonsensical).

    An issue time at or after the expiry (clock skew between the upstream and
    this host) says nothing usable about the lifetime: unknown.
    """
    if credential.expires_at is None or credential.issued_at is None:
        return None
    life = credential.expires_at - credential.issued_at
    return life if life > timedelta(0) else None


def margin_for(kind_margin: timedelta, declared: timedelta | None) -> timedelta:
    """The margin rule (module docstring): the kind's, capped at 3/4 of a declared lifetime."""
    if declared is None:
        return kind_margin
    return min(kind_margin, declared * MARGIN_LIFETIME_CAP)


def margin(credential: ClientCredential) -> timedelta:
    """How long before ``expires_at`` the credential stops being served."""
    return margin_for(kind_margin(credential), lifetime(credential))


def invalid_at(credential: ClientCredential) -> datetime | None:
    """When the credential enters its margin (None: never, it is long-lived)."""
    if credential.expires_at is None:
        return None
    return credential.expires_at - margin(credential)


def renew_at(
    credential: ClientCredential, rng: random.Random, since: datetime | None = None
) -> datetime | None:
    """A jittered point at which to start renewing (None: long-lived, never).

    Always at or before :func:`invalid_at`. The servable lifetime runs from
    ``issued_at``, or, when the upstream declared none, from ``since`` (when
    the cache first got this credential: it only places the renew point, never
    the margin). With neither, the point lies about one margin ahead of the margin.
    """
    limit = invalid_at(credential)
    if limit is None:
        return None
    fraction = rng.uniform(
        RENEW_REMAINING_FRACTION - RENEW_JITTER_FRACTION,
        RENEW_REMAINING_FRACTION + RENEW_JITTER_FRACTION,
    )
    start = credential.issued_at or since
    if start is None:
        return limit - margin(credential) * (fraction / RENEW_REMAINING_FRACTION)
    servable = limit - start
    if servable <= timedelta(0):
        return limit
    return limit - servable * fraction


def state(
    credential: ClientCredential, now: datetime, stale_at: datetime | None = None
) -> TokenState:
    """Fresh, stale or invalid at ``now``.

    ``stale_at`` is the credential's jittered :func:`renew_at` point if the
    caller drew one; without it the un-jittered point (1/3 remaining) is used.
    """
    limit = invalid_at(credential)
    if limit is None:
        return TokenState.FRESH
    if now >= limit:
        return TokenState.INVALID
    if stale_at is None:
        stale_at = _centre_renew_at(credential, limit)
    return TokenState.STALE if now >= stale_at else TokenState.FRESH


def _centre_renew_at(credential: ClientCredential, limit: datetime) -> datetime:
    if credential.issued_at is None:
        return limit - margin(credential)
    servable = max(limit - credential.issued_at, timedelta(0))
    return limit - servable * RENEW_REMAINING_FRACTION


def retry_cap(lifetime: timedelta | None) -> float:
    """The longest wait between retries for credentials living ``lifetime`` (None: unknown)."""
    if lifetime is None:
        return RETRY_CAP_SECONDS
    scaled = lifetime.total_seconds() * RETRY_CAP_LIFETIME_FRACTION
    return min(RETRY_CAP_SECONDS, max(RETRY_BASE_SECONDS, scaled))


def backoff(
    attempt: int,
    rng: random.Random,
    *,
    until: float | None = None,
    cap: float = RETRY_CAP_SECONDS,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    Exponential growth from :data:`RETRY_BASE_SECONDS` up to
    ``cap`` (see :func:`retry_cap`), with "equal jitter": a uniform draw from the
    upper half of the step. Unlike full jitter it never retries almost at
    once (no hammering a failing upstream), yet still spreads many keys' retries.
    ``until`` (seconds until the cached credential enters its margin, if one
    is still served) caps the wait, so one last attempt happens while the old
    credential can still be served.
    """
    exponent = min(max(attempt, 1) - 1, _RETRY_MAX_EXPONENT)
    ceiling = min(cap, RETRY_BASE_SECONDS * 2.0**exponent)
    delay = rng.uniform(ceiling / 2, ceiling)
    if until is not None:
        delay = max(0.0, min(delay, until))
    return delay
