"""File outputs end to end: the real daemon (a subprocess with a config file), the
``bench-fake`` connector type minting 3-second tokens from its fake upstream, so
renewals come every ~0.5 s; the reader is another process, the hooks real programs.

What a user sees: a reader never sees a partial file; the file is 0600 from its
first byte; on_change runs once per new credential and never for an identical one;
every rewrite lands before the old credential's margin; failures show in ``broker
outputs list``, ``broker status`` and the metrics, and recover; SIGHUP reloads.
"""

from __future__ import annotations

import base64
import json
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.fakeprovider import free_port, plugin_env, scrape
from bench.fakeprovider.upstream import FakeUpstream
from broker.api.v1 import broker_pb2 as pb
from broker.cli.outputs import output_json
from tests.daemon import Daemon, running_daemon

FAST = "r-fast"
LIFETIME = 3.0
#: Renewals the reader watches (one every ~0.5 s with LIFETIME): each is a rewrite the
#: reader races and a hook run; 12 keep the real-time part near 6 s. The reader reads
#: ~1,000 times a second whatever the count, so its minimum of reads (5,000) is set not
#: to outlast the renewals.
RENEWALS = 12
TEMPLATE = "token={{ config.token }}\nresource={{ resource_id }}\nexpires={{ expires_at }}\n"
ESCAPE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
HOOK = (
    "import os; assert 'BROKER_SECRET_KEY' not in os.environ; "
    "data = open(os.environ['BROKER_OUTPUT_PATH']).read(); "
    "import sys; open(sys.argv[1], 'a').write(data + '\\0')"
)


def _lifetime(resource: str) -> float | None:
    return LIFETIME if resource == FAST else None


def _wait(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


def _config(tmp: Path, outputs: list[dict[str, Any]]) -> str:
    lines = []
    for o in outputs:
        lines.append("[[outputs]]")
        for key, value in o.items():
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _out(connector: str, fmt: str, path: Path, **more: Any) -> dict[str, Any]:
    return {"connector": connector, "format": fmt, "path": str(path), **more}


def _fast_outputs(tmp: Path) -> list[dict[str, Any]]:
    out, hook = tmp / "out", [sys.executable, "-I", "-c", HOOK, str(tmp / "hooks.log")]
    return [
        _out("fake", "json", out / "fast.json", resource_id=FAST, on_change=hook),
        _out("fake", "template", out / "fast.conf", resource_id=FAST, template=TEMPLATE,
             mode="0640"),
        _out("fake", "json", tmp / "later" / "x.json", resource_id=FAST),
        _out("fake", "template", out / "escape", resource_id="r-slow", template=ESCAPE),
        _out("fake", "env", out / "slow.env", resource_id="r-slow", on_change=["false"]),
    ]  # fmt: skip


def _registry_outputs(tmp: Path) -> list[dict[str, Any]]:
    out, hook = tmp / "out", [sys.executable, "-I", "-c", HOOK, str(tmp / "hooks.log")]
    return [
        _out("reg", "docker-config", out / "docker.json", on_change=hook),
        _out("reg", "json", out / "reg.json"),
        _out("fake", "json", tmp / "later" / "slow.json", resource_id="r-slow"),
        _out("fake", "env", out / "slow.env", resource_id="r-slow"),
    ]


@contextmanager
def _daemon(tmp: Path, outputs: list[dict[str, Any]]) -> Iterator[tuple[Daemon, FakeUpstream, int]]:
    """A daemon whose config gains ``outputs`` by SIGHUP once its connectors exist (no
    wait for a retry of a watch on a connector not yet registered)."""
    (tmp / "out").mkdir()
    config = tmp / "broker.toml"
    config.write_text("log_level = 'debug'\n")
    port = free_port()
    # BROKER_SECRET_KEY: an on_change program must not inherit it (nor any secret).
    env = {**plugin_env(), "BROKER_SECRET_KEY": base64.b64encode(b"k" * 32).decode()}
    with (
        FakeUpstream(lifetime=_lifetime) as upstream,
        running_daemon(
            tmp / "data", "--config", str(config), "--metrics", f"127.0.0.1:{port}", env=env
        ) as daemon,
        daemon.stub() as stub,
    ):
        wanted = {o["connector"] for o in outputs}
        if "fake" in wanted:
            stub.RegisterConnector(
                pb.RegisterConnectorRequest(
                    name="fake", connector_type="bench-fake", resource_type="bench-resource",
                    config={"url": upstream.url, "token": upstream.token}, no_verify=True,
                )
            )  # fmt: skip
        if "reg" in wanted:
            stub.RegisterConnector(
                pb.RegisterConnectorRequest(
                    name="reg", connector_type="docker", no_verify=True,
                    config={"username": "u", "password": "p4ss", "registry": "127.0.0.1:5999"},
                )
            )  # fmt: skip
        config.write_text(_config(tmp, outputs))
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        yield daemon, upstream, port


#: The reader runs in its own process: a busy loop here would starve the fake upstream's
#: thread of the GIL and make renewals late.
READER = """
import json, os, stat, sys, time
path, want_reads, want_tokens, limit = sys.argv[1], *map(float, sys.argv[2:5])
prefix = "." + os.path.basename(path) + "."
reads, tokens, bad, modes = 0, [], [], set()
deadline = time.monotonic() + limit
while (reads < want_reads or len(tokens) < want_tokens) and time.monotonic() < deadline:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        bad.append("missing")
        continue
    reads += 1
    try:
        token = json.loads(data)["config"]["token"]
    except (ValueError, KeyError):
        bad.append(data[:80].decode(errors="replace"))
        continue
    if not tokens or tokens[-1] != token:
        tokens.append(token)
    time.sleep(0.0003)  # spread over the renewals, leaving the daemon a core
    if reads % 20 == 0:
        for entry in os.scandir(os.path.dirname(path)):
            if entry.name.startswith(prefix):  # this file's temp files
                try:
                    modes.add(stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode))
                except FileNotFoundError:
                    pass
print(json.dumps({"reads": reads, "tokens": tokens, "bad": bad, "temp_modes": sorted(modes)}))
"""


def _read_during_renewals(path: Path, reads: int, renewals: int) -> dict[str, Any]:
    """Reads ``path`` at least ``reads`` times while it changes ``renewals`` times."""
    args = [str(path), str(reads), str(renewals + 1), "60"]
    done = subprocess.run(
        [sys.executable, "-I", "-c", READER, *args], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _outputs(daemon: Daemon) -> list[dict[str, Any]]:
    """What ``broker outputs list --output json`` prints, straight from the RPC."""
    with daemon.stub() as stub:
        reply = stub.ListOutputs(pb.ListOutputsRequest(), timeout=10)
    return [output_json(o) for o in reply.outputs]


def _hook_entries(path: Path) -> list[str]:
    return [e for e in path.read_text().split("\0") if e] if path.exists() else []


def test_outputs_follow_renewals_atomically_and_hooks_run_once_per_change(
    tmp_path: Path,
) -> None:
    with _daemon(tmp_path, _fast_outputs(tmp_path)) as (daemon, upstream, port):
        _follow_renewals(daemon, upstream, tmp_path, port)


def _follow_renewals(daemon: Daemon, upstream: FakeUpstream, tmp: Path, port: int) -> None:
    fast = tmp / "out" / "fast.json"
    _wait(fast.exists, what="the first write")
    assert stat.S_IMODE(fast.stat().st_mode) == 0o600
    reader = _read_during_renewals(fast, 5_000, RENEWALS)
    assert reader["reads"] >= 5_000 and len(reader["tokens"]) >= RENEWALS + 1
    assert reader["bad"] == []  # never empty, never half a file
    assert set(reader["temp_modes"]) <= {0o600}
    assert upstream.mints[FAST] >= RENEWALS + 1

    # on_change: once per new credential, each time seeing the new file.
    hook_log = tmp / "hooks.log"
    entries = [json.loads(e) for e in _hook_entries(hook_log) if '"token"' in e]
    hooked = [e["config"]["token"] for e in entries if e["resource_id"] == FAST]
    assert len(hooked) == len(set(hooked))  # never twice for one credential
    missed = set(reader["tokens"][:-1]) - set(hooked)
    assert not missed  # every credential the reader saw got its hook
    listed = _outputs(daemon)
    assert listed[0]["hook_runs"] >= len(hooked) >= RENEWALS
    # Every credential the reader saw was counted, but the last: its write may still be
    # finishing (the on_change run above is excluded for the same reason).
    assert listed[0]["writes"] >= len(reader["tokens"]) - 1 >= RENEWALS
    assert listed[0]["last_error"] is None
    assert listed[0]["next_renewal"] is not None and listed[0]["last_write"] is not None

    # The template output: the custom format, and its own mode.
    conf = (tmp / "out" / "fast.conf").read_text().splitlines()
    assert conf[0].startswith("token=tok-r-fast-") and conf[1] == f"resource={FAST}"
    assert stat.S_IMODE((tmp / "out" / "fast.conf").stat().st_mode) == 0o640

    # Failures: an unwritable path, a sandbox escape, a failing on_change.
    errors = {o["index"]: o["last_error"] for o in listed}
    assert "cannot write" in errors[2] and "No such file or directory" in errors[2]
    assert "template refused" in errors[3] and "unsafe" in errors[3]
    assert "on_change 'false' exited with 1" in errors[4]
    assert not (tmp / "out" / "escape").exists()
    status = daemon.cli_json("status")
    assert status["health"] == "DEGRADED"
    assert any("output outputs[2]" in reason for reason in status["degraded"])
    table = daemon.cli("outputs", "list", env={"COLUMNS": "300"}).stdout
    assert "fast.json" in table and "template" in table and "No such file" in table
    metrics = scrape(port)
    assert metrics["broker_output_write_failures_total"] >= 2
    assert metrics["broker_output_hook_failures_total"] >= 1
    late = [line for line in daemon.log().splitlines() if '"before_margin_ms": -' in line]
    # Rewrites land before the old credential's margin (0.25 s after the renewal here). The
    # rule itself is tested on an injected clock (test_outputs_units); in real time a host
    # with several times more runnable work than cores stalls the daemon for 0.5 s at times,
    # so a few late writes out of dozens are tolerated here, not a pattern.
    writes = metrics["broker_output_writes_total"]
    assert metrics["broker_output_late_writes_total"] <= writes / 10, "\n".join(late)
    assert metrics["broker_outputs_failing"] == 3
    log = daemon.log()
    assert "tok-r-fast" not in log and "p4ss" not in log  # no secret in any log line

    # Recovery: the directory appears; the next renewal's retry writes there.
    (tmp / "later").mkdir()
    _wait(lambda: (tmp / "later" / "x.json").exists(), 15, "the recovered output")
    _wait(lambda: _outputs(daemon)[2]["last_error"] is None, 15, "the error cleared")


def test_identical_credential_reload_rotation_and_restart(tmp_path: Path) -> None:
    with _daemon(tmp_path, _registry_outputs(tmp_path)) as (daemon, _upstream, port):
        _identical_and_reload(daemon, tmp_path)
        _restart_finds_the_files_current(daemon, tmp_path, port)


def _identical_and_reload(daemon: Daemon, tmp: Path) -> None:
    docker = tmp / "out" / "docker.json"
    reg = tmp / "out" / "reg.json"
    _wait(lambda: docker.exists() and reg.exists(), what="the registry outputs")
    hook_log = tmp / "hooks.log"

    def docker_hooks() -> list[str]:
        return [e for e in _hook_entries(hook_log) if '"auths"' in e]

    def issued_to(output: str) -> int:
        return sum(
            1
            for line in daemon.log().splitlines()
            if '"credential_issued"' in line and f"via output {output}" in line
        )

    _wait(lambda: len(docker_hooks()) == 1, what="the first docker hook")
    auths = json.loads(docker.read_text())["auths"]
    assert list(auths) == ["127.0.0.1:5999"]
    before = docker.stat().st_ino
    assert issued_to("outputs[0]") == 1  # each output's credential is audited, as the daemon
    # A connector update that changes nothing the docker config holds: the new revision
    # is minted again (reg.json shows it) but the docker config is identical.
    daemon.cli("connector", "update", "reg", "insecure=true", "--no-verify")
    _wait(lambda: json.loads(reg.read_text())["config"].get("insecure") == "true", what="update")
    _wait(lambda: issued_to("outputs[0]") == 2, what="the docker output's new credential")
    time.sleep(0.2)  # it got it (audited just before): an identical one is a comparison away
    listed = _outputs(daemon)
    assert listed[0]["writes"] == 1 and listed[0]["hook_runs"] == 1
    assert listed[1]["writes"] == 2
    assert docker.stat().st_ino == before and len(docker_hooks()) == 1

    # SIGHUP: output 3 dropped, output 2 moved out of its missing directory; 0 and 1 go on.
    assert "No such file" in (listed[2]["last_error"] or "")
    assert daemon.cli_json("status")["health"] == "DEGRADED"
    config = tmp / "broker.toml"
    blocks = config.read_text().split("[[outputs]]\n")
    blocks[3] = blocks[3].replace("later/slow.json", "out/slow.json")
    config.write_text("[[outputs]]\n".join(blocks[:4]))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    _wait(lambda: len(_outputs(daemon)) == 3, what="the reload")
    _wait(lambda: (tmp / "out" / "slow.json").exists(), what="the moved output")
    after = _outputs(daemon)
    assert [o["path"].rsplit("/", 1)[1] for o in after] == ["docker.json", "reg.json", "slow.json"]
    assert [o["writes"] for o in after[:2]] == [1, 2]  # untouched: not restarted, not rewritten
    assert len(docker_hooks()) == 1
    _wait(lambda: _outputs(daemon)[2]["last_error"] is None, what="the moved output current")
    assert daemon.cli_json("status")["health"] == "SERVING"
    # A forced rotation reaches the outputs through the cache like any renewal.
    slow = tmp / "out" / "slow.json"
    token = json.loads(slow.read_text())["config"]["token"]
    daemon.cli("credentials", "rotate", "fake", "-r", "bench-resource", "-i", "r-slow")
    _wait(lambda: json.loads(slow.read_text())["config"]["token"] != token, what="rotation")
    _wait(lambda: _outputs(daemon)[2]["writes"] == 2, what="the rotated write counted")
    # A bad reload keeps the outputs running and says why.
    config.write_text("[[outputs]]\nconnector = 'fake'\nformat = 'xml'\npath = '/tmp/x'\n")
    daemon.proc.send_signal(signal.SIGHUP)
    _wait(lambda: "outputs_reload_failed" in daemon.log(), what="the refused reload")
    assert "outputs[0].format" in daemon.log()
    assert len(_outputs(daemon)) == 3


def _restart_finds_the_files_current(daemon: Daemon, tmp: Path, port: int) -> None:
    """A restarted daemon serving the persisted credentials (persist_cache, on by
    default) finds each file as it would write it: no write, no hook."""
    config = tmp / "broker.toml"
    outputs = [
        *_registry_outputs(tmp)[:2],
        _out("fake", "json", tmp / "out" / "slow.json", resource_id="r-slow"),
    ]
    config.write_text(_config(tmp, outputs))  # the same three outputs as running now
    files = [tmp / "out" / n for n in ("docker.json", "reg.json", "slow.json")]
    before = [(f.read_bytes(), f.stat().st_ino) for f in files]
    hooks = len(_hook_entries(tmp / "hooks.log"))
    daemon.stop()
    daemon.start("--config", str(config), "--metrics", f"127.0.0.1:{port}")

    def issued_since_start() -> int:
        return daemon.log().split('"daemon_stopped"')[-1].count("via output outputs[")

    _wait(lambda: issued_since_start() >= 3, what="the outputs' watches after the restart")
    time.sleep(0.3)  # each got its credential (audited just before): a comparison away
    assert [(f.read_bytes(), f.stat().st_ino) for f in files] == before
    assert len(_hook_entries(tmp / "hooks.log")) == hooks
    listed = _outputs(daemon)
    assert [(o["writes"], o["hook_runs"], o["last_error"]) for o in listed] == [(0, 0, None)] * 3
