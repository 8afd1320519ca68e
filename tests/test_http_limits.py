"""The pieces behind the endpoint limits, in-process: header escaping, JSON depth, the
rate-limited log, the descriptor budget, the accept loop's backoff on EMFILE, and the
guard's connection cap and keep-alive timer on a real socket (the daemon-level attacks are
in test_endpoint_abuse.py)."""

from __future__ import annotations

import asyncio
import errno
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from broker import descriptors
from broker.descriptors import AcceptLoop, plan_caps
from broker.errors import InvalidArgument
from broker.local.answers import HttpRefusal, canned_response, header_safe
from broker.local.endpoint import HelperEndpoint, error_response, parse_json
from broker.local.guard import HttpGuard, HttpLimits
from broker.logs import RateLimitedLog
from broker.service import BrokerService

# --------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("connector 'a\x00b' not found", "connector 'a\\x00b' not found"),
        ("two\r\nlines\n\tand tabs", "two lines and tabs"),
        ("esc\x1b[31m del\x7f", "esc\\x1b[31m del\\x7f"),
        ("caf\u00e9 \u2603 \U0001f600", "caf\\xe9 \\u2603 \\U0001f600"),
        ("a\\x00 is not a NUL", "a\\\\x00 is not a NUL"),
    ],
)
def test_header_safe_is_printable_ascii_on_one_line(text: str, expected: str) -> None:
    assert header_safe(text) == expected


def test_header_safe_cuts_long_text() -> None:
    out = header_safe("\x00" * 1000, limit=100)
    assert len(out) <= 100 and out.endswith("...")
    assert out.startswith("\\x00\\x00")


def test_error_response_never_puts_raw_text_in_a_header() -> None:
    response = error_response(InvalidArgument("bad name 'x\x00\r\nSet-Cookie: y'"))
    assert response.status == 400
    assert response.headers["X-Broker-Error"] == "bad name 'x\\x00 Set-Cookie: y'"
    assert "Set-Cookie" not in response.headers
    refusal = error_response(HttpRefusal(413, "too_large", "too big"))
    assert (refusal.status, refusal.headers["X-Broker-Error-Code"]) == (413, "too_large")
    assert refusal.keep_alive is False


def test_canned_response_is_complete_http() -> None:
    raw = canned_response(503, "unavailable", "full\x00 up")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"X-Broker-Error: full\\x00 up\r\n" in head
    assert json.loads(body) == {"error": "full\x00 up", "code": "unavailable"}
    assert f"Content-Length: {len(body)}".encode() in head


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"[" * 40 + b"]" * 40, "nested 40 levels deep"),
        (b"{" * 100_000, "nested 100000 levels deep"),
        (b'{"a": "\xc3\x28"}', "not UTF-8 (byte 7)"),
        (b'{"a": 1', "not JSON"),
    ],
)
def test_parse_json_refuses_with_invalid_argument(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_json(raw, "request body")
    assert words in info.value.message


def test_parse_json_counts_brackets_outside_strings_only() -> None:
    text = json.dumps({"a": "[[[[" * 100 + '\\"{{{{' * 100, "b": [[[1]]]})
    assert parse_json(text, "x")["b"] == [[[1]]]


# --------------------------------------------------------------------------- the log


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_rate_limited_log_summarizes_what_it_left_out() -> None:
    now = [0.0]
    sink = Lines()
    limited = RateLimitedLog(sink, burst=3, window=10.0, clock=lambda: now[0])
    for i in range(20):
        limited.warning("refused", key="helper", group={"endpoint": "helper"}, n=i)
    assert [f["n"] for _, f in sink.lines] == [0, 1, 2]
    assert limited.suppressed("helper") == 17
    limited.warning("refused", key="sdk", group={"endpoint": "sdk"}, n=99)  # its own window
    now[0] = 10.5
    limited.warning("refused", key="helper", group={"endpoint": "helper"}, n=20)
    summary, fresh = sink.lines[-2:]
    assert summary == (
        "refused",
        {
            "endpoint": "helper",
            "suppressed": 17,
            "summary": "suppressed 17 more 'refused' lines in 10 s",
        },
    )
    assert fresh == ("refused", {"endpoint": "helper", "n": 20})


@pytest.mark.anyio
async def test_rate_limited_log_flushes_its_summary_when_the_window_ends() -> None:
    sink = Lines()
    limited = RateLimitedLog(sink, burst=2, window=0.2)
    for _ in range(50):
        limited.warning("accept_paused", group={"listener": "grpc"})
    assert len(sink.lines) == 2
    await asyncio.sleep(0.35)
    assert sink.lines[-1][1]["suppressed"] == 48
    assert sink.lines[-1][1]["listener"] == "grpc"


# --------------------------------------------------------------------------- descriptors


def test_caps_are_kept_when_they_fit() -> None:
    budget = plan_caps(65536, 20, 256, 1024, 1024)
    assert (budget.helper, budget.sdk, budget.reserve, budget.lowered) == (1024, 1024, 256, False)


def test_caps_are_lowered_to_leave_the_reserve() -> None:
    budget = plan_caps(1024, 24, 256, 1024, 1024)
    assert budget.lowered
    room = 1024 - 24 - 256 - 2 * descriptors.REFUSE_SLOTS
    assert (budget.helper, budget.sdk) == (room // 2, room - room // 2)
    # A tiny limit: the reserve is at most half of it, each endpoint still gets one.
    tiny = plan_caps(64, 40, 256, 1024, 10)
    assert (tiny.reserve, tiny.helper >= 1, tiny.sdk >= 1) == (32, True, True)


def test_soft_nofile_limit_is_raised_to_the_hard_one() -> None:
    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 1024))

    code = (
        "import resource; from broker.descriptors import raise_nofile_limit;"
        "print(raise_nofile_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=low, check=True
    )
    assert out.stdout.splitlines()[-1] == "(128, 1024, 1024) (1024, 1024)"


class ExhaustedSocket:
    """A listening socket whose accept() fails with EMFILE (readable all along)."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.calls = 0
        self.exhausted = True

    def fileno(self) -> int:
        return self.real.fileno()

    def setblocking(self, flag: bool) -> None:
        self.real.setblocking(flag)

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        if self.exhausted:
            raise OSError(errno.EMFILE, "Too many open files")
        return self.real.accept()

    def close(self) -> None:
        self.real.close()


@pytest.mark.anyio
async def test_accept_loop_backs_off_on_emfile_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = Lines()
    monkeypatch.setattr(descriptors, "accept_log", RateLimitedLog(sink, burst=5, window=10.0))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s"))
    listener.listen(8)
    pending = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pending.connect(str(tmp_path / "s"))  # keeps the listener readable
    fake = ExhaustedSocket(listener)
    accepted: list[socket.socket] = []
    loop = AcceptLoop(cast(socket.socket, fake), accepted.append, name="test")
    await loop.start_serving()
    start = time.monotonic()
    await asyncio.sleep(1.0)
    # 0.05 + 0.1 + 0.2 + 0.4 s between tries: a handful of calls, never a busy loop.
    assert 3 <= fake.calls <= 6, fake.calls
    assert loop.backoff >= 0.4
    assert len(sink.lines) == min(fake.calls, 5)
    assert sink.lines[0] == (
        "accept_paused",
        {"listener": "test", "error": "Too many open files (errno 24)", "retry_in_seconds": 0.05},
    )
    fake.exhausted = False
    while not accepted and time.monotonic() - start < 5:
        await asyncio.sleep(0.05)
    assert len(accepted) == 1  # the connection waited in the backlog and is served now
    loop.close()
    await loop.wait_closed()
    for sock in (*accepted, pending):
        sock.close()


# --------------------------------------------------------------------------- the guard


@pytest.fixture
async def helper(tmp_path: Path) -> AsyncIterator[tuple[HelperEndpoint, str]]:
    limits = HttpLimits(header_timeout=0.5, body_timeout=0.5, max_connections=3)
    endpoint = HelperEndpoint(cast(BrokerService, object()), HttpGuard("helper", limits))
    path = tmp_path / "helper.sock"
    await endpoint.start(path, None)
    try:
        yield endpoint, str(path)
    finally:
        await endpoint.stop()


async def _open(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(path)


@pytest.mark.anyio
async def test_connections_over_the_cap_get_503_at_once(
    helper: tuple[HelperEndpoint, str],
) -> None:
    endpoint, path = helper
    held = [await _open(path) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert endpoint.guard.active == 3
    reader, writer = await _open(path)
    start = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), 0.4)  # well before any timeout
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == "unavailable"
    assert time.monotonic() - start < 0.4
    writer.close()
    _, first = held.pop()
    first.close()
    await asyncio.sleep(0.05)
    assert endpoint.guard.active == 2
    reader, writer = await _open(path)
    writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 2)).startswith(b"HTTP/1.1 200 ")
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.05)
    assert endpoint.guard.refusing == 0


@pytest.mark.anyio
async def test_keep_alive_request_gets_its_own_header_timer(
    helper: tuple[HelperEndpoint, str],
) -> None:
    _, path = helper
    reader, writer = await _open(path)
    writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b'"serving"}'), 2)
    assert first.startswith(b"HTTP/1.1 200 ")
    await asyncio.sleep(0.3)  # idle, within the keep-alive time
    writer.write(b"GET /v1/hea")  # the next request starts, and stalls
    start = time.monotonic()
    rest = await asyncio.wait_for(reader.read(), 3)
    assert rest.startswith(b"HTTP/1.1 408 ")
    assert 0.4 <= time.monotonic() - start < 1.5
    writer.close()
