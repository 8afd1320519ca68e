"""The README's "First ten minutes", run as written, so it can never drift from what works.

The blocks run in one shell from the reader's home directory (not the repository),
against a daemon started on its own data directory; the venv is on PATH only because
the first block activates it. Also: `broker login docker` refuses to write a
credHelpers entry docker could not resolve, and --install-helper fixes that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.servers.moto import MotoServer, moto_for_test
from tests.walkthrough import World, blocks, check, local_world, run, user_env

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


@pytest.fixture
def world(tmp_path: Path, moto: MotoServer) -> Iterator[World]:
    with local_world(tmp_path / "world", moto) as w:
        yield w


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def daemon(tmp_path: Path, home: Path, world: World) -> Iterator[Daemon]:
    """The daemon `make run` starts, on a data dir of its own; it writes the pointer
    files into the reader's runtime dir, which is how the CLI finds it from ~."""
    env = user_env(home, world, world.daemon_env)
    with running_daemon(tmp_path / "data", env=env) as d:
        yield d


def test_the_walkthrough_works_as_written(home: Path, world: World, daemon: Daemon) -> None:
    steps = blocks()
    assert steps[0].lstrip().startswith(". .venv/bin/activate")
    result = run(steps, cwd=REPO, env=user_env(home, world))
    check(result, world)


def test_blocks_are_found_in_order() -> None:
    text = "x\n<!-- walkthrough -->\n```sh\necho 1\n```\n```sh\nnot me\n```\n"
    text += "<!-- walkthrough -->\n```sh\necho 2\n```\n"
    assert blocks(text) == ["echo 1\n", "echo 2\n"]


def _login(home: Path, world: World, path: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = user_env(home, world, {"PATH": path})
    return subprocess.run(
        [str(BIN / "broker"), "login", "docker", "reg", *extra],
        env=env,
        cwd=REPO,  # where a relative PATH entry like .venv/bin finds the helper
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_login_docker_needs_the_helper_on_path(home: Path, world: World, daemon: Daemon) -> None:
    env = user_env(home, world)
    register = subprocess.run(
        [
            *(str(BIN / "broker"), "connector", "register", "reg", "--type", "docker"),
            f"registry={world.env['REGISTRY']}",
            f"username={world.env['REGISTRY_USER']}",
            "password=-",
        ],
        input=Path(world.env["REGISTRY_PASSWORD_FILE"]).read_text(),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert register.returncode == 0, register.stderr
    assert "warning" not in register.stderr
    config = home / ".docker" / "config.json"
    system = "/usr/local/bin:/usr/bin:/bin"

    # Not on PATH (the README's `.venv/bin/broker` route): refused, nothing written.
    refused = _login(home, world, system)
    assert refused.returncode == 1
    assert "docker-credential-broker from PATH, and it is not on PATH" in refused.stderr
    assert f"put {BIN} on PATH" in refused.stderr and "--install-helper" in refused.stderr
    assert not config.exists()
    # A relative PATH entry is what Go refuses ("resolves to executable in current
    # directory"): refused too.
    relative = _login(home, world, f"{BIN.relative_to(REPO)}:{system}")
    assert relative.returncode == 1, relative.stderr
    assert "in a relative PATH entry ('.venv/bin')" in relative.stderr
    assert not config.exists()

    # --install-helper DIR, DIR on PATH: a link, then the entry; skopeo resolves it.
    linkdir = home / "bin"
    done = _login(home, world, f"{linkdir}:{system}", "--install-helper", str(linkdir))
    assert done.returncode == 0, done.stderr
    assert (linkdir / "docker-credential-broker").resolve() == (
        BIN / "docker-credential-broker"
    ).resolve()
    assert json.loads(config.read_text())["credHelpers"] == {world.env["REGISTRY"]: "broker"}
    inspect = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{world.image}"],
        env=user_env(home, world, {"PATH": f"{linkdir}:{system}"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert '"Digest": "sha256:' in inspect.stdout
    # Without the helper on PATH skopeo fails: the check above is the one that matters.
    failed = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{world.image}"],
        env=user_env(home, world, {"PATH": system}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode != 0
    assert "docker-credential-broker" in failed.stderr


def test_verify_an_empty_type_is_none_found_unless_the_connector_is_scoped_to_it(
    home: Path, world: World, daemon: Daemon
) -> None:
    """moto's account has no EKS cluster and no bucket: healthy for a multi-type connector
    (exit 0, "none found"), of no use for one scoped to EKS clusters (exit 1)."""
    env = user_env(home, world, {"PATH": f"{BIN}:/usr/bin:/bin"})
    keys = [
        "region=us-east-1",
        f"endpoint_url={world.env['AWS_ENDPOINT']}",
        f"aws_access_key_id={world.env['AWS_KEY_ID']}",
        f"aws_secret_access_key=@{world.env['AWS_SECRET_FILE']}",
    ]

    def broker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["broker", *args], env=env, capture_output=True, text=True, timeout=60
        )

    register = ["connector", "register", "--type", "aws", "--auth-method", "secret-key"]
    assert broker(*register[:2], "all-aws", *register[2:], *keys).returncode == 0
    verified = broker("connector", "verify", "all-aws", "--output", "json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    by_type = {r["resource_type"]: r for r in json.loads(verified.stdout)}
    assert by_type["kubernetes-cluster"] == {
        "connector": "all-aws",
        "connector_type": "aws",
        "resource_type": "kubernetes-cluster",
        "resource_ids": [],
        "error": None,
    }
    table = broker("connector", "verify", "all-aws")
    assert table.returncode == 0 and "none found" in table.stdout and "error" not in table.stdout

    scoped = [*register[:2], "eks-only", *register[2:], "-r", "kubernetes-cluster", "--no-verify"]
    assert broker(*scoped, *keys).returncode == 0
    failed = broker("connector", "verify", "eks-only", "--output", "json")
    assert failed.returncode == 1
    [result] = json.loads(failed.stdout)
    assert result["error"] == "no resources reachable with these credentials"
