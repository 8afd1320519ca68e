"""File outputs in process: the [[outputs]] validation, every format's bytes, the sandbox,
the atomic writer's order (mode and owner before the first byte), and the runner's
rules (one write and one hook per change, none for an identical credential, failures
retried with backoff on an injected clock)."""

from __future__ import annotations

import base64
import configparser
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from broker.app.values import Issued, IssuedEvent
from broker.clock import FakeClock
from broker.config import load_settings
from broker.errors import InvalidArgument
from broker.identity.principal import Principal
from broker.model import ClientCredential, Connector
from broker.outputs import formats, writer
from broker.outputs.manager import OutputManager
from broker.outputs.settings import OutputSpec, parse_outputs

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _aws(key: str = "ASIAEXAMPLE1") -> ClientCredential:
    return ClientCredential(
        connector_type="aws",
        auth_method="sts-token",
        resource_type="aws-generic",
        resource_id="123456789012",
        config={
            "region": "eu-west-1",
            "aws_access_key_id": key,
            "aws_secret_access_key": "secret/Value+1",
            "aws_session_token": "session-token",
        },
        secret_names=frozenset({"aws_secret_access_key", "aws_session_token"}),
        expires_at=NOW + timedelta(hours=1),
        issued_at=NOW,
    )


def _gcp() -> ClientCredential:
    return ClientCredential(
        "gcp",
        "oauth2-token",
        "gcp-generic",
        "proj",
        {"token": "ya29.tok", "project_id": "proj"},
        frozenset({"token"}),
        expires_at=NOW + timedelta(hours=1),
    )


# -- settings ----------------------------------------------------------------------


def _parse(**over: Any) -> OutputSpec:
    table = {"connector": "c", "format": "json", "path": "/tmp/x/out.json", **over}
    return parse_outputs([table], "test.toml")[0]


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"format": "xml"}, "outputs[0].format"),
        ({"path": "relative/out"}, "outputs[0].path"),
        ({"mode": "0666"}, "outputs[0].mode"),
        ({"mode": "rw"}, "outputs[0].mode"),
        ({"mode": "0200"}, "outputs[0].mode"),
        ({"owner": "no-such-user-here"}, "outputs[0].owner"),
        ({"group": "no-such-group-here"}, "outputs[0].group"),
        ({"on_change": "systemctl reload app"}, "outputs[0].on_change"),
        ({"on_change": []}, "outputs[0].on_change"),
        ({"on_change_timeout_seconds": 0}, "outputs[0].on_change_timeout_seconds"),
        ({"signal": "SIGNOPE", "pid_file": "/run/x.pid"}, "outputs[0].signal"),
        ({"signal": "HUP"}, "outputs[0].pid_file"),
        ({"profile": "p"}, "outputs[0].profile"),
        ({"format": "template"}, "outputs[0].template"),
        ({"format": "template", "template": "{% if %}"}, "outputs[0].template"),
        ({"colour": "red"}, "outputs[0].colour"),
        ({"connector": ""}, "outputs[0].connector"),
    ],
)
def test_bad_output_tables_are_refused_naming_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        _parse(**over)
    assert err.value.field == field
    assert field in err.value.message


def test_output_tables_parse_with_defaults_and_from_the_config_file(tmp_path: Path) -> None:
    spec = _parse(signal="hup", pid_file="/run/app.pid", mode="0640", owner="0", group="root")
    assert (spec.mode, spec.uid, spec.gid, spec.signal.name if spec.signal else None) == (
        0o640,
        0,
        0,
        "SIGHUP",
    )
    assert _parse().mode == 0o600
    config = tmp_path / "broker.toml"
    config.write_text(
        "log_level = 'info'\n"
        "[[outputs]]\nconnector = 'a'\nformat = 'env'\npath = '/tmp/a.env'\n"
        "[[outputs]]\nconnector = 'b'\nformat = 'aws-credentials'\npath = '/tmp/b'\n"
        "profile = 'prod'\non_change = ['true']\n"
    )
    settings = load_settings(config, env={})
    assert [(o.index, o.connector, o.profile) for o in settings.outputs] == [
        (0, "a", "default"),
        (1, "b", "prod"),
    ]
    config.write_text(
        "[[outputs]]\nconnector = 'a'\nformat = 'env'\npath = '/tmp/a.env'\n"
        "[[outputs]]\nconnector = 'b'\nformat = 'json'\npath = '/tmp/a.env'\n"
    )
    with pytest.raises(InvalidArgument) as err:
        load_settings(config, env={})
    assert err.value.field == "outputs[1].path"


# -- formats -----------------------------------------------------------------------


def test_aws_credentials_env_and_json_formats() -> None:
    text = formats.render("aws-credentials", "prod", _aws(), profile="app").decode()
    ini = configparser.RawConfigParser()
    ini.read_string(text)
    assert dict(ini["app"]) == {
        "aws_access_key_id": "ASIAEXAMPLE1",
        "aws_secret_access_key": "secret/Value+1",
        "aws_session_token": "session-token",
        "region": "eu-west-1",
    }
    env = formats.render("env", "prod", _aws()).decode().splitlines()
    assert "AWS_SECRET_ACCESS_KEY=secret/Value+1" in env
    assert "AWS_CREDENTIAL_EXPIRATION=2026-01-01T13:00:00Z" in env
    assert "AWS_REGION=eu-west-1" in env
    gcp_env = formats.render("env", "g", _gcp()).decode()
    assert "GOOGLE_OAUTH_ACCESS_TOKEN=ya29.tok\n" in gcp_env
    assert "CLOUDSDK_AUTH_ACCESS_TOKEN=ya29.tok\n" in gcp_env
    data = json.loads(formats.render("json", "prod", _aws()))
    assert data["connector"] == "prod" and data["expires_at"] == "2026-01-01T13:00:00Z"
    assert data["config"]["aws_secret_access_key"] == "secret/Value+1"
    assert formats.render("gcp-access-token", "g", _gcp()) == b"ya29.tok"


def test_formats_refuse_the_wrong_kind_of_credential() -> None:
    for fmt in ("aws-credentials", "docker-config", "kubeconfig"):
        with pytest.raises(formats.RenderError) as err:
            formats.render(fmt, "g", _gcp())
        assert "gives a credential of type gcp" in err.value.message
        assert "ya29" not in err.value.message
    with pytest.raises(formats.RenderError):
        formats.render("gcp-access-token", "prod", _aws())


def test_docker_config_and_kubeconfig() -> None:
    docker = ClientCredential(
        "docker",
        "password",
        "docker-registry",
        "docker.io",
        {"username": "u", "password": "p:w", "registry": "docker.io"},
        frozenset({"password"}),
    )
    auths = json.loads(formats.render("docker-config", "hub", docker))["auths"]
    assert base64.b64decode(auths[formats.DOCKER_HUB_KEY]["auth"]) == b"u:p:w"
    kube = ClientCredential(
        "kubernetes",
        "token",
        "kubernetes-cluster",
        "c1",
        {"server": "https://k:6443", "certificate_authority": "PEM\n", "token": "t0k"},
        frozenset({"token"}),
    )
    doc = yaml.safe_load(formats.render("kubeconfig", "k8s", kube))
    assert doc["current-context"] == "k8s"
    assert doc["users"][0]["user"] == {"token": "t0k"}
    cluster = doc["clusters"][0]["cluster"]
    assert base64.b64decode(cluster["certificate-authority-data"]) == b"PEM\n"


def test_template_renders_the_credential_fields_only() -> None:
    text = "{{ connector }}|{{ config.aws_access_key_id }}|{{ config.region | b64encode }}\n"
    out = formats.render("template", "prod", _aws(), template=text).decode()
    assert out == f"prod|ASIAEXAMPLE1|{base64.b64encode(b'eu-west-1').decode()}\n"
    for missing in (
        "{{ range(3) | list }}",
        "{{ lipsum() }}",
        "{{ settings }}",
        "{{ config.aws_secret_access_key | int + [] }}",
        "{{ config.aws_secret_access_key.encode('idna').decode('ascii') | float / 0 }}",
    ):
        with pytest.raises(formats.RenderError) as err:
            formats.render("template", "prod", _aws(), template=missing)
        assert "secret/Value" not in err.value.message


@pytest.mark.parametrize(
    "escape",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ config.__class__.__init__.__globals__ }}",
        "{{ connector.format.__globals__ }}",
        "{% set x = config.update({'a': 1}) %}{{ x }}",
    ],
)
def test_template_sandbox_escape_is_refused(escape: str) -> None:
    with pytest.raises(formats.RenderError) as err:
        formats.render("template", "prod", _aws(), template=escape)
    assert "refused" in err.value.message or "failed" in err.value.message
    assert "secret/Value" not in err.value.message


# -- the writer -------------------------------------------------------------------


def test_write_atomic_sets_mode_and_owner_before_the_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "cred"
    target.write_text("old")
    target.chmod(0o644)
    seen: list[tuple[int, int, int, int]] = []
    real_write = os.write

    def spying_write(fd: int, data: Any) -> int:
        info = os.fstat(fd)
        seen.append((stat.S_IMODE(info.st_mode), info.st_size, info.st_uid, info.st_gid))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spying_write)
    # Root (CI) may give the file to anyone: another owner and group than its own.
    uid, gid = (4242, 4343) if os.getuid() == 0 else (os.getuid(), os.getgid())
    writer.write_atomic(target, b"new secret", mode=0o640, uid=uid, gid=gid)
    assert seen[0] == (0o640, 0, uid, gid)  # before any byte: final mode and owner
    assert target.read_bytes() == b"new secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["cred"]  # no temp file left


def test_write_atomic_failure_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(OSError):
        writer.write_atomic(tmp_path / "missing-dir" / "cred", b"x")
    target = tmp_path / "cred"
    target.write_text("old")

    def full_disk(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        writer.write_atomic(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["cred"]


# -- the runner, on an injected clock -------------------------------------------------


class FakeWatch:
    """Stands in for the issuer's watch: the test publishes the events a renewal produces
    to every output watching (the cache's hub does that)."""

    def __init__(self) -> None:
        self.streams: list[Any] = []
        self.principals: list[Principal] = []

    def __call__(
        self,
        name: str,
        resource_type: str | None = None,
        resource_id: str | None = None,
        *,
        principal: Principal,
    ) -> AsyncIterator[IssuedEvent]:
        self.principals.append(principal)
        send, receive = anyio.create_memory_object_stream[IssuedEvent](10)
        self.streams.append(send)
        return self._events(receive)

    async def _events(self, receive: Any) -> AsyncIterator[IssuedEvent]:
        async with receive:
            async for event in receive:
                yield event

    async def publish(self, event: IssuedEvent) -> None:
        for stream in self.streams:
            await stream.send(event)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()


CONNECTOR = Connector(
    id="id-1",
    name="prod",
    connector_type="aws",
    auth_method="sts-token",
    config={},
    resource_type=None,
    resource_id=None,
    labels={},
    expiration_seconds=None,
    expires_at=None,
    created_at=NOW,
    updated_at=NOW,
    revision=1,
)


def _issued(kind: str, credential: ClientCredential) -> IssuedEvent:
    return IssuedEvent(kind, Issued(CONNECTOR, credential))  # type: ignore[arg-type]


async def _settle(condition: Any, clock: FakeClock | None = None) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.01)
            if clock is not None and clock.sleepers:
                await clock.advance(1.5)


@pytest.mark.anyio
async def test_runner_writes_and_hooks_once_per_change_never_for_a_repeat(tmp_path: Path) -> None:
    log = tmp_path / "hook.log"
    hook = ["/bin/sh", "-c", f'cat "$BROKER_OUTPUT_PATH" >> {log}; echo >> {log}']
    spec = OutputSpec(0, "prod", "aws-credentials", tmp_path / "creds", on_change=tuple(hook))
    watch, clock = FakeWatch(), FakeClock(NOW)
    manager = OutputManager([spec], watch, clock, env=dict(os.environ))
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        await watch.publish(_issued("issued", _aws("KEY1")))
        await _settle(lambda: manager.states()[0].hook_runs == 1)
        again = replace(_aws("KEY1"))  # another object, the same credential
        await watch.publish(_issued("renewed", again))
        await watch.publish(_issued("renewed", _aws("KEY2")))
        await _settle(lambda: manager.states()[0].hook_runs == 2)
        await watch.publish(_issued("renewed", _aws("KEY2")))
        await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    watch.close()
    state = manager.states()[0]
    assert (state.writes, state.hook_runs, state.last_error) == (2, 2, None)
    assert log.read_text().count("aws_access_key_id") == 2
    assert "KEY1" in log.read_text() and "KEY2" in (tmp_path / "creds").read_text()
    assert watch.principals[0].selectors >= {f"uid:{os.getuid()}"}
    assert "via output outputs[0]" in watch.principals[0].label


@pytest.mark.anyio
async def test_runner_failures_are_counted_shown_and_retried(tmp_path: Path) -> None:
    target = tmp_path / "later" / "creds.json"
    flag = tmp_path / "hook-ok"
    hook = ["/bin/sh", "-c", f"test -e {flag}"]
    specs = [
        OutputSpec(0, "prod", "json", target),
        OutputSpec(1, "prod", "json", tmp_path / "b.json", on_change=tuple(hook)),
        OutputSpec(2, "prod", "kubeconfig", tmp_path / "c.yaml"),
    ]
    watch, clock = FakeWatch(), FakeClock(NOW)
    manager = OutputManager(specs, watch, clock, env=dict(os.environ))
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        await watch.publish(_issued("issued", _aws("KEY1")))
        await _settle(lambda: len(manager.failing()) == 3)
        reason = manager.degraded_reason()
        assert reason is not None and "outputs[0]" in reason and "and 2 more" in reason
        assert "cannot write" in (manager.states()[0].last_error or "")
        assert "exited with 1" in (manager.states()[1].last_error or "")
        assert "needs a kubernetes credential" in (manager.states()[2].last_error or "")
        target.parent.mkdir()
        flag.touch()
        await _settle(lambda: len(manager.failing()) == 1, clock)  # backoff on the fake clock
        tg.cancel_scope.cancel()
    watch.close()
    stats = manager.stats()
    assert stats["output_write_failures"] >= 2 and stats["output_hook_failures"] >= 1
    assert json.loads(target.read_text())["config"]["aws_access_key_id"] == "KEY1"
    assert manager.states()[1].hook_runs >= 2 and manager.states()[1].writes == 1
    assert all("secret/Value" not in (s.last_error or "") for s in manager.states())


SIGNAL_CHILD = """
import pathlib, signal, sys, time
got = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGUSR1, lambda *_: got.write_text(got.read_text() + "usr1\\n"))
got.write_text("")
while True:
    time.sleep(0.05)
"""


@pytest.mark.anyio
async def test_signal_goes_to_the_pid_file_once_per_change_and_hooks_time_out(
    tmp_path: Path,
) -> None:
    got, pid_file = tmp_path / "got", tmp_path / "app.pid"
    child = await anyio.open_process([sys.executable, "-I", "-c", SIGNAL_CHILD, str(got)])
    try:
        with anyio.fail_after(10):
            while not got.exists():
                await anyio.sleep(0.02)
        pid_file.write_text(f"{child.pid}\n")
        specs = [
            OutputSpec(0, "prod", "env", tmp_path / "a.env", signal=signal.SIGUSR1,
                       pid_file=pid_file),
            OutputSpec(1, "prod", "env", tmp_path / "b.env", on_change=("sleep", "5"),
                       on_change_timeout_seconds=0.2),
            OutputSpec(2, "prod", "env", tmp_path / "c.env", signal=signal.SIGUSR1,
                       pid_file=tmp_path / "gone.pid"),
        ]  # fmt: skip
        watch = FakeWatch()
        manager = OutputManager(specs, watch, FakeClock(NOW), env=dict(os.environ))
        async with anyio.create_task_group() as tg:
            await tg.start(manager.run)
            await watch.publish(_issued("issued", _aws("KEY1")))
            await watch.publish(_issued("renewed", _aws("KEY1")))  # identical: no signal
            await _settle(lambda: len(manager.failing()) == 2 and got.read_text() == "usr1\n")
            await watch.publish(_issued("renewed", _aws("KEY2")))
            await _settle(lambda: got.read_text() == "usr1\nusr1\n")
            tg.cancel_scope.cancel()
        watch.close()
        states = manager.states()
        assert "timed out after 0.2s" in (states[1].last_error or "")
        assert "cannot read pid_file" in (states[2].last_error or "")
        assert states[0].last_error is None and states[0].writes == 2
    finally:
        child.kill()
        await child.aclose()


@pytest.mark.anyio
async def test_a_renewal_is_written_before_the_old_margin_and_late_ones_are_counted(
    tmp_path: Path,
) -> None:
    """On an injected clock: a credential arriving before the previous one's margin is
    written at once (no lateness); one that can only be written after the margin (its
    directory appears late) is counted as a late write."""
    clock = FakeClock(NOW)
    target = tmp_path / "d" / "creds"
    (tmp_path / "d").mkdir()
    watch = FakeWatch()
    manager = OutputManager(
        [OutputSpec(0, "prod", "aws-credentials", target)], watch, clock, env={}
    )

    def credential(key: str, issued: datetime) -> ClientCredential:
        return replace(_aws(key), issued_at=issued, expires_at=issued + timedelta(hours=1))

    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        await watch.publish(_issued("issued", credential("KEY1", clock.now())))
        await _settle(lambda: manager.states()[0].writes == 1)
        # AWS margin 15 min: the margin of KEY1 is at +45 min; renew at +35 min.
        await clock.advance(35 * 60)
        await watch.publish(_issued("renewed", credential("KEY2", clock.now())))
        await _settle(lambda: manager.states()[0].writes == 2)
        state = manager.states()[0]
        assert state.last_lead_seconds == 10 * 60  # written at once, 10 min before the margin
        assert manager.stats()["output_late_writes"] == 0
        assert state.margin_at == clock.now() + timedelta(minutes=45)
        # KEY3 arrives before KEY2's margin but its directory is gone until after it.
        (tmp_path / "d").rename(tmp_path / "away")
        await clock.advance(40 * 60)
        await watch.publish(_issued("renewed", credential("KEY3", clock.now())))
        await _settle(lambda: manager.states()[0].write_failures >= 1)
        await clock.advance(10 * 60)  # past KEY2's margin (+45 min)
        (tmp_path / "away").rename(tmp_path / "d")
        await _settle(lambda: manager.states()[0].writes == 3, clock)
        tg.cancel_scope.cancel()
    watch.close()
    assert manager.stats()["output_late_writes"] == 1
    assert (manager.states()[0].last_lead_seconds or 0) < 0
    assert "KEY3" in target.read_text()
