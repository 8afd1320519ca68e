"""One mint attempt under the cache's backstop timeout; its failure as callers and the log see it.

Providers time out each upstream call themselves; the backstop only keeps a hung
mint from wedging its key and every waiter. Whatever goes wrong comes back as
the :class:`BrokerError` callers and watchers are shown: the provider's own, a
timeout as Unavailable, and a bug as Unavailable naming a reference whose
details only the log holds. Cancellation is not a failure: it propagates.
"""

from __future__ import annotations

import uuid

import anyio
import structlog

from broker.cache.entry import CacheKey, Entry, Mint
from broker.errors import BrokerError, Unavailable
from broker.model import ClientCredential

log = structlog.get_logger(__name__)


async def mint_once(key: CacheKey, mint: Mint, backstop: float) -> ClientCredential | BrokerError:
    """The new credential, or why there is none (returned, not raised)."""
    try:
        with anyio.fail_after(backstop):
            return await mint()
    except BrokerError as exc:
        return exc
    except TimeoutError:
        return Unavailable(f"minting credentials for {key.describe()} timed out")
    except Exception:
        # A bug, not an upstream answer: the details go to the log under a reference,
        # callers and watchers get the reference (as for unary calls).
        ref = uuid.uuid4().hex[:12]
        log.exception("credential_mint_internal_error", key=key.describe(), ref=ref)
        return Unavailable(
            f"minting credentials for {key.describe()} failed: internal error (reference {ref})"
        )


def log_failure(
    entry: Entry, error: BrokerError, *, delay: float | None = None, rotation: bool = False
) -> None:
    """The warning for a failed mint: for a rotation of a good credential (still served on
    its own schedule), or with whether and when the cache retries, after ``entry.fail``."""
    key = entry.key
    where = {
        "connector_id": key.connector_id,
        "resource_type": key.resource_type,
        "resource_id": key.resource_id,
        "error": error.message,
    }
    if rotation:
        log.warning("credential_rotation_failed", **where)
        return
    log.warning(
        "credential_mint_failed",
        **where,
        retryable=delay is not None,
        attempt=entry.attempts,
        retry_in=None if delay is None else round(delay, 3),
        serving_cached=entry.credential is not None,
    )
