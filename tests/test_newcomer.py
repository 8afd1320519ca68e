"""A newcomer's first session: a fresh `git clone`, `make run` in the background, then the
README's walk-through from another directory, with SIGINT ignored throughout (as in a
backgrounded non-interactive shell, or CI).

The clone shares this suite's venv instead of building its own: `make install` from
nothing takes minutes here (pip resolving and unpacking grpcio, moto, azure...), against
a budget of about a minute for the whole test. `.venv` in the clone is a link to this
venv; git stamps every file of a clone with the time of the clone, so pyproject.toml and
constraints.txt get an old time and make sees the venv as installed, as it would in a
clone that ran `make install` before. PYTHONPATH puts the clone's own `broker` ahead of
the venv's editable install, so the daemon and the CLI that run are the clone's code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.servers.moto import MotoServer, moto_for_test
from tests.walkthrough import blocks, check, local_world, run, user_env

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


def _clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=60)
    (dest / ".venv").symlink_to(VENV)
    for name in ("pyproject.toml", "constraints.txt"):
        os.utime(dest / name, (0, 0))
    return dest


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_ready(proc: subprocess.Popen[bytes], socket: Path, log: Path) -> None:
    """Until `make run`'s daemon answers (real time: it starts in about a second)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"make run exited {proc.returncode}:\n{log.read_text()}")
        if socket.exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"make run did not start the daemon in 60 s:\n{log.read_text()}")


def test_a_fresh_clone_make_run_and_the_walkthrough(tmp_path: Path, moto: MotoServer) -> None:
    clone = _clone(tmp_path / "credential-broker")
    home = tmp_path / "home"
    home.mkdir()
    with local_world(tmp_path / "world", moto) as world:
        env = user_env(home, world, {"PYTHONPATH": str(clone)})
        log = tmp_path / "make-run.log"
        with log.open("wb") as out:
            make = subprocess.Popen(
                ["make", "run"],
                cwd=clone,
                env={**env, **world.daemon_env},
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_ignore_sigint,
                start_new_session=True,  # its own group: make and the daemon stop together
            )
        try:
            _wait_ready(make, clone / ".broker" / "broker.sock", log)
            result = run(blocks((clone / "README.md").read_text()), cwd=clone, env=env)
            check(result, world)
            # The daemon that answered is `make run`'s, on the clone's data directory, and
            # the code that runs is the clone's.
            status = subprocess.run(
                [str(clone / ".venv/bin/broker"), "status", "-o", "json"],
                env=env,
                cwd=home,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert json.loads(status.stdout)["store"] == "sqlite:.broker/broker.db"
            pointer = home / "run" / "credential-broker" / "socket"
            assert pointer.read_text().strip() == str(clone / ".broker" / "broker.sock")
            code = subprocess.run(
                [str(clone / ".venv/bin/python"), "-c", "import broker; print(broker.__file__)"],
                env=env,
                cwd=home,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert code.stdout.strip() == str(clone / "broker" / "__init__.py")
        finally:
            os.killpg(make.pid, signal.SIGTERM)  # SIGINT is ignored, as the test wants
            try:
                make.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait()
        text = log.read_text()
        assert "Traceback" not in text, text
        assert "pip install" not in text  # the shared venv counted as installed


def test_every_builtin_connector_type_is_registered_as_an_entry_point() -> None:
    """pyproject registers the built-in types the way a plugin registers its own; the
    registry's BUILTIN table (for an uninstalled source tree) names the same ones."""
    import tomllib
    from importlib.metadata import entry_points

    from broker.providers.registry import BUILTIN, ENTRY_POINT_GROUP

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][ENTRY_POINT_GROUP] == BUILTIN
    installed = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert {k: installed.get(k) for k in BUILTIN} == BUILTIN
    assert project["license"] == "Apache-2.0"  # an SPDX string: no setuptools warning


def test_config_show_is_the_running_daemons_view(tmp_path: Path) -> None:
    """The daemon's environment and flags, not the CLI's; --local is this shell's view."""
    from tests.daemon import running_daemon

    config = tmp_path / "broker.toml"
    config.write_text("cache_max_entries = 12\ncache_idle_seconds = 30\n")
    env = {"BROKER_CACHE_IDLE_SECONDS": "45"}
    with running_daemon(tmp_path / "data", "--config", str(config), env=env) as daemon:
        shown = daemon.cli_json("config", "show")
        table = daemon.cli("config", "show").stdout
        local = daemon.cli_json("config", "show", "--local")
        as_yaml = yaml.safe_load(daemon.cli("config", "show", "--output", "yaml").stdout)
    assert as_yaml == shown
    assert shown["cache_max_entries"] == 12  # the daemon's file
    assert shown["cache_idle_seconds"] == 45.0  # its environment beats its file
    assert shown["log_level"] == "debug"  # its flag (tests/daemon.py) beats both
    assert f"(file {config})" in " ".join(table.split())
    assert local["cache_max_entries"] == 10000 and local["log_level"] == "info"
