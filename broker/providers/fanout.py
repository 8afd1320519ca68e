"""Listing many upstream scopes (storage accounts, registry locations, subscriptions) a few
at a time.

A listing that fans out must stay bounded (an account with hundreds of scopes must not
open hundreds of connections) and must fail with the upstream's own typed error, not an
exception group, so the caller's error handling is the same as for one call. Where the
scopes are independent (an identity's subscriptions), one failing scope must not hide the
others: :func:`gather_scopes` and :func:`partial_result` report it as a
:class:`PartialListing`, which discovery shows next to what was found.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import anyio

from broker.errors import BrokerError

T = TypeVar("T")
R = TypeVar("R")


async def _gather(
    items: Sequence[T], call: Callable[[T], Awaitable[Iterable[R]]], limit: int
) -> tuple[list[R], list[tuple[T, BrokerError]]]:
    """Everything ``call`` returns for each of ``items``, at most ``limit`` calls at a time,
    and each item whose call failed with a :class:`BrokerError`, in the order they failed
    (collected: a task group would wrap them in an exception group)."""
    found: list[R] = []
    failed: list[tuple[T, BrokerError]] = []
    limiter = anyio.Semaphore(limit)

    async def one(item: T) -> None:
        async with limiter:
            try:
                found.extend(await call(item))
            except BrokerError as exc:
                failed.append((item, exc))

    async with anyio.create_task_group() as group:
        for item in items:
            group.start_soon(one, item)
    return found, failed


async def gather_bounded(
    items: Sequence[T], call: Callable[[T], Awaitable[Iterable[R]]], limit: int
) -> list[R]:
    """Everything ``call`` returns for each of ``items``, at most ``limit`` calls at a time,
    in no particular order. The first :class:`BrokerError` to happen is raised once all
    calls are done."""
    found, failed = await _gather(items, call, limit)
    if failed:
        raise failed[0][1]
    return found


class PartialListing(BrokerError):
    """Some scopes of a fanned-out listing failed, others answered: discovery reports
    ``found`` together with this message (which names every failed scope), as one
    (connector, resource type) result, instead of failing the whole listing."""

    def __init__(self, message: str, found: Sequence[str], *, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.found = list(found)


async def gather_scopes(
    scopes: Sequence[str],
    call: Callable[[str], Awaitable[Iterable[R]]],
    limit: int,
) -> tuple[list[R], list[tuple[str, BrokerError]]]:
    """Like :func:`gather_bounded`, but one scope's :class:`BrokerError` does not hide what
    the others found: returns everything found and each failed scope with its error (in
    ``scopes`` order)."""
    found, failed = await _gather(scopes, call, limit)
    errors = dict(failed)
    return found, [(s, errors[s]) for s in scopes if s in errors]


def partial_result(
    found: list[str], failed: list[tuple[str, BrokerError]], total: int, noun: str
) -> list[str]:
    """``found`` when no scope failed. When every scope failed, the first one's error (its
    type kept, the scope named); otherwise :class:`PartialListing` naming each failed one."""
    if not failed:
        return found
    details = "; ".join(f"{noun} '{scope}': {exc.message}" for scope, exc in failed)
    retryable = any(exc.retryable for _, exc in failed)
    if len(failed) == total:
        first = failed[0][1]
        text = details if total == 1 else f"all {total} {noun}s failed: {details}"
        raise type(first)(text, field=first.field, retryable=first.retryable)
    raise PartialListing(
        f"{len(failed)} of {total} {noun}s failed: {details}", found, retryable=retryable
    )
