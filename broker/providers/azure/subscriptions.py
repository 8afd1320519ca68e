"""Listings over the subscriptions a connector reaches.

With ``subscription_id`` set, a connector reaches that one subscription, and a listing
fails as one call does. Without it, the broker does what ``az`` does: it lists the
subscriptions the identity sees (``GET /subscriptions``, every ``nextLink`` page, only
``state == Enabled``) and asks each of them, a few at a time. One subscription failing
(no role there, throttled) does not fail the listing: the others' resources come back
with a :class:`~broker.providers.fanout.PartialListing` error naming it.

AKS cluster names repeat across subscriptions, so such a connector's cluster IDs carry
the subscription (``SUBSCRIPTION_ID/RESOURCE_GROUP/NAME``); storage account and registry
names are unique across Azure and need none.

One listing of such a connector asks every resource type at once, and each needs the
subscriptions: :class:`SharedEnumeration` lets them share one ``GET /subscriptions``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio

from broker.clock import Clock
from broker.errors import BrokerError, InvalidArgument, NotFound
from broker.model import Connector
from broker.providers import fanout
from broker.providers.azure import arm, ids
from broker.providers.azure.settings import AzureSettings
from broker.providers.memo import PerObject

#: Subscriptions asked at once (each may fan out again over its storage accounts).
SUBSCRIPTION_CONCURRENCY = 4

#: How long one enumeration of a connector's subscriptions is shared, in seconds: long
#: enough for one listing's resource types (asked concurrently), short enough that a
#: subscription enabled or granted a moment ago shows in the next listing.
SHARE_SECONDS = 5.0

#: (subscription, resource group lower-cased, name) of an AKS cluster.
ClusterAt = tuple[str, str, str]

#: The Enabled subscriptions the connector's identity sees (one ARM enumeration, shared).
Enabled = Callable[[], Awaitable[list[str]]]


@dataclass
class _Shared:
    done: anyio.Event = field(default_factory=anyio.Event)
    value: list[str] | None = None
    error: BrokerError | None = None
    until: float = 0.0


class SharedEnumeration:
    """One ``GET /subscriptions`` enumeration per connector, shared by every call that
    starts while it runs or within :data:`SHARE_SECONDS` after it (by the injected clock).

    Keyed by the connector *object* (:class:`~broker.providers.memo.PerObject`): the
    catalog hands out a new object per revision, so an updated or deleted connector never
    sees an older enumeration, and nothing is keyed by secret text. A failure reaches only
    the calls already waiting for it and is not kept; if the enumerating call is cancelled
    (a unit's timeout), a waiting call enumerates itself.
    """

    def __init__(self, clock: Clock, seconds: float = SHARE_SECONDS) -> None:
        self._clock = clock
        self._seconds = seconds
        self._entries: PerObject[_Shared] = PerObject()

    async def enabled(self, connector: Connector, fetch: Enabled) -> list[str]:
        while True:
            entry = self._entries.get(connector)
            if entry is None:
                break
            if not entry.done.is_set():
                await entry.done.wait()
                if entry.error is not None:
                    raise entry.error
                if entry.value is not None:
                    return list(entry.value)
                continue  # the enumerating call was cancelled
            if entry.value is not None and self._clock.monotonic() < entry.until:
                return list(entry.value)
            break
        mine = _Shared()
        self._entries.put(connector, mine)
        try:
            mine.value = await fetch()
        except BrokerError as exc:
            mine.error = exc
            raise
        finally:
            mine.until = self._clock.monotonic() + self._seconds
            mine.done.set()
        return list(mine.value)

    def clear(self) -> None:
        self._entries.clear()


async def in_reach(settings: AzureSettings, enabled: Enabled) -> list[str]:
    """The configured subscription, else every Enabled one the identity sees."""
    if settings.subscription is not None:
        return [settings.subscription]
    return await enabled()


async def across(
    settings: AzureSettings, enabled: Enabled, call: Callable[[str], Awaitable[Iterable[str]]]
) -> list[str]:
    """``call`` for each subscription in reach, concurrently (bounded), results sorted.
    Raises :class:`~broker.providers.fanout.PartialListing` when some subscriptions
    failed and the first error (naming its subscription) when all did."""
    subs = await in_reach(settings, enabled)
    if settings.subscription is not None:
        return sorted(await call(subs[0]))
    found, failed = await fanout.gather_scopes(subs, call, SUBSCRIPTION_CONCURRENCY)
    return fanout.partial_result(sorted(found), failed, len(subs), "subscription")


async def cluster_ids(mgmt: arm.Arm, settings: AzureSettings, enabled: Enabled) -> list[str]:
    """Listing: with a subscription, a bare name when unique in it, else RESOURCE_GROUP/NAME;
    without one, always SUBSCRIPTION_ID/RESOURCE_GROUP/NAME."""

    async def one(sub: str) -> list[str]:
        clusters = await arm.list_clusters(mgmt, sub)
        if settings.subscription is None:
            return [f"{sub}/{group}/{name}" for group, name in clusters]
        names = [name for _, name in clusters]
        return [name if names.count(name) == 1 else f"{group}/{name}" for group, name in clusters]

    return await across(settings, enabled, one)


async def locate_cluster(
    mgmt: arm.Arm, settings: AzureSettings, enabled: Enabled, ref: ids.ClusterRef
) -> ClusterAt:
    """The one cluster ``ref`` means, found by listing its subscription (or every one in
    reach); refused when missing or when the name is ambiguous."""
    sub = ref.subscription or settings.subscription
    if sub is not None:
        clusters = [(sub, g, n) for g, n in await arm.list_clusters(mgmt, sub)]
        where = f"subscription '{sub}'"
    else:
        listed = await cluster_ids(mgmt, settings, enabled)  # a failed subscription fails this
        clusters = [_split(cid) for cid in listed]
        where = f"any of the subscriptions connector '{settings.connector}' sees"
    matches = [
        c
        for c in clusters
        if c[2].lower() == ref.name.lower()
        and (ref.resource_group is None or c[1] == ref.resource_group)
    ]
    if not matches:
        raise NotFound(f"AKS cluster '{ref.canonical}' is not in {where}")
    if len(matches) > 1:
        if sub is not None:
            groups = ", ".join(sorted(g for _, g, _ in matches))
            raise InvalidArgument(
                f"AKS cluster name '{ref.name}' exists in several resource groups ({groups}): "
                f"use RESOURCE_GROUP/{ref.name}",
                field="resource_id",
            )
        found = ", ".join(sorted(f"{s}/{g}/{n}" for s, g, n in matches))
        raise InvalidArgument(
            f"AKS cluster '{ref.canonical}' exists in several places ({found}): use "
            "SUBSCRIPTION_ID/RESOURCE_GROUP/NAME",
            field="resource_id",
        )
    return matches[0]


def _split(cluster_id: str) -> ClusterAt:
    sub, group, name = cluster_id.split("/", 2)
    return sub, group, name
