"""Internal errors reach callers as a reference, never as exception text; connectors by name.

Unary calls and watch streams alike: the traceback goes to the daemon log under a
reference id, the caller gets "internal error (reference X)". Typed BrokerErrors keep
their message and status.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from broker.api.v1 import broker_pb2 as pb
from broker.cache.cache import CacheKey, CredentialCache
from broker.clock import FakeClock
from broker.errors import NotFound, Unavailable
from broker.identity.principal import local_user
from broker.model import ClientCredential
from broker.rpc.servicer import BrokerServicer
from broker.rpc.status import DAEMON_ERROR
from broker.service import IssuedEvent

REF = re.compile(r"internal error \(reference ([0-9a-f]{12})\)")


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class FakeContext:
    def __init__(self) -> None:
        self.written: list[Any] = []

    async def write(self, message: Any) -> None:
        # Watch events may come encoded already (one encoding for every stream of a key).
        if isinstance(message, bytes):
            message = pb.CredentialEvent.FromString(message)
        self.written.append(message)

    async def abort(self, code: grpc.StatusCode, details: str, trailers: Any = ()) -> None:
        assert trailers == DAEMON_ERROR  # the mark of an error the daemon wrote itself
        raise Aborted(code, details)


class FakeCallers:
    def principal(self, context: Any) -> Any:
        return local_user(uid=0)


class FakeService:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def watch_credentials(self, *args: Any, **kw: Any) -> AsyncIterator[IssuedEvent]:
        yield IssuedEvent("error", error="upstream said no")
        raise self.error

    async def get_credentials(self, *args: Any, **kw: Any) -> Any:
        raise self.error


def servicer(error: Exception) -> BrokerServicer:
    return BrokerServicer(FakeService(error), FakeCallers())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_watch_hides_an_unexpected_error_behind_a_reference() -> None:
    context = FakeContext()
    with capture_logs() as logs:
        await servicer(KeyError("the secret detail")).WatchCredentials(
            pb.WatchCredentialsRequest(connector="hub"),
            context,  # type: ignore[arg-type]
        )
    kinds = [e.kind for e in context.written]
    assert kinds == [pb.CredentialEvent.ERROR, pb.CredentialEvent.ERROR]
    assert context.written[0].error == "upstream said no"
    last = context.written[-1].error
    match = REF.fullmatch(last)
    assert match, last
    assert "secret" not in last and "KeyError" not in last
    logged = [e for e in logs if e.get("ref") == match.group(1)]
    assert logged and logged[0]["event"] == "rpc_internal_error"
    assert logged[0]["exc_info"] is True  # the traceback goes to the log, under the reference


@pytest.mark.anyio
async def test_a_watch_keeps_a_typed_error_and_its_status() -> None:
    context = FakeContext()
    with pytest.raises(Aborted) as info:
        await servicer(NotFound("connector 'hub' not found")).WatchCredentials(
            pb.WatchCredentialsRequest(connector="hub"),
            context,  # type: ignore[arg-type]
        )
    assert (info.value.code, info.value.details) == (
        grpc.StatusCode.NOT_FOUND,
        "connector 'hub' not found",
    )


@pytest.mark.anyio
async def test_a_unary_call_hides_an_unexpected_error_behind_a_reference() -> None:
    with pytest.raises(Aborted) as info:
        await servicer(KeyError("the secret detail")).GetCredentials(
            pb.GetCredentialsRequest(connector="hub"),
            FakeContext(),  # type: ignore[arg-type]
        )
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert REF.fullmatch(info.value.details)


@pytest.mark.anyio
async def test_a_mint_bug_reaches_callers_as_a_reference_naming_the_connector() -> None:
    key = CacheKey("0f1e2d3c-uuid", 1, "gcp-generic", "project", connector_name="hub")

    async def broken() -> ClientCredential:
        raise KeyError("access_token")

    cache = CredentialCache(FakeClock(), rng=random.Random(1))
    with capture_logs() as logs:
        async with cache.running():
            with pytest.raises(Unavailable) as info:
                await cache.get(key, broken)
    message = info.value.message
    assert message.startswith("minting credentials for gcp-generic 'project' of connector 'hub'")
    assert "0f1e2d3c" not in message and "access_token" not in message
    match = REF.search(message)
    assert match, message
    assert any(e.get("ref") == match.group(1) and e.get("exc_info") for e in logs)


def test_cache_keys_describe_connectors_by_name() -> None:
    key = CacheKey("0f1e2d3c-uuid", 3, "docker-registry", "r.example", connector_name="hub")
    assert key.describe() == "docker-registry 'r.example' of connector 'hub'"
    # The name is for messages only: it is not part of the key.
    assert key == CacheKey("0f1e2d3c-uuid", 3, "docker-registry", "r.example")
