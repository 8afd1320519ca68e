"""An independent check that no credential reaches a caller inside its safety margin.

The service calls :meth:`ServedMargins.observe` with every credential at the
moment it returns it to a caller (each get, each watch event). The verdict is
computed here from the credential alone, that is from what its provider
declared (``expires_at``, and ``issued_at`` where the upstream said when it
issued it), and from the documented margins (README, "Credentials, renewal
and watching"). The margins and the rule are written out again on purpose
instead of being imported from :mod:`broker.cache.policy`: the cache decides
what to serve and must not also be the one that vouches for it. Tests pin
both copies to the README's table.

The count is exported as ``broker_credentials_served_inside_margin_total``
and must stay 0.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from broker.clock import Clock
from broker.model import ClientCredential

log = structlog.get_logger(__name__)

#: The documented margins by client credential kind (README and SPEC section 5).
DOCUMENTED_MARGINS: dict[str, timedelta] = {
    "aws": timedelta(minutes=15),
    "gcp": timedelta(minutes=4),
    "kubernetes": timedelta(seconds=60),
    "docker": timedelta(minutes=5),
    "azure": timedelta(minutes=5),
}
#: Any other kind of credential.
DOCUMENTED_OTHER_MARGIN = timedelta(seconds=60)
#: A margin is never more than this share of a declared lifetime.
DOCUMENTED_LIFETIME_CAP = 3 / 4
#: Credentials whose margin start is remembered (cleared wholesale when full).
MARGIN_MEMO_SIZE = 8192


def documented_margin(credential: ClientCredential) -> timedelta:
    """The margin the README promises for this credential."""
    margin = DOCUMENTED_MARGINS.get(credential.connector_type, DOCUMENTED_OTHER_MARGIN)
    expires, issued = credential.expires_at, credential.issued_at
    if expires is not None and issued is not None and expires > issued:
        margin = min(margin, (expires - issued) * DOCUMENTED_LIFETIME_CAP)
    return margin


def outside_margin(credential: ClientCredential, now: datetime) -> bool:
    """Whether a caller may be handed the credential at ``now``."""
    if credential.expires_at is None:
        return True
    return credential.expires_at - now > documented_margin(credential)


class ServedMargins:
    """Counts credentials handed to callers inside their documented margin."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.served = 0
        self.inside_margin = 0
        #: id(credential) -> (credential, where its documented margin starts): a cache hit
        #: hands out the same credential object again, so its margin is worked out once.
        self._starts: dict[int, tuple[ClientCredential, datetime]] = {}

    def observe(self, credential: ClientCredential) -> None:
        """Check one credential as it is returned; log and count it if inside its margin."""
        self.served += 1
        expires = credential.expires_at
        if expires is None:
            return
        known = self._starts.get(id(credential))
        if known is None or known[0] is not credential:
            if len(self._starts) >= MARGIN_MEMO_SIZE:
                self._starts.clear()
            known = self._starts[id(credential)] = (
                credential,
                expires - documented_margin(credential),
            )
        now = self._clock.now()
        if now < known[1]:  # outside_margin(credential, now), worked out ahead
            return
        self.inside_margin += 1
        assert credential.expires_at is not None
        log.error(
            "credential_served_inside_margin",
            connector_type=credential.connector_type,
            resource_type=credential.resource_type,
            resource_id=credential.resource_id,
            expires_at=credential.expires_at.isoformat(),
            left_seconds=round((credential.expires_at - now).total_seconds(), 3),
            margin_seconds=documented_margin(credential).total_seconds(),
        )

    def stats(self) -> dict[str, int]:
        """For the metrics endpoint (``broker_credentials_served_inside_margin_total``)."""
        return {"served_inside_margin": self.inside_margin}
