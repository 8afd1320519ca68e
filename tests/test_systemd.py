"""The systemd unit and the notify protocol.

The unit is linted with ``systemd-analyze verify`` and scored offline with
``systemd-analyze security``; the daemon is then run with the unit's own
command line, umask and environment, against a notify socket this test binds,
and must send READY=1 once it serves, WATCHDOG=1 at half of WATCHDOG_USEC, and
STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import base64
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.notify import Notifier, notify_address, watchdog_seconds
from tests.daemon import _clean_env

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "credential-broker.service"
SYSUSERS = ROOT / "systemd" / "credential-broker.sysusers"
INSTALLED_BROKER = "/opt/credential-broker/bin/broker"
VENV_BROKER = str(Path(sys.executable).parent / "broker")


def unit_entries(path: Path) -> dict[str, list[str]]:
    """``Key`` -> values, in order (unit files repeat keys such as SystemCallFilter)."""
    entries: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def here_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's broker (verify checks it exists)."""
    text = UNIT.read_text()
    assert INSTALLED_BROKER in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_BROKER, VENV_BROKER))
    return copy


# -- the unit file ---------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(here_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # verify exits 0 on unknown keys and only warns: any output is a finding.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    unit = here_unit(tmp_path)
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSek="))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30
    )
    assert "Unknown key 'WatchdogSek'" in result.stderr


def test_unit_hardening_scores_ok(tmp_path: Path) -> None:
    """Offline exposure score of at most 2.0 out of 10 ("OK"); the default unit scores 9.6."""
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            "--threshold=20",
            str(here_unit(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Overall exposure level" in result.stdout


def test_unit_declares_what_the_daemon_relies_on() -> None:
    entries = unit_entries(UNIT)
    one = {key: values[-1] for key, values in entries.items()}
    assert one["Type"] == "notify"
    assert one["User"] == one["Group"] == "broker"
    assert one["RuntimeDirectory"] == "broker"
    assert one["StateDirectory"] == "broker"
    assert one["UMask"] == "0077"
    assert one["CapabilityBoundingSet"] == ""
    assert one["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert "@system-service" in entries["SystemCallFilter"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["WatchdogSec"].endswith("s")
    argv = shlex.split(one["ExecStart"])
    assert argv[:2] == [INSTALLED_BROKER, "serve"]
    assert argv[argv.index("--data-dir") + 1] == "/var/lib/broker"
    assert argv[argv.index("--socket") + 1] == "/run/broker/broker.sock"
    assert "BROKER_LOCAL_SOCKET=/run/broker/helper.sock" in entries["Environment"]
    # The key apart from the DB: a root-only file systemd hands over as a credential.
    assert one["LoadCredential"] == "secret.key:/etc/credential-broker/secret.key"
    assert "BROKER_SECRET_KEY_FILE=%d/secret.key" in entries["Environment"]


def test_sysusers_snippet_creates_the_user_and_group(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(SYSUSERS)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    passwd = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines()]
    user = next(p for p in passwd if p[0] == "broker")
    group = next(
        g
        for g in (line.split(":") for line in (root / "etc/group").read_text().splitlines())
        if g[0] == "broker"
    )
    assert user[3] == group[2]  # primary group "broker": the sockets' group
    assert user[5] == "/var/lib/broker"
    assert user[6] == "/usr/sbin/nologin"


# -- the notify protocol, unit level -----------------------------------------------


def test_notify_socket_addresses() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/name") == "\0abstract/name"
    assert notify_address("vsock:2:1234") is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # someone else's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_seconds(env, 4242) == expected


def test_notifier_sends_to_a_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
        assert notifier.ready("serving")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=serving"
        assert notifier.status("busy")
        assert receiver.recv(4096) == b"STATUS=busy"


def test_notifier_is_silent_without_a_manager(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready("serving")
    # A manager that went away is logged, never fatal.
    gone = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not gone.ping()


# -- the daemon under the unit's command line ------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """An abstract-namespace datagram socket, as systemd's own is addressed."""
    name = f"broker-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        yield receiver, "@" + name


def _receive(receiver: socket.socket, timeout: float) -> dict[str, str]:
    receiver.settimeout(timeout)
    message = receiver.recv(4096).decode()
    return dict(line.split("=", 1) for line in message.splitlines())


def _serving(sock: Path) -> bool:
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _unit_command(
    tmp_path: Path, state: Path, runtime: Path, *, with_key: bool
) -> tuple[list[str], dict[str, str]]:
    """The unit's ExecStart and Environment, with its directories and %d (the credentials
    directory systemd fills from LoadCredential=) under ``tmp_path``."""
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    if with_key:
        key = credentials / "secret.key"
        key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        key.chmod(0o400)  # as systemd leaves it: read-only, the service user's

    def here(value: str) -> str:
        return (
            value.replace("/var/lib/broker", str(state))
            .replace("/run/broker", str(runtime))
            .replace("%d", str(credentials))
        )

    entries = unit_entries(UNIT)
    argv = [here(arg) for arg in shlex.split(entries["ExecStart"][-1])]
    argv[0] = VENV_BROKER
    env = _clean_env(dict(here(e).split("=", 1) for e in entries["Environment"]))
    runtime_dir = tmp_path / "xdg"  # pointer files, if any, go here and not to ~/.config
    runtime_dir.mkdir(mode=0o700)
    env |= {"CREDENTIALS_DIRECTORY": str(credentials), "XDG_RUNTIME_DIR": str(runtime_dir)}
    return argv, env


def test_daemon_speaks_notify_protocol_under_the_units_settings(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    receiver, address = notify_socket
    state, runtime = tmp_path / "var-lib-broker", tmp_path / "run-broker"
    state.mkdir(mode=0o700)
    runtime.mkdir(mode=0o750)
    argv, env = _unit_command(tmp_path, state, runtime, with_key=True)
    watchdog_usec = 400_000  # pings every 0.2 s
    env |= {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(watchdog_usec)}
    entries = unit_entries(UNIT)
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=log,
        stderr=log,
        umask=int(entries["UMask"][-1], 8),
    )
    try:
        ready = _receive(receiver, timeout=20)
        # READY=1 means serving: the socket answers at once, no polling.
        assert ready["READY"] == "1", ready
        assert ready["STATUS"] == f"serving on {runtime / 'broker.sock'}"
        assert _serving(runtime / "broker.sock")

        pings = []
        for _ in range(4):
            assert _receive(receiver, timeout=5) == {"WATCHDOG": "1"}
            pings.append(time.monotonic())
        # Every 0.2 s: three periods take about 0.6 s (loose bounds: 2 shared cores).
        assert 0.3 < pings[-1] - pings[0] < 3.0, pings

        # The unit's UMask=0077 yet sockets usable by the group; the key owner-only.
        for name in ("broker.sock", "helper.sock"):
            mode = stat.S_IMODE((runtime / name).stat().st_mode)
            assert mode == 0o660, (name, oct(mode))
        # The key came from the credential; none was created next to the DB.
        assert not (state / "secret.key").exists()
        assert stat.S_IMODE((state / "broker.db").stat().st_mode) & 0o077 == 0

        proc.send_signal(signal.SIGTERM)
        message = _receive(receiver, timeout=5)
        while message == {"WATCHDOG": "1"}:
            message = _receive(receiver, timeout=5)
        assert message["STOPPING"] == "1", message
        assert proc.wait(15) == 0
        assert not (runtime / "broker.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        if proc.returncode != 0:
            print((tmp_path / "daemon.log").read_text(errors="replace"))


def test_missing_key_credential_is_a_clear_error(tmp_path: Path) -> None:
    """No /etc/credential-broker/secret.key handed over: say so, create nothing."""
    state, runtime = tmp_path / "var-lib-broker", tmp_path / "run-broker"
    state.mkdir(mode=0o700)
    runtime.mkdir(mode=0o750)
    (state / "secret.key").write_text("an older key\n")  # from before the unit kept it apart
    argv, env = _unit_command(tmp_path, state, runtime, with_key=False)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    message = result.stderr.strip()
    assert "Traceback" not in message
    credentials = tmp_path / "credentials"
    assert message.startswith(f"error: secret key file {credentials / 'secret.key'} does not exist")
    assert "LoadCredential=secret.key:/etc/credential-broker/secret.key" in message
    assert f"A key from before is in {state / 'secret.key'}" in message
    assert os.listdir(credentials) == []
    assert sorted(os.listdir(state)) == ["secret.key"]  # no DB opened, no key made
    assert os.listdir(runtime) == []


def test_startup_failure_sends_no_ready(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """A daemon that cannot serve exits non-zero and never claims readiness."""
    receiver, address = notify_socket
    env = _clean_env({"NOTIFY_SOCKET": address, "BROKER_SECRET_KEY": "not-base64!"})
    result = subprocess.run(
        [VENV_BROKER, "serve", "--data-dir", str(tmp_path / "d")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "BROKER_SECRET_KEY" in result.stderr
    receiver.setblocking(False)
    with pytest.raises(BlockingIOError):
        receiver.recv(4096)
