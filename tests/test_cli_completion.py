"""Shell completion: `broker completion bash|zsh|fish` and `broker __complete`.

- The tree completion walks (broker/cli/cli_tree.py) is the typer app's, regenerated.
- Commands, options and option values complete from it; connector names from a real
  daemon, through a real bash running the printed script.
- Completing loads neither typer, click, rich, grpc nor yaml, and answers fast: its
  time is measured against a running daemon (median of 5 processes) and printed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.api.v1 import broker_pb2 as pb
from broker.cli import cli_tree, completion
from broker.cli import main as cli_main
from broker.cli.completion_tree import tree
from tests.daemon import Daemon, running_daemon

BIN = Path(sys.executable).parent


def test_the_tree_is_the_typer_app() -> None:
    assert tree(cli_main.command()) == cli_tree.TREE, "run python -m broker.cli.completion_tree"


def names() -> list[str]:
    return ["prod-registry", "prod-aws", "dev-aws"]


TYPES = ["aws", "azure", "docker", "gcp", "kubernetes"]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ([""], sorted(cli_tree.TREE[""][0])),
        (["conn"], ["connector"]),
        (["connector", "describe"], ["describe", "describe-type"]),
        (["connector", "list", "--ty"], ["--type"]),
        (["connector", "list", "-o", ""], ["table", "json", "yaml"]),
        (["connector", "list", "--output", "y"], ["yaml"]),
        (["connector", "list", "--name", "prod"], ["prod-registry", "prod-aws"]),
        (["credentials", "get", ""], names()),
        (["credentials", "get", "-r", "docker-registry", "dev"], ["dev-aws"]),
        (["credentials", "get", "prod-aws", ""], []),  # one NAME only
        (["login", "docker", "p"], ["prod-registry", "prod-aws"]),
        (["policy", "check", "view", "d"], ["dev-aws"]),  # CONNECTOR, the second argument
        (["env", "revoke", ""], []),  # a grant ID, not a connector
        (["status", "--socket", "/x", "--"], ["--help", "--output", "--socket"]),
        (["connector", "register", "x", "--type", "d"], ["docker"]),
        (["connector", "list", "-t", ""], TYPES),
        (["connector", "describe-type", "g"], ["gcp"]),
        (["completion", "z"], ["zsh"]),
    ],
)
def test_candidates(words: list[str], expected: list[str]) -> None:
    asked: list[str] = []

    def ask(what: str) -> list[str]:
        asked.append(what)
        return names() if what == "connectors" else TYPES

    assert completion.candidates(words, ask) == expected
    wanted = [w for w in ("connectors", "types") if set(expected) & set(ask(w))]
    assert asked[: len(wanted)] == wanted  # the daemon only when needed, once


def test_scripts_ask_broker_complete() -> None:
    for shell, script in completion.SCRIPTS.items():
        assert "broker __complete" in script, shell
    assert completion.ZSH.startswith("#compdef broker")
    assert "complete -c broker" in completion.FISH
    result = subprocess.run(
        [str(BIN / "broker"), "completion", "zsh"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout == completion.ZSH


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("compl") / "data") as d, d.stub() as stub:
        for name in ("alpha-registry", "alpha-mirror", "beta"):
            stub.RegisterConnector(
                pb.RegisterConnectorRequest(
                    name=name,
                    connector_type="docker",
                    config={"registry": f"{name}.example:5000", "username": "u", "password": "p"},
                    no_verify=True,
                )
            )
        yield d


def _env(daemon: Daemon) -> dict[str, str]:
    return {
        **daemon.env,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "BROKER_SOCKET": str(daemon.socket),
    }


def test_bash_completes_connector_names_from_the_daemon(daemon: Daemon) -> None:
    script = subprocess.run(
        [str(BIN / "broker"), "completion", "bash"], capture_output=True, text=True, timeout=60
    ).stdout
    probe = (
        script
        + "COMP_WORDS=(broker credentials get alpha); COMP_CWORD=3; _broker_completion\n"
        + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
        + "COMP_WORDS=(broker connector de); COMP_CWORD=2; _broker_completion\n"
        + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
        + "COMP_WORDS=(broker connector list --type do); COMP_CWORD=4; _broker_completion\n"
        + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "-c", probe],
        capture_output=True,
        text=True,
        env=_env(daemon),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["alpha-mirror", "alpha-registry", "delete", "describe",
                                     "describe-type", "docker"]  # fmt: skip


def test_completing_names_is_fast_and_light(daemon: Daemon) -> None:
    """No typer/click/rich/grpc/yaml; the median of 5 `broker __complete` processes is
    printed (the number the issue asks for) and held under 150 ms, as the fast path's
    commands are (a loaded CI machine gets 3x that)."""
    check = (
        "import sys\n"
        "from broker.cli import fast\n"
        "sys.argv[1:] = ['__complete', 'connector', 'describe', '']\n"
        "fast.main()\n"
        "heavy = ('typer', 'click', 'rich', 'grpc', 'yaml', 'pydantic')\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=_env(daemon), timeout=60
    )
    assert result.stdout.split() == ["alpha-mirror", "alpha-registry", "beta"]
    assert result.stderr.strip() == "[]"
    times = []
    for _ in range(5):
        began = time.perf_counter()
        done = subprocess.run(
            [str(BIN / "broker"), "__complete", "credentials", "get", "b"],
            capture_output=True,
            text=True,
            env=_env(daemon),
            timeout=60,
        )
        times.append(time.perf_counter() - began)
        assert done.stdout == "beta\n"
    median = statistics.median(times)
    print(f"broker __complete (names from the daemon): median {median * 1000:.0f} ms of 5")
    assert median < 0.45


def test_no_daemon_no_names_no_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "broker"), "__complete", "credentials", "get", ""],
        capture_output=True,
        text=True,
        env={**os.environ, "BROKER_SOCKET": str(tmp_path / "none.sock")},
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def _script(shell: str, into: Path) -> Path:
    path = into / f"broker.{shell}"
    path.write_text(
        subprocess.run(
            [str(BIN / "broker"), "completion", shell], capture_output=True, text=True, timeout=60
        ).stdout
    )
    return path


def test_fish_completes_from_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    """fish's own `complete -C` (what TAB runs) on the printed script."""
    script = _script("fish", tmp_path)
    probe = (
        f"source {script}; complete -C 'broker credentials get alpha'; "
        "complete -C 'broker connector list -o '"
    )
    result = subprocess.run(
        ["fish", "--no-config", "-c", probe],
        capture_output=True,
        text=True,
        env=_env(daemon),
        timeout=60,
    )
    assert result.stdout.split() == [
        "alpha-mirror",
        "alpha-registry",
        "json",
        "table",
        "yaml",
    ], result.stderr


def test_zsh_function_offers_names_from_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    """The _broker function with words / CURRENT set as zsh's completion system sets them;
    compadd (a builtin only inside a completion widget) stands in as a function printing
    what it is given, compdef as a no-op (compinit's, which registers _broker)."""
    script = _script("zsh", tmp_path)
    probe = (
        "compdef() { :; }; "
        f"source {script}; "
        "compadd() { [[ $1 == -a ]] && print -l -- ${(P)2}; }; "
        "words=(broker credentials get alpha); CURRENT=4; _broker; "
        "words=(broker connector de); CURRENT=3; _broker"
    )
    result = subprocess.run(
        ["zsh", "-f", "-c", probe], capture_output=True, text=True, env=_env(daemon), timeout=60
    )
    assert result.stdout.split() == [
        "alpha-mirror",
        "alpha-registry",
        "delete",
        "describe",
        "describe-type",
    ], result.stderr
