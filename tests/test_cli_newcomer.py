"""What a new user meets on the command line: secrets from stdin and the warning for
inline ones, and `broker login kubernetes` saying when it switches current-context."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.daemon import BROKER, Daemon, running_daemon

SECRET = "Inline-Secret-4417"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("newcomer-home")
    with running_daemon(home / "data", env={"HOME": str(home)}) as d:
        yield d


def _cli(daemon: Daemon, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**daemon.env, "BROKER_SOCKET": str(daemon.socket)}
    return subprocess.run(
        [*BROKER, *args], input=stdin, env=env, capture_output=True, text=True, timeout=60
    )


def _register(
    daemon: Daemon, name: str, *attrs: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return _cli(
        daemon,
        "connector",
        "register",
        name,
        "--type",
        "docker",
        "--no-verify",
        "username=u",
        "registry=registry.example:5000",
        *attrs,
        stdin=stdin,
    )


def test_a_secret_given_inline_is_warned_about_and_stdin_is_not(daemon: Daemon) -> None:
    inline = _register(daemon, "inline", f"password={SECRET}")
    assert inline.returncode == 0, inline.stderr
    assert "warning: secret attribute 'password' was given on the command line" in inline.stderr
    assert "password=- (read from stdin) or password=@FILE" in inline.stderr
    assert SECRET not in inline.stderr + inline.stdout
    # The non-secret attributes given inline are no cause for a warning.
    assert inline.stderr.count("warning") == 1

    piped = _register(daemon, "piped", "password=-", stdin=SECRET + "\n")
    assert piped.returncode == 0, piped.stderr
    assert "warning" not in piped.stderr
    shown = daemon.cli_json("connector", "describe", "piped", "--show-secrets")
    assert shown["config"]["password"] == SECRET  # one trailing newline dropped

    updated = _cli(daemon, "connector", "update", "piped", "--no-verify", f"password={SECRET}x")
    assert updated.returncode == 0, updated.stderr
    assert "warning: secret attribute 'password'" in updated.stderr


def test_only_one_attribute_reads_stdin(daemon: Daemon) -> None:
    twice = _register(daemon, "twice", "password=-", "username=-", stdin="a\n")
    assert twice.returncode == 1
    assert "only one attribute can be read from stdin ('password=-' and 'username=-')" in (
        twice.stderr
    )
    assert _cli(daemon, "connector", "describe", "twice").returncode == 1  # nothing stored


def test_login_kubernetes_says_when_it_switches_the_current_context(
    daemon: Daemon, tmp_path: Path
) -> None:
    registered = _cli(
        daemon,
        "connector",
        "register",
        "kube",
        "--type",
        "kubernetes",
        "--auth-method",
        "token",
        "--no-verify",
        "server=https://127.0.0.1:1",
        "token=-",
        "insecure=true",
        "cluster_name=dev",
        stdin="kube-token\n",
    )
    assert registered.returncode == 0, registered.stderr
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({"apiVersion": "v1", "current-context": "prod"}))

    def login(*extra: str) -> str:
        result = _cli(
            daemon, "login", "kubernetes", "kube", "--kubeconfig", str(kubeconfig), *extra
        )
        assert result.returncode == 0, result.stderr
        return " ".join(result.stdout.split())

    def current() -> str:
        return str(yaml.safe_load(kubeconfig.read_text())["current-context"])

    kept = login("--no-set-current")
    assert current() == "prod"
    assert "current-context stays 'prod': use `kubectl --context broker-kube-dev`" in kept
    switched = login()
    assert current() == "broker-kube-dev"
    assert "current-context switched from 'prod' to 'broker-kube-dev'" in switched
    assert "`kubectl config use-context prod`" in switched
    again = login()
    assert "current-context is 'broker-kube-dev' (unchanged)" in again
