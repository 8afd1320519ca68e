"""`broker exec`: real children (the aws CLI, boto3, docker-credential-broker, Python
scripts) run through the real CLI against the real daemon and moto.

What the issue asks, each checked from the outside: the child reaches AWS through the
container endpoint; botocore refreshes through it across a renewal; after the child
exits the grant is gone and the endpoint refuses its token; --env-only
--restart-on-change restarts the child with new variables before the old ones enter
their margin; exit codes, stdin and signals pass through; temp files are removed when
the child is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.daemon import BROKER, Daemon, running_daemon
from tests.servers.moto import (
    ACCOUNT,
    REGION,
    MotoServer,
    moto_for_test,
    no_ambient_aws,
    shared_moto,
)

#: Sessions short enough for a renewal within seconds: the margin is 3/4 of the
#: lifetime (15 s), renewal at about 1/3 of the servable 5 s before it.
SHORT = timedelta(seconds=20)

DUMP_ENV = """
import json, os, sys
keep = ("AWS_", "GOOGLE_", "CLOUDSDK_", "DOCKER_CONFIG", "KUBECONFIG", "PATH")
with open(sys.argv[1], "w") as f:
    json.dump({k: v for k, v in os.environ.items() if k.startswith(keep)}, f)
"""


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("exec-home")
    env = no_ambient_aws(home)
    with running_daemon(home / "data", env=env) as d:
        yield d


@pytest.fixture(scope="module")
def aws(daemon: Daemon) -> str:
    """One aws connector for the tests that need no renewal (moto's auth is off)."""
    _register_aws(daemon, shared_moto(), "exec-aws")
    return "exec-aws"


def _env(daemon: Daemon, **extra: str) -> dict[str, str]:
    """As Daemon.cli runs the CLI, plus keys a careless parent might leave set."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{daemon.env.get('PATH', '')}"
    return {**daemon.env, "PATH": path, "BROKER_SOCKET": str(daemon.socket), **extra}


def _register_aws(
    daemon: Daemon, moto: MotoServer, name: str, method: str = "session-token"
) -> None:
    key, secret = moto.create_user(f"{name}-user")
    daemon.cli(
        "connector", "register", name, "--type", "aws", "--auth-method", method,
        f"region={REGION}", f"endpoint_url={moto.url}", f"aws_access_key_id={key}",
        f"aws_secret_access_key={secret}", "--resource-type", "aws-generic",
    )  # fmt: skip


def _exec(
    daemon: Daemon, *args: str, input: str | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BROKER, "exec", *args],
        capture_output=True,
        text=True,
        input=input,
        env=_env(daemon, **env),
        timeout=timeout,
    )


def _grants(daemon: Daemon, connector: str) -> int:
    """How many live SDK endpoint grants the connector has (root sees every one)."""
    from broker.api.v1 import broker_pb2 as pb

    with daemon.stub() as stub:
        reply = stub.ListSdkEndpoints(pb.ListSdkEndpointsRequest(), timeout=10)
    return sum(e.connector == connector for e in reply.endpoints)


def _endpoint_status(env: dict[str, str]) -> int:
    request = urllib.request.Request(
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        headers={"Authorization": env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_aws_cli_through_the_container_endpoint_then_the_grant_is_gone(
    daemon: Daemon, moto: MotoServer, aws: str, tmp_path: Path
) -> None:
    seen = tmp_path / "env.json"
    script = f"{sys.executable} -c '{DUMP_ENV}' {seen} && exec aws sts get-caller-identity"
    # Stale keys and a profile in the parent's environment must not win over the endpoint.
    result = _exec(
        daemon, "exec-aws", "--", "sh", "-c", script,
        AWS_ACCESS_KEY_ID="AKIASTALESTALESTALE0", AWS_SECRET_ACCESS_KEY="stale",
        AWS_PROFILE="nonexistent",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    identity = json.loads(result.stdout)
    # moto (auth off) answers every caller with one identity: the call went through.
    assert identity["Account"] == ACCOUNT and identity["Arn"].startswith("arn:aws:"), identity
    env = json.loads(seen.read_text())
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"].startswith("http://127.0.0.1:")
    assert env["AWS_ENDPOINT_URL"] == moto.url and env["AWS_REGION"] == REGION
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"} & set(env)
    # The child has exited: its grant is revoked, the endpoint refuses the token.
    assert _endpoint_status(env) in (401, 403)
    assert _grants(daemon, "exec-aws") == 0
    audit = daemon.log()
    assert "sdk_endpoint_granted" in audit and "sdk_endpoint_revoked" in audit


def test_grant_is_usable_while_the_child_runs(daemon: Daemon, moto: MotoServer, aws: str) -> None:
    probe = (
        "import json, os, urllib.request\n"
        "r = urllib.request.Request(os.environ['AWS_CONTAINER_CREDENTIALS_FULL_URI'],"
        " headers={'Authorization': os.environ['AWS_CONTAINER_AUTHORIZATION_TOKEN']})\n"
        "print(json.loads(urllib.request.urlopen(r, timeout=10).read())['AccessKeyId'])\n"
    )
    result = _exec(daemon, aws, "--", sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(("ASIA", "AKIA"))
    # --ttl bounds the grant (as `broker env aws --ttl`): the child lists it.
    listed = _exec(daemon, aws, "--ttl", "90s", "--", *BROKER, "env", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    (grant,) = [g for g in json.loads(listed.stdout) if g["connector"] == aws]
    assert 60 < grant["expires_in_seconds"] <= 90, grant


RENEWALS = """
import json, sys, time
import boto3

session = boto3.Session()
creds = session.get_credentials()
sts = session.client("sts")
seen = []
deadline = time.time() + float(sys.argv[1])
while time.time() < deadline:
    sts.get_caller_identity()  # refreshes through RefreshableCredentials when due
    frozen = creds.get_frozen_credentials()
    if not seen or seen[-1] != frozen.token:
        seen.append(frozen.token)
    if len(seen) >= 2:
        break
    time.sleep(0.3)
print(json.dumps({"tokens": seen, "method": creds.method}))
"""


@pytest.mark.timeout(90)
def test_botocore_refreshes_through_the_endpoint_across_a_renewal(
    daemon: Daemon, moto: MotoServer
) -> None:
    moto.sts_lifetime = SHORT
    _register_aws(daemon, moto, "exec-renewing", method="secret-key")
    daemon.cli("connector", "update", "exec-renewing", "--expiration-seconds", "900")
    result = _exec(daemon, "exec-renewing", "--", sys.executable, "-c", RENEWALS, "40")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["method"] == "container-role"
    assert len(got["tokens"]) == 2 and got["tokens"][0] != got["tokens"][1], got


RESTARTED = """
import json, os, signal, sys, time
start = time.time()
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"start": start, "token": os.environ["AWS_SESSION_TOKEN"],
                        "key": os.environ["AWS_ACCESS_KEY_ID"],
                        "expires": os.environ["AWS_CREDENTIAL_EXPIRATION"],
                        "pid": os.getpid()}) + "\\n")
def stubborn(signum, frame):  # noted, not obeyed: --stop-grace then SIGKILL
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps({"got": signum, "at": time.time(), "pid": os.getpid()}) + "\\n")
signal.signal(signal.SIGUSR1, stubborn)
lines = open(sys.argv[1]).read().splitlines()
if sum('"start"' in line for line in lines) >= 2:
    sys.exit(5)  # the second child: done
while True:
    time.sleep(0.05)
"""
#: The restart test's sessions: the margin (3/4: 45 s) starts 15 s after minting, the
#: renewal comes 8.5-11.5 s after it, leaving room for the stop grace.
RESTART_LIFETIME = timedelta(seconds=60)
STOP_GRACE = 0.5


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.timeout(90)
def test_env_only_restart_on_change_before_the_margin(
    daemon: Daemon, moto: MotoServer, tmp_path: Path
) -> None:
    moto.sts_lifetime = RESTART_LIFETIME
    _register_aws(daemon, moto, "exec-static")
    log = tmp_path / "children.jsonl"
    result = _exec(
        daemon, "exec-static", "--env-only", "--restart-on-change", "--stop-signal", "USR1",
        "--stop-grace", str(STOP_GRACE), "--", sys.executable, "-c", RESTARTED, str(log),
        timeout=80,
    )  # fmt: skip
    assert result.returncode == 5, result.stderr  # the second child's own exit code
    events = [json.loads(line) for line in log.read_text().splitlines()]
    first, stopped, second = events
    # The stop signal first; the child ignored it and was SIGKILLed after the grace.
    assert (stopped["got"], stopped["pid"]) == (signal.SIGUSR1, first["pid"])
    assert second["start"] - stopped["at"] >= STOP_GRACE
    assert second["token"] != first["token"] and second["pid"] != first["pid"]
    # Restarted before the first credential entered its margin (3/4 of its life).
    margin_start = _stamp(first["expires"]) - RESTART_LIFETIME * 3 / 4
    restarted = datetime.fromtimestamp(second["start"], UTC)
    assert restarted < margin_start, (restarted, margin_start)
    assert _stamp(second["expires"]) > _stamp(first["expires"])


def test_env_only_variables(daemon: Daemon, moto: MotoServer, aws: str, tmp_path: Path) -> None:
    seen = tmp_path / "env.json"
    result = _exec(
        daemon, aws, "--env-only", "--", sys.executable, "-c", DUMP_ENV, str(seen),
        AWS_PROFILE="stale", AWS_CONTAINER_CREDENTIALS_FULL_URI="http://127.0.0.1:1/stale",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    env = json.loads(seen.read_text())
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    assert env["AWS_SESSION_TOKEN"] and env["AWS_REGION"] == REGION
    assert _stamp(env["AWS_CREDENTIAL_EXPIRATION"]) > datetime.now(UTC)
    assert "AWS_PROFILE" not in env and "AWS_CONTAINER_CREDENTIALS_FULL_URI" not in env


# -- pass-through ------------------------------------------------------------------------


def test_exit_code_stdin_stdout_stderr_pass_through(
    daemon: Daemon, moto: MotoServer, aws: str
) -> None:
    child = (
        "import sys; data = sys.stdin.read(); sys.stdout.write(data.upper());"
        " sys.stderr.write('to stderr'); sys.exit(7)"
    )
    result = _exec(daemon, aws, "--", sys.executable, "-c", child, input="hello\nworld\n")
    assert (result.returncode, result.stdout, result.stderr) == (7, "HELLO\nWORLD\n", "to stderr")
    # Death by a signal: 128 + N, as a shell reports it.
    killed = _exec(daemon, aws, "--", sys.executable, "-c", "import os; os.kill(os.getpid(), 15)")
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr
    missing = _exec(daemon, aws, "--", "no-such-command-anywhere")
    assert missing.returncode == 127 and "no-such-command-anywhere" in missing.stderr
    assert _grants(daemon, aws) == 0


SIGNALLED = """
import os, signal, sys, time
def got(signum, frame):
    print(f"child got {signum}", flush=True)
    sys.exit(40 + signum)
signal.signal(signal.SIGTERM, got)
signal.signal(signal.SIGINT, got)
signal.signal(signal.SIGHUP, got)
print("ready", os.getpid(), flush=True)
while True:
    time.sleep(0.05)
"""


def test_signals_are_forwarded_and_the_grants_revoked(
    daemon: Daemon, moto: MotoServer, aws: str
) -> None:
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    procs = [
        subprocess.Popen(
            [*BROKER, "exec", aws, "--", sys.executable, "-c", SIGNALLED],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(daemon),
        )
        for _ in sigs
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("ready")
        assert _grants(daemon, aws) == len(sigs)
        for proc, sig in zip(procs, sigs, strict=True):
            proc.send_signal(sig)
        for proc, sig in zip(procs, sigs, strict=True):
            out, err = proc.communicate(timeout=20)
            assert out == f"child got {int(sig)}\n", err
            assert proc.returncode == 40 + sig
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert _grants(daemon, aws) == 0


KEEPS_RUNNING = (
    DUMP_ENV
    + """
print("ready", os.getpid(), flush=True)
import time
time.sleep(60)
"""
)


def test_a_sigkilled_broker_exec_leaves_no_grant_behind(
    daemon: Daemon, moto: MotoServer, aws: str, tmp_path: Path
) -> None:
    """Nobody is left to revoke the grant: the daemon watches `broker exec`'s process."""
    seen = tmp_path / "env.json"
    proc = subprocess.Popen(
        [*BROKER, "exec", aws, "--", sys.executable, "-c", KEEPS_RUNNING, str(seen)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(daemon),
    )
    child = 0
    try:
        assert proc.stdout is not None
        word, child_pid = proc.stdout.readline().split()
        assert word == "ready"
        child = int(child_pid)
        env = json.loads(seen.read_text())
        assert _endpoint_status(env) == 200 and _grants(daemon, aws) == 1
        proc.kill()  # SIGKILL: no cleanup runs in `broker exec`; its child lives on
        proc.wait()
        killed = time.monotonic()
        while _grants(daemon, aws):
            assert time.monotonic() - killed < 5, "the grant outlived `broker exec`"
            time.sleep(0.02)
        assert _endpoint_status(env) == 401
        os.kill(child, 0)  # the child still runs: the grant ended with `broker exec`
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()
    assert f"the process it was bound to (pid {proc.pid}) exited" in daemon.log()


# -- docker: a temp DOCKER_CONFIG with credHelpers; removed even when the child is killed --


def test_docker_helper_config_and_temp_files_gone_after_sigkill(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.cli(
        "connector", "register", "exec-reg", "--type", "docker", "username=olga",
        "password=registry-Secret-1", "registry=127.0.0.1:5999", "insecure=true",
        "--no-verify",
    )  # fmt: skip
    seen = tmp_path / "env.json"
    child = (
        f"{sys.executable} -c '{DUMP_ENV}' {seen}"
        ' && cat "$DOCKER_CONFIG/config.json"'
        " && echo 127.0.0.1:5999 | docker-credential-broker get"
        " && kill -9 $$"
    )
    result = _exec(daemon, "exec-reg", "--", "sh", "-c", child)
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    config, end = json.JSONDecoder().raw_decode(result.stdout)
    assert config == {"credHelpers": {"127.0.0.1:5999": "broker"}}
    answer = json.loads(result.stdout[end:])
    assert answer["Username"] == "olga" and answer["Secret"] == "registry-Secret-1"
    env = json.loads(seen.read_text())
    temp = Path(env["DOCKER_CONFIG"]).parent
    assert env["PATH"].startswith(str(temp / "bin"))
    assert not temp.exists(), f"{temp} left behind"
    # --env-only: the static credential in the temp config's auths, also removed.
    result = _exec(
        daemon, "exec-reg", "--env-only", "--", "sh", "-c",
        'cat "$DOCKER_CONFIG/config.json"; echo "$DOCKER_CONFIG" >&2; kill -9 $$',
    )  # fmt: skip
    assert result.returncode == 137
    auths = json.loads(result.stdout)["auths"]["127.0.0.1:5999"]["auth"]
    assert auths and not Path(result.stderr.strip()).exists()


# -- refusals --------------------------------------------------------------------------


def test_clear_errors_and_no_child(daemon: Daemon, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = _exec(daemon, "no-such-connector", "--", "touch", str(marker))
    assert result.returncode == 1, result.stderr
    assert result.stderr == "error: no connector 'no-such-connector' (or none you may use)\n"
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "field", "message"),
    [
        (["x", "--restart-on-change", "--", "true"], "restart_on_change",
         "--restart-on-change needs --env-only"),
        (["x", "--bogus", "--", "true"], "--bogus", "no such option --bogus"),
        (["x", "--env-only", "--restart-on-change", "--stop-signal", "NOPE", "--", "true"],
         "stop_signal", "--stop-signal 'NOPE' is not a signal name or number"),
        (["x", "--env-only", "--restart-on-change", "--stop-grace", "-1", "--", "true"],
         "stop_grace", "--stop-grace '-1' must be seconds between 0 and 3600"),
        (["x", "--stop-signal", "TERM", "--", "true"], "stop_signal",
         "apply with --restart-on-change only"),
        (["x", "--env-only", "--ttl", "1h", "--", "true"], "ttl", "--ttl applies to the default"),
        (["x", "--resource-id"], "--resource-id", "option --resource-id needs a value"),
        (["x"], "command", "CMD is missing"),
        (["x", "--"], "command", "CMD is missing"),
        ([], "name", "NAME is missing"),
    ],
)  # fmt: skip
def test_bad_command_lines_name_the_option(args: list[str], field: str, message: str) -> None:
    from broker.cli.exec_run import parse
    from broker.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as caught:
        parse(args)
    assert caught.value.field == field and message in caught.value.message


def test_command_lines_parsed() -> None:
    from broker.cli.exec_run import parse

    opts = parse(["-r", "s3-bucket", "n", "--resource-id=b", "aws", "s3", "--help"])
    assert opts is not None
    assert (opts.name, opts.resource_type, opts.resource_id) == ("n", "s3-bucket", "b")
    assert opts.command == ["aws", "s3", "--help"]  # the child's, from its first word
    opts = parse(["n", "--env-only", "--restart-on-change", "--stop-signal", "hup",
                  "--stop-grace", "2.5", "--", "--odd-name", "-x"])  # fmt: skip
    assert opts is not None and opts.command == ["--odd-name", "-x"]
    assert (opts.stop_signal, opts.stop_grace) == (signal.SIGHUP, 2.5)
    assert parse(["n", "--help", "--", "x"]) is None  # typer prints the help


def test_help_is_typers(daemon: Daemon) -> None:
    result = _exec(daemon, "--help")
    assert result.returncode == 0, result.stderr
    assert "--env-only" in result.stdout and "--restart-on-change" in result.stdout


# -- kubernetes: the exec plugin by default, a static token with --env-only ---------------


KUBE_TOKEN = "exec-kube-Token-1"


def test_kubectl_through_the_exec_plugin_and_a_static_kubeconfig(
    daemon: Daemon, tmp_path: Path
) -> None:
    from broker.api.v1 import broker_pb2 as pb
    from tests.servers.kube_api import KubeApiServer

    with KubeApiServer(tokens={KUBE_TOKEN: "exec-user"}) as kube:
        with daemon.stub() as stub:
            stub.RegisterConnector(
                pb.RegisterConnectorRequest(
                    name="exec-k8s", connector_type="kubernetes", auth_method="token",
                    config={"server": kube.url, "certificate_authority": kube.ca_pem,
                            "token": KUBE_TOKEN},
                ),
                timeout=30,
            )  # fmt: skip
        for extra, seen in ([], "plugin.json"), (["--env-only"], "static.json"):
            child = (
                f'echo "$KUBECONFIG" >&2; cp "$KUBECONFIG" {tmp_path / seen};'
                " exec kubectl get --raw /version"
            )
            before = kube.count(200)
            result = _exec(daemon, "exec-k8s", *extra, "--", "sh", "-c", child)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["gitVersion"], result.stdout
            assert kube.count(200) > before and "exec-user" in kube.users
            kubeconfig = Path(result.stderr.strip().splitlines()[0])
            assert not kubeconfig.exists()
    # Each mode's kubeconfig, as the child saw it: the plugin, or the token itself.
    plugin = json.loads((tmp_path / "plugin.json").read_text())
    assert plugin["users"][0]["user"]["exec"]["command"].endswith("broker-kubectl-credential")
    assert KUBE_TOKEN not in json.dumps(plugin)
    static = json.loads((tmp_path / "static.json").read_text())
    assert static["users"][0]["user"]["token"] == KUBE_TOKEN


COUNT_SIGINT = """
import os, signal, sys
if sys.argv[1] == "own-group":
    os.setpgid(0, 0)  # out of the terminal's foreground group: only a forwarded copy comes
# Taken one by one with their si_code, so a second copy is not merged into the first.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
print("ready", flush=True)
codes = []
first_wait = 0.7 if sys.argv[1] == "own-group" else 20
while (info := signal.sigtimedwait({signal.SIGINT}, 0.7 if codes else first_wait)) is not None:
    codes.append(info.si_code)
print("codes", codes, flush=True)
sys.exit(3)
"""
SI_KERNEL = 0x80


def _ctrl_c_at_a_terminal(daemon: Daemon, aws: str, group: str) -> bytes:
    """broker exec on a pty (session leader, the pty its controlling terminal), Ctrl-C
    typed once the child is ready; what the child printed."""
    import pty

    argv = [*BROKER, "exec", aws, "--", sys.executable, "-c", COUNT_SIGINT, group]
    env = _env(daemon)
    pid, master = pty.fork()
    if pid == 0:
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    output = b""
    try:

        def read_until(marker: bytes) -> None:
            nonlocal output
            while marker not in output:
                chunk = os.read(master, 1024)
                assert chunk, output
                output += chunk

        read_until(b"ready")
        os.write(master, b"\x03")  # the line discipline sends SIGINT to the foreground group
        read_until(b"]")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3, output
    return output


def test_ctrl_c_at_a_terminal_is_the_terminals_not_forwarded_again(
    daemon: Daemon, aws: str
) -> None:
    """The terminal signals the whole foreground process group: the child has it from
    there, so broker exec (which forwards signals other processes send) sends none."""
    # The child in the group gets the terminal's (SI_KERNEL) SIGINT ...
    assert f"codes [{SI_KERNEL}]".encode() in _ctrl_c_at_a_terminal(daemon, aws, "same"), aws
    # ... and a child outside it gets none from broker exec.
    assert b"codes []" in _ctrl_c_at_a_terminal(daemon, aws, "own-group")


def test_the_child_inherits_dispositions_and_no_mask(daemon: Daemon, aws: str) -> None:
    """As after a shell's exec: what was ignored stays ignored (nohup), nothing is blocked
    (broker exec blocks what it waits for; the child must not), SIGPIPE is default."""
    argv = " ".join([*BROKER, "exec", aws, "--", "cat", "/proc/self/status"])
    result = subprocess.run(
        ["sh", "-c", f"trap '' HUP; exec {argv}"],
        capture_output=True,
        text=True,
        env=_env(daemon),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    status = dict(line.split(":\t", 1) for line in result.stdout.splitlines() if ":\t" in line)
    ignored, blocked = int(status["SigIgn"], 16), int(status["SigBlk"], 16)
    assert blocked == 0
    assert ignored & (1 << (signal.SIGHUP - 1))  # nohup-style: kept
    assert not ignored & (1 << (signal.SIGPIPE - 1))  # Python's own: undone
    assert not ignored & (1 << (signal.SIGTERM - 1))
