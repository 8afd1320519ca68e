"""list-resources end to end: the real daemon with the ``slow`` plugin installed through the
``broker.connector_types`` entry points, its HTTP test upstream, the real CLI and gRPC.

The upstream counts concurrent calls and hang-ups, so "N connectors take the
time of one", the limits, the timeout and the cancellation of a client are
all observed outside the daemon. Only the speed-up test measures real time.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from broker.api.v1 import broker_pb2 as pb
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from tests.daemon import BROKER, Daemon, running_daemon
from tests.plugins.slow_upstream import GOOD_TOKEN, SlowUpstream, canonical_ids, plugin_env
from tests.servers.ports import free_port

KEYS = {"connector", "connector_type", "resource_type", "resource_ids", "error"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def _upstream() -> Iterator[SlowUpstream]:
    with SlowUpstream() as up:
        yield up


@pytest.fixture
def upstream(_upstream: SlowUpstream) -> Iterator[SlowUpstream]:
    _upstream.reset()
    yield _upstream
    _upstream.release()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("disc") / "data", env=plugin_env()) as d:
        yield d


@pytest.fixture
def stub(daemon: Daemon) -> Iterator[pb_grpc.BrokerServiceStub]:
    with daemon.stub() as s:
        yield s


def register(
    stub: pb_grpc.BrokerServiceStub,
    name: str,
    url: str,
    *,
    label: str,
    connector_type: str = "slow",
    token: str = GOOD_TOKEN,
    resource_type: str = "",
    verify: bool = False,
    expires_at: datetime | None = None,
) -> pb.RegisterConnectorResponse:
    stamp = None
    if expires_at is not None:
        stamp = Timestamp()
        stamp.FromDatetime(expires_at)
    reply: pb.RegisterConnectorResponse = stub.RegisterConnector(
        pb.RegisterConnectorRequest(
            name=name,
            connector_type=connector_type,
            auth_method="token",
            resource_type=resource_type,
            config={"url": url, "token": token},
            labels={"t": label},
            no_verify=not verify,
            expires_at=stamp,
        ),
        timeout=20,
    )
    return reply


def listing(stub: pb_grpc.BrokerServiceStub, **fields: Any) -> list[pb.ResourceResult]:
    return list(stub.ListResources(pb.ListResourcesRequest(**fields), timeout=30))


def ok(name: str, rt: str, connector_type: str = "slow") -> dict[str, Any]:
    return {
        "connector": name,
        "connector_type": connector_type,
        "resource_type": rt,
        "resource_ids": canonical_ids(name, rt),
        "error": None,
    }


def failed(name: str, rt: str, error: str, connector_type: str = "slow") -> dict[str, Any]:
    return {
        "connector": name,
        "connector_type": connector_type,
        "resource_type": rt,
        "resource_ids": [],
        "error": error,
    }


def log_events(daemon: Daemon, event: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The daemon's JSON log lines of one event, waiting for the first to be written."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for line in daemon.log().splitlines():
            if f'"{event}"' in line:
                found.append(json.loads(line))
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_n_connectors_take_about_the_time_of_one(
    daemon: Daemon, upstream: SlowUpstream, stub: pb_grpc.BrokerServiceStub
) -> None:
    for i in range(8):
        register(stub, f"par-{i}", upstream.url, label="par")
    upstream.delay = 0.4

    start = time.monotonic()
    one = listing(stub, name="par-0", refresh=True)
    time_one = time.monotonic() - start
    assert len(one) == 2

    start = time.monotonic()
    many = listing(stub, labels={"t": "par"}, refresh=True)
    time_many = time.monotonic() - start

    assert len(many) == 16 and not [r for r in many if r.HasField("error")]
    assert upstream.max_in_flight == 16  # 8 connectors x 2 resource types, all at once
    # One-by-one would take 8x as long as one connector; at once it takes about as long.
    assert time_many < 2 * time_one, (time_one, time_many)


def test_each_result_is_streamed_as_soon_as_it_is_known(
    upstream: SlowUpstream, stub: pb_grpc.BrokerServiceStub
) -> None:
    for name in ("st-early-1", "st-late", "st-early-2"):
        register(stub, name, upstream.url, label="stream")
    upstream.hold("st-late")
    responses = stub.ListResources(pb.ListResourcesRequest(labels={"t": "stream"}), timeout=30)
    first = [next(responses) for _ in range(4)]
    assert {r.connector for r in first} == {"st-early-1", "st-early-2"}
    assert upstream.count("running", "st-late") == 2  # still held upstream meanwhile
    upstream.release("st-late")
    rest = list(responses)
    assert sorted((r.connector, r.resource_type) for r in rest) == [
        ("st-late", "slow-other"),
        ("st-late", "slow-resource"),
    ]


def test_json_partial_results_errors_and_filters(
    daemon: Daemon, upstream: SlowUpstream, stub: pb_grpc.BrokerServiceStub
) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}"
    register(stub, "mx-ok", upstream.url, label="mix")
    register(stub, "mx-twin", upstream.url, label="mix", connector_type="slow-twin")
    one = "slow-resource"
    register(stub, "mx-badtoken", upstream.url, label="mix", resource_type=one, token="wrong")
    register(stub, "mx-unreachable", dead_url, label="mix", resource_type=one)
    soon = datetime.now(UTC) + timedelta(hours=1)
    register(stub, "mx-expired", upstream.url, label="mix", resource_type=one, expires_at=soon)
    past = Timestamp()
    past.FromDatetime(datetime(2024, 1, 1, tzinfo=UTC))
    stub.UpdateConnector(
        pb.UpdateConnectorRequest(name="mx-expired", expires_at=past, no_verify=True)
    )

    data = daemon.cli_json("connector", "list-resources", "--label", "t=mix")
    assert all(set(entry) == KEYS for entry in data)
    unreachable = data[6]["error"]
    assert unreachable.startswith(f"cannot reach slow upstream {dead_url}/discover: ")
    assert data == [
        failed(
            "mx-badtoken",
            "slow-resource",
            f"slow upstream {upstream.url}/discover refused the credentials (HTTP 401)",
        ),
        failed(
            "mx-expired",
            "slow-resource",
            "connector 'mx-expired' credentials expired at 2024-01-01T00:00:00Z; renew them "
            "with `broker connector update mx-expired KEY=VALUE... --expires-at TIME` "
            "(TIME: RFC 3339 or +DURATION, e.g. +12h)",
        ),
        ok("mx-ok", "slow-other"),
        ok("mx-ok", "slow-resource"),
        ok("mx-twin", "slow-other", "slow-twin"),
        ok("mx-twin", "slow-resource", "slow-twin"),
        failed("mx-unreachable", "slow-resource", unreachable),
    ]
    assert upstream.count(connector="mx-expired") == 0

    assert daemon.cli_json(
        "connector", "list-resources", "--label", "t=mix", "--exclude-errors"
    ) == [
        ok("mx-ok", "slow-other"),
        ok("mx-ok", "slow-resource"),
        ok("mx-twin", "slow-other", "slow-twin"),
        ok("mx-twin", "slow-resource", "slow-twin"),
    ]
    by_type = daemon.cli_json(
        "connector", "list-resources", "-l", "t=mix", "--connector-type", "slow-twin"
    )
    assert by_type == [
        ok("mx-twin", "slow-other", "slow-twin"),
        ok("mx-twin", "slow-resource", "slow-twin"),
    ]
    by_id = daemon.cli_json(
        "connector", "list-resources", "-l", "t=mix", "-r", "slow-other", "-i", " MX-OK-OTHER-3 "
    )
    assert by_id == [
        {**ok("mx-ok", "slow-other"), "resource_ids": ["mx-ok-other-3"]},
        failed(
            "mx-twin",
            "slow-other",
            "'mx-ok-other-3' is not reachable with these credentials",
            "slow-twin",
        ),
    ]
    table = daemon.cli("connector", "list-resources", "--label", "t=mix", env={"COLUMNS": "250"})
    assert "mx-ok-resource-3" in table.stdout
    assert "error: slow upstream" in table.stdout and "refused the credentials" in table.stdout
    assert "credentials expired at" in table.stdout
    assert table.stderr == ""  # not a terminal: no progress drawn


def test_timeout_flag_reports_and_cancels_the_upstream_call(
    daemon: Daemon, upstream: SlowUpstream, stub: pb_grpc.BrokerServiceStub
) -> None:
    register(stub, "to-hung", upstream.url, label="to", resource_type="slow-resource")
    register(stub, "to-fine", upstream.url, label="to", resource_type="slow-resource")
    upstream.hold("to-hung")
    data = daemon.cli_json("connector", "list-resources", "-l", "t=to", "--timeout", "0.5")
    assert data == [
        ok("to-fine", "slow-resource"),
        failed("to-hung", "slow-resource", "timed out after 0.5s (raise it with --timeout)"),
    ]
    upstream.wait_until(lambda: upstream.count("cancelled", "to-hung") == 1)


def test_cache_refresh_and_update(
    daemon: Daemon, upstream: SlowUpstream, stub: pb_grpc.BrokerServiceStub
) -> None:
    register(stub, "ca-1", upstream.url, label="cache")
    register(stub, "ca-2", upstream.url, label="cache")

    def calls_made_by(action: Callable[[], object]) -> int:
        before = upstream.count()
        action()
        return upstream.count() - before

    first = listing(stub, labels={"t": "cache"})
    assert calls_made_by(lambda: listing(stub, labels={"t": "cache"})) == 0
    assert listing(stub, labels={"t": "cache"}) == first
    assert upstream.count() == 4
    refreshed = calls_made_by(
        lambda: daemon.cli("connector", "list-resources", "-l", "t=cache", "--refresh")
    )
    assert refreshed == 4
    stub.UpdateConnector(pb.UpdateConnectorRequest(name="ca-1", labels={"x": "y"}, no_verify=True))
    assert calls_made_by(lambda: listing(stub, labels={"t": "cache"})) == 2  # ca-1 only
    assert {c.connector for c in upstream.calls[-2:]} == {"ca-1"}


def test_a_failed_listing_is_reused_briefly_with_its_age_and_refresh_asks_again(
    daemon: Daemon, upstream: SlowUpstream, stub: pb_grpc.BrokerServiceStub
) -> None:
    """Through the CLI: a failing connector is asked once, the next listing (within the
    daemon's 10 s failure TTL) shows the failure with its age, --refresh asks again."""
    register(stub, "neg-ok", upstream.url, label="neg", resource_type="slow-resource")
    register(stub, "neg-bad", upstream.url, label="neg", resource_type="slow-resource")
    upstream.failures["neg-bad"] = 503

    def cli_listing(*extra: str) -> tuple[int, dict[str, str | None]]:
        before = upstream.count(connector="neg-bad")
        out = daemon.cli("connector", "list-resources", "-l", "t=neg", "-o", "json", *extra,
                         check=False)  # fmt: skip
        errors = {r["connector"]: r["error"] for r in json.loads(out.stdout)}
        return upstream.count(connector="neg-bad") - before, errors

    asked, errors = cli_listing()
    assert asked == 1 and errors["neg-ok"] is None
    cause = errors["neg-bad"]
    assert cause and "ago" not in cause
    asked, errors = cli_listing()
    assert asked == 0
    assert re.fullmatch(
        re.escape(cause) + r" \(failed \d+s ago, kept for 10s; --refresh asks again\)",
        errors["neg-bad"] or "",
    ), errors
    assert cli_listing("--refresh") == (1, {"neg-ok": None, "neg-bad": cause})


def test_a_client_deadline_cancels_the_fan_out_in_the_daemon(
    daemon: Daemon, upstream: SlowUpstream, stub: pb_grpc.BrokerServiceStub
) -> None:
    for i in range(3):
        register(stub, f"dl-{i}", upstream.url, label="deadline")
    upstream.hold()
    before = len(log_events(daemon, "discovery_cancelled", timeout=0))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ListResources(pb.ListResourcesRequest(labels={"t": "deadline"}), timeout=0.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The daemon hung up on every upstream call it had in flight ...
    upstream.wait_until(lambda: upstream.count("cancelled") == 6, timeout=5)
    # ... and logged, after its task group closed, that no unit was left.
    events = log_events(daemon, "discovery_cancelled")
    assert events[before:] == [
        {**events[-1], "units": 6, "finished": 0, "cancelled": 6},
    ]
    assert "rpc_internal_error" not in daemon.log()


def test_ctrl_c_in_the_cli_cancels_the_fan_out(
    daemon: Daemon, upstream: SlowUpstream, stub: pb_grpc.BrokerServiceStub
) -> None:
    for i in range(2):
        register(stub, f"int-{i}", upstream.url, label="sigint")
    upstream.hold()
    before = len(log_events(daemon, "discovery_cancelled", timeout=0))
    proc = subprocess.Popen(
        [*BROKER, "connector", "list-resources", "-l", "t=sigint", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**daemon.env, "BROKER_SOCKET": str(daemon.socket)},
        text=True,
        # A user's terminal delivers Ctrl-C; a suite run from a backgrounded
        # non-interactive shell inherits SIGINT ignored, which exec keeps.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        upstream.wait_until(lambda: upstream.count("running") == 4, timeout=20)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert out == "" and "Traceback" not in err
    upstream.wait_until(lambda: upstream.count("cancelled") == 4, timeout=5)
    events = log_events(daemon, "discovery_cancelled")[before:]
    assert [(e["units"], e["cancelled"]) for e in events] == [(4, 4)]


def _read_pty(fd: int, until: Callable[[str], bool], timeout: float = 20.0) -> str:
    """Everything written to the terminal until ``until(text)`` holds or it closes."""
    chunks: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data.decode(errors="replace"))
        if until("".join(chunks)):
            break
    return "".join(chunks)


def _frames(raw: str) -> list[str]:
    """The drawn frames of the live view, colours and cursor moves removed."""
    text = ANSI.sub("", raw).replace("\r", "")
    return re.split(r"(?=\d+/\d+ connectors answered)", text)[1:]


def test_live_progress_on_a_terminal(
    daemon: Daemon, upstream: SlowUpstream, stub: pb_grpc.BrokerServiceStub
) -> None:
    for name in ("tty-good-0", "tty-good-1", "tty-late"):
        register(stub, name, upstream.url, label="tty")
    register(stub, "tty-bad", upstream.url, label="tty", token="wrong-token")
    upstream.hold("tty-late")

    def waiting_on_late(frame: str) -> bool:
        return bool(
            frame.startswith("3/4 connectors answered — done 2, partial 0, failed 1, pending 1")
            and re.search(r"tty-late +slow +pending +0/2 types", frame)
            and re.search(r"tty-good-0 +slow +done +2/2 types", frame)
            and re.search(r"tty-bad +slow +failed +slow-\w+: slow upstream", frame)
        )

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    env = {**daemon.env, "BROKER_SOCKET": str(daemon.socket), "TERM": "xterm-256color"}
    env.update(COLUMNS="200", LINES="40")
    proc = subprocess.Popen(
        [*BROKER, "connector", "list-resources", "-l", "t=tty", "--exclude-errors"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
        text=True,
    )
    os.close(terminal)
    try:
        shown = _read_pty(controller, lambda raw: any(map(waiting_on_late, _frames(raw))))
        assert any(map(waiting_on_late, _frames(shown))), _frames(shown)[-3:]
        upstream.release("tty-late")
        _read_pty(controller, lambda raw: False)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        os.close(controller)
    assert proc.returncode == 0
    # The final table: on stdout, every connector that answered, the failed one excluded.
    assert "tty-late-resource-3" in out and "tty-good-1-other-1" in out
    assert "tty-bad" not in out


def test_verify_and_register_use_the_same_concurrent_engine(
    upstream: SlowUpstream, stub: pb_grpc.BrokerServiceStub
) -> None:
    upstream.delays["reg-multi"] = 0.3
    reply = register(stub, "reg-multi", upstream.url, label="reg", verify=True)
    assert [(r.resource_type, list(r.resource_ids)) for r in reply.resources] == [
        ("slow-resource", canonical_ids("reg-multi", "slow-resource")),
        ("slow-other", canonical_ids("reg-multi", "slow-other")),
    ]
    a, b = upstream.calls
    assert a.ended is not None and b.ended is not None
    assert a.started < b.ended and b.started < a.ended  # the two types overlapped

    with pytest.raises(grpc.RpcError) as err:
        register(stub, "reg-bad", upstream.url, label="reg", token="wrong-token", verify=True)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == (
        "connector 'reg-bad' failed verification, nothing was stored (use --no-verify to store "
        f"it anyway): slow-resource: slow upstream {upstream.url}/discover refused the "
        f"credentials (HTTP 401); slow-other: slow upstream {upstream.url}/discover refused "
        "the credentials (HTTP 401)"
    )


def test_configured_limits_and_timeout_with_a_cancelled_queue(
    tmp_path: Path, upstream: SlowUpstream
) -> None:
    env = plugin_env(
        {
            "BROKER_DISCOVERY_CONCURRENCY": "3",
            "BROKER_DISCOVERY_PER_PROVIDER": "2",
            "BROKER_DISCOVERY_TIMEOUT_SECONDS": "1",
        }
    )
    with running_daemon(tmp_path / "data", env=env) as daemon, daemon.stub() as stub:
        for i in range(4):
            register(stub, f"lim-s{i}", upstream.url, label="lim")
            register(stub, f"lim-t{i}", upstream.url, label="lim", connector_type="slow-twin")
        upstream.delay = 0.1
        results = listing(stub, labels={"t": "lim"})
        assert len(results) == 16 and not [r for r in results if r.HasField("error")]
        assert upstream.max_in_flight == 3  # the global limit, reached and never passed
        assert dict(upstream.max_in_flight_by_type) == {"slow": 2, "slow-twin": 2}

        upstream.reset()
        upstream.hold("lim-s0")
        (hung,) = listing(stub, name="lim-s0", resource_type="slow-other", refresh=True)
        assert hung.error == "timed out after 1s (raise it with --timeout)"

        upstream.reset()
        upstream.hold()
        with pytest.raises(grpc.RpcError):
            listing_with_deadline = stub.ListResources(
                pb.ListResourcesRequest(labels={"t": "lim"}, refresh=True), timeout=0.5
            )
            list(listing_with_deadline)
        upstream.wait_until(lambda: upstream.count("cancelled") == 3, timeout=5)
        cancelled = log_events(daemon, "discovery_cancelled")
        assert [(e["units"], e["finished"]) for e in cancelled] == [(16, 0)]
        upstream.release()
        assert upstream.count() == 3  # the 13 queued units never started
