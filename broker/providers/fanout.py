"""Listing many upstream scopes (storage accounts, registry locations) a few at a time.

A listing that fans out must stay bounded (an account with hundreds of scopes must not
open hundreds of connections) and must fail with the upstream's own typed error, not an
exception group, so the caller's error handling is the same as for one call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import anyio

from broker.errors import BrokerError

T = TypeVar("T")
R = TypeVar("R")


async def gather_bounded(
    items: Sequence[T], call: Callable[[T], Awaitable[Iterable[R]]], limit: int
) -> list[R]:
    """Everything ``call`` returns for each of ``items``, at most ``limit`` calls at a time,
    in no particular order. The first :class:`BrokerError` to happen is raised once all
    calls are done (collected: a task group would wrap it in an exception group)."""
    found: list[R] = []
    errors: list[BrokerError] = []
    limiter = anyio.Semaphore(limit)

    async def one(item: T) -> None:
        async with limiter:
            try:
                found.extend(await call(item))
            except BrokerError as exc:
                errors.append(exc)

    async with anyio.create_task_group() as group:
        for item in items:
            group.start_soon(one, item)
    if errors:
        raise errors[0]
    return found
