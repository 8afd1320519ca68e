"""PostgreSQL driver and network errors as the broker errors a caller can act on.

A database that cannot be reached is Unavailable (retryable), a refused value
is InvalidArgument, a login problem FailedPrecondition; no message ever holds
the password (the caller's ``scrub`` removes it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

from broker.errors import (
    AlreadyExists,
    BrokerError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from broker.model import Connector
from broker.store import postgres_sql as sql


@contextmanager
def translated(
    location: str, scrub: Callable[[str], str], *, connecting: bool = False
) -> Iterator[None]:
    """Driver and network errors as broker errors, never with the password in them."""
    what = (
        f"cannot connect to connector store {location}"
        if connecting
        else f"connector store {location} is unavailable"
    )
    try:
        yield
    except BrokerError:
        raise
    except asyncpg.PostgresError as exc:
        state = str(getattr(exc, "sqlstate", "") or "")
        detail = scrub(str(exc))
        if state.startswith("22"):  # data exception, e.g. a NUL character in text
            raise InvalidArgument(f"the connector store refused a value: {detail}") from None
        if state.startswith("28"):  # wrong user or password: a setup problem
            raise FailedPrecondition(
                f"cannot log in to connector store {location}: {detail}"
            ) from None
        if state.startswith(sql.UNAVAILABLE_CLASSES) or not state:
            raise Unavailable(f"{what}: {detail}") from None
        raise FailedPrecondition(
            f"connector store {location} failed: {detail} (SQLSTATE {state})"
        ) from None
    except (
        OSError,
        TimeoutError,
        EOFError,  # a connection cut mid-message (asyncio.IncompleteReadError)
        asyncpg.InterfaceError,
        asyncpg.exceptions.InternalClientError,  # e.g. a protocol state lost in a restart
    ) as exc:
        detail = scrub(str(exc) or type(exc).__name__)
        raise Unavailable(f"{what}: {detail}") from None


def conflict(c: Connector, exc: Any) -> BrokerError:
    """A unique-key violation on insert, as the AlreadyExists a caller can act on."""
    if getattr(exc, "constraint_name", None) == "connectors_pkey":
        return AlreadyExists(
            f"connector '{c.name}': another connector already has its id '{c.id}'", field="id"
        )
    return AlreadyExists(f"connector '{c.name}' already exists", field="name")
