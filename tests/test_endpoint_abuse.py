"""The real daemon under abuse over real sockets: slowloris on the helper socket and on an
SDK endpoint, descriptor exhaustion under a low RLIMIT_NOFILE (helpers and the gRPC
socket), NUL and control characters in a connector name, nested JSON, oversized bodies and
headers. After each, ``broker status`` (gRPC) still answers within a second, and the log
holds one rate-limited line per refusal and no traceback."""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.api.v1 import broker_pb2 as pb
from broker.helpers.client import HelperError, call
from tests.daemon import Daemon, running_daemon
from tests.servers.google import GoogleServer

#: Small so the tests are quick; the defaults are 10 s.
TIMEOUT = 1.0
LIMITS = {
    "BROKER_HTTP_HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
    "BROKER_HTTP_BODY_TIMEOUT_SECONDS": str(TIMEOUT),
}


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleServer]:
    with GoogleServer(token_lifetime=3600) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, google: GoogleServer) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("abuse")
    with running_daemon(base / "data", env={**google.env(), **LIMITS}) as d:
        yield d
        assert "Traceback" not in d.log()


def _helper(daemon: Daemon) -> str:
    return str(daemon.data_dir / "helper.sock")


def status_within(daemon: Daemon, seconds: float = 1.0) -> float:
    """``broker status``'s call answers within ``seconds`` (and the CLI itself works)."""
    start = time.monotonic()
    with daemon.stub() as stub:
        reply = stub.GetStatus(pb.GetStatusRequest(), timeout=seconds)
    elapsed = time.monotonic() - start
    assert reply.version
    assert elapsed < seconds, f"GetStatus took {elapsed:.2f} s"
    assert daemon.cli_json("status")["version"] == reply.version
    return elapsed


def log_events(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    out = []
    for line in daemon.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                out.append(entry)
    return out


def exchange(connect: Callable[[], socket.socket], data: bytes, wait: float = 10.0) -> bytes:
    """Send ``data``, read until the daemon closes."""
    sock = connect()
    try:
        sock.settimeout(wait)
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")  # every header byte is ASCII
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        ).encode()
        + extra
        + b"\r\n"
        + body
    )


def unix(path: str) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return sock

    return connect


def tcp(host: str, port: int) -> Callable[[], socket.socket]:
    return lambda: socket.create_connection((host, port))


def slowloris(
    connect: Callable[[], socket.socket], count: int, request: bytes, patience: float
) -> tuple[list[float], list[bytes]]:
    """``count`` connections sending ``request`` one byte per connection every 0.2 s;
    how long each stayed open (from its connect) and what it was answered."""
    socks: list[socket.socket] = []
    opened: dict[socket.socket, float] = {}
    for _ in range(count):
        sock = connect()
        opened[sock] = time.monotonic()
        sock.setblocking(False)
        socks.append(sock)
    answers = {sock: b"" for sock in socks}
    lasted: dict[socket.socket, float] = {}
    sent = dict.fromkeys(socks, 0)
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + patience
    next_byte = 0.0
    while len(lasted) < count and time.monotonic() < deadline:
        if time.monotonic() >= next_byte:
            for sock in socks:
                if sock not in lasted and sent[sock] < len(request):
                    # closed by the daemon: the read below sees it
                    with contextlib.suppress(OSError):
                        sent[sock] += sock.send(request[sent[sock] : sent[sock] + 1])
            next_byte = time.monotonic() + 0.2
        for key, _ in selector.select(timeout=0.05):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            sock = ready
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data:
                answers[sock] += data
                continue
            lasted[sock] = time.monotonic() - opened[sock]
            selector.unregister(sock)
            sock.close()
    for sock in socks:
        if sock not in lasted:
            sock.close()
    selector.close()
    return list(lasted.values()), [answers[s] for s in socks]


def wait_for_summary(daemon: Daemon, endpoint: str, at_least: int, seconds: float = 15.0) -> int:
    """Refusals of ``endpoint`` counted in the log (lines + the summaries' 'suppressed N')."""
    deadline = time.monotonic() + seconds
    total = 0
    while time.monotonic() < deadline:
        lines = [e for e in log_events(daemon, "http_request_refused") if e["endpoint"] == endpoint]
        total = sum(e.get("suppressed", 1) for e in lines)
        if total >= at_least and any("suppressed" in e for e in lines):
            return total
        time.sleep(0.25)
    return total


# --------------------------------------------------------------------------- slowloris

SLOW_REQUEST = b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 2000


def test_slowloris_on_the_helper_socket_and_an_sdk_endpoint_is_cut_off_after_the_header_timeout(
    daemon: Daemon, google: GoogleServer, tmp_path: Path
) -> None:
    count = 1000
    before = len(log_events(daemon, "http_request_refused"))
    lasted, answers = slowloris(unix(_helper(daemon)), count, SLOW_REQUEST, patience=20)
    assert len(lasted) == count, f"{count - len(lasted)} of {count} still open after 20 s"
    assert min(lasted) >= TIMEOUT * 0.9
    assert max(lasted) < TIMEOUT + 8
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408 ")]
    assert len(timed_out) == count
    status, headers, body = parse(timed_out[0])
    assert (status, headers["x-broker-error-code"], body["code"]) == (408, "timeout", "timeout")
    assert body["error"] == "request headers not received within 1 s"
    status_within(daemon)
    # The helper's refusal summary comes when its 10 s log window closes: meanwhile, the
    # same attack on an SDK endpoint (a guard and a log window of its own).
    slowloris_on_an_sdk_endpoint(daemon, google, tmp_path)
    # One line per refusal, at most 10 per 10 s, the rest in a "suppressed N" summary.
    assert wait_for_summary(daemon, "helper", count) >= count
    events = log_events(daemon, "http_request_refused")[before:]
    lines = [e for e in events if e["endpoint"] == "helper"]
    assert len(lines) <= 12, len(lines)


def slowloris_on_an_sdk_endpoint(daemon: Daemon, google: GoogleServer, tmp_path: Path) -> None:
    key = google.service_account("abuse", "abuse-project").write(tmp_path / "sa.json")
    daemon.register_gcp("gcp-abuse", key)
    grant = daemon.cli_json("env", "gcp", "gcp-abuse")
    host, port = grant["env"]["GCE_METADATA_HOST"].rsplit(":", 1)
    request = (
        f"GET /computeMetadata/v1/project/project-id HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Metadata-Flavor: Google\r\nX-Slow: "
    ).encode() + b"a" * 2000
    count = 300
    lasted, answers = slowloris(tcp(host, int(port)), count, request, patience=20)
    assert len(lasted) == count
    assert min(lasted) >= TIMEOUT * 0.9
    assert max(lasted) < TIMEOUT + 8
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers)
    # The endpoint still serves a well-behaved client.
    good = exchange(
        tcp(host, int(port)),
        f"GET /computeMetadata/v1/project/project-id HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Metadata-Flavor: Google\r\nConnection: close\r\n\r\n".encode(),
    )
    assert good.startswith(b"HTTP/1.1 200 ") and good.endswith(b"abuse-project")
    # A body that never completes: GET / answers without reading it, and the connection
    # is closed once the body timeout has passed.
    start = time.monotonic()
    slow_body = exchange(
        tcp(host, int(port)),
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 100\r\n\r\nabc".encode(),
    )
    assert slow_body.startswith(b"HTTP/1.1 200 ")
    assert time.monotonic() - start < TIMEOUT + 3
    status_within(daemon)


def test_a_body_sent_too_slowly_gets_408(daemon: Daemon) -> None:
    start = time.monotonic()
    raw = exchange(
        unix(_helper(daemon)),
        b"POST /v1/credentials HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{",
    )
    status, _, body = parse(raw)
    assert (status, body["code"]) == (408, "timeout")
    assert body["error"] == "request body not received within 1 s"
    assert TIMEOUT * 0.9 <= time.monotonic() - start < TIMEOUT + 5
    status_within(daemon)


# --------------------------------------------------------------------------- bad input

NASTY_NAMES = [
    pytest.param("a\x00b", "a\\x00b", id="nul"),
    pytest.param("x\r\nX-Injected: 1", "x X-Injected: 1", id="crlf"),
    pytest.param("bell\x07esc\x1b[31m", "bell\\x07esc\\x1b[31m", id="controls"),
    pytest.param("del\x7f", "del\\x7f", id="del"),
    pytest.param("caf\u00e9-\u2603-\U0001f600", "caf\\xe9-\\u2603-\\U0001f600", id="non-latin-1"),
    pytest.param("back\\slash", "back\\\\slash", id="backslash"),
]


@pytest.mark.parametrize(("name", "escaped"), NASTY_NAMES)
def test_control_characters_in_a_connector_name_get_a_proper_error(
    daemon: Daemon, name: str, escaped: str
) -> None:
    body = json.dumps({"connector": name}).encode()
    raw = exchange(unix(_helper(daemon)), post("/v1/credentials", body))
    status, headers, reply = parse(raw)
    assert status in (400, 404)
    assert reply["code"] in ("invalid_argument", "not_found")
    assert "x-injected" not in headers
    header = headers["x-broker-error"]
    assert all(0x20 <= ord(ch) < 0x7F for ch in header)
    if status == 404:  # the name is echoed: escaped in the header, exact in the JSON
        assert escaped in header
        assert name in reply["error"]
    # The helpers' own client reads the header: one clean line.
    with pytest.raises(HelperError) as info:
        call(_helper(daemon), "test", "POST", "/v1/credentials", body)
    assert info.value.message == header
    assert "\n" not in str(info.value) and "\x00" not in str(info.value)
    status_within(daemon)


BAD_BODIES = [
    pytest.param(b'{"connector": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested", id="nested"),
    pytest.param(b"[" * 60000, "nested", id="unclosed-nesting"),
    pytest.param(b'{"connector": "\xff\xfe"}', "not UTF-8", id="not-utf-8"),
    pytest.param(b'{"connector": ', "not JSON", id="truncated"),
    pytest.param(b'["connector"]', "must be a JSON object", id="not-an-object"),
]


@pytest.mark.parametrize(("body", "words"), BAD_BODIES)
@pytest.mark.parametrize("path", ["/v1/credentials", "/v1/exec-credential", "/v1/docker/get"])
def test_malformed_bodies_are_400_with_one_line_json(
    daemon: Daemon, body: bytes, words: str, path: str
) -> None:
    raw = exchange(unix(_helper(daemon)), post(path, body))
    status, headers, reply = parse(raw)
    assert status == 400
    assert reply["code"] == "invalid_argument" == headers["x-broker-error-code"]
    assert words in reply["error"]
    assert raw.endswith(b"}") and b"\n" not in raw.partition(b"\r\n\r\n")[2]


def test_nested_exec_info_is_400(daemon: Daemon) -> None:
    exec_info = '{"spec": ' + "[" * 3000 + "]" * 3000 + "}"
    body = json.dumps({"connector": "kube", "exec_info": exec_info}).encode()
    status, _, reply = parse(exchange(unix(_helper(daemon)), post("/v1/exec-credential", body)))
    assert status == 400
    assert "KUBERNETES_EXEC_INFO is nested" in reply["error"]
    status_within(daemon)


def test_garbage_instead_of_http_is_400(daemon: Daemon) -> None:
    for garbage in (b"\x00\x01\x02\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x16\x03\x01\x00\xa5"):
        raw = exchange(unix(_helper(daemon)), garbage)
        if raw:  # a TLS hello is cut short before any line ends: closed without an answer
            status, _, reply = parse(raw)
            assert status == 400 and reply["code"] == "invalid_argument"
    status_within(daemon)


# --------------------------------------------------------------------------- sizes


def test_oversized_body_is_413(daemon: Daemon) -> None:
    big = b'{"connector": "' + b"a" * 70_000 + b'"}'
    status, headers, reply = parse(exchange(unix(_helper(daemon)), post("/v1/credentials", big)))
    assert (status, reply["code"]) == (413, "too_large")
    assert "over the limit of 65536 bytes" in headers["x-broker-error"]
    # Without a Content-Length: counted while read.
    chunked = (
        b"POST /v1/credentials HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"8000\r\n" + b"a" * 0x8000 + b"\r\n") * 3
        + b"0\r\n\r\n"
    )
    status, _, reply = parse(exchange(unix(_helper(daemon)), chunked))
    assert (status, reply["code"]) == (413, "too_large")
    status_within(daemon)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"X-Big: " + b"a" * 20_000 + b"\r\n", id="one-long-header"),
        pytest.param(b"".join(b"X-%d: %s\r\n" % (i, b"a" * 4000) for i in range(6)), id="total"),
        pytest.param(b"".join(b"X-%d: 1\r\n" % i for i in range(300)), id="too-many"),
    ],
)
def test_oversized_headers_are_431(daemon: Daemon, headers: bytes) -> None:
    request = b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n"
    status, _, reply = parse(exchange(unix(_helper(daemon)), request))
    assert (status, reply["code"]) == (431, "too_large")
    status_within(daemon)


# --------------------------------------------------------------------------- descriptors

SOFT, HARD = 256, 512


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def test_descriptor_exhaustion_keeps_grpc_serving(tmp_path: Path) -> None:
    env = {"BROKER_HTTP_HEADER_TIMEOUT_SECONDS": "60"}  # idle connections stay
    with running_daemon(tmp_path / "data", env=env, preexec_fn=_low_nofile) as daemon:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        (limit,) = log_events(daemon, "nofile_limit")
        assert (limit["soft_before"], limit["soft"], limit["hard"]) == (SOFT, HARD, HARD)
        (caps,) = log_events(daemon, "connection_caps_lowered")
        cap = caps["helper_max_connections"]
        assert cap >= 1 and cap + caps["sdk_max_connections"] <= HARD - caps["reserve"]
        lines_before = len(daemon.log().splitlines())

        # Helpers: more idle connections than the soft limit the daemon started with.
        idle = []
        for _ in range(SOFT + 200):
            sock = unix(_helper(daemon))()
            idle.append(sock)
        time.sleep(0.5)
        refused = 0
        for sock in idle:
            sock.setblocking(False)
            try:
                refused += sock.recv(4096).startswith(b"HTTP/1.1 503 ")
            except BlockingIOError:
                pass
            except OSError:
                refused += 1  # closed straight away (beyond the refusal slots)
        assert refused >= len(idle) - cap - 5
        status_within(daemon)
        # Still full: refused at once, with a 503 and a reason, or (when every refusal
        # slot is busy answering others) closed at once; never served, never left hanging.
        try:
            good = exchange(
                unix(_helper(daemon)), b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", wait=5
            )
        except (BrokenPipeError, ConnectionResetError):
            good = b""
        assert good == b"" or good.startswith(b"HTTP/1.1 503 "), good[:200]
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        good = exchange(
            unix(_helper(daemon)),
            b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert good.startswith(b"HTTP/1.1 200 ")

        # gRPC clients themselves exhaust the descriptors (3 each): accept backs off.
        grpc_socks = []
        for _ in range(HARD // 2):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5)
            try:
                sock.connect(str(daemon.socket))
            except OSError:
                sock.close()
                break
            grpc_socks.append(sock)
        time.sleep(0.5)
        cpu = _cpu_seconds(pid)
        time.sleep(3)
        busy = _cpu_seconds(pid) - cpu
        assert busy < 0.6, f"the daemon used {busy:.2f} s of CPU in 3 s while out of files"
        paused = log_events(daemon, "accept_paused")
        assert paused and all("Too many open files" in e["error"] for e in paused)
        for sock in grpc_socks:
            sock.close()
        deadline = time.monotonic() + 10
        while True:  # the accept loop retries within MAX_BACKOFF_SECONDS
            try:
                status_within(daemon)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        log = daemon.log()
        assert "Traceback" not in log
        new_lines = log.splitlines()[lines_before:]
        assert len(new_lines) < 80, "\n".join(new_lines[-40:])
