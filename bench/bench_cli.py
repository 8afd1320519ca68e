"""CLI start-up: wall time of `broker connector list`, `broker credentials get` and
`broker status`, and shell completion of connector names (`broker __complete`: process
start to exit, against a running daemon), each run paired
with the baseline `python -I -c pass` of the same interpreter (see paired.py).

Goal: p50 ≤ 150 ms and ≤ 10× the baseline.

Also measured, for scale: the floor of this design (importing protobuf and the
generated messages, nothing else), what importing grpcio alone costs (the reason
the three commands speak gRPC through broker/cli/wire.py), the same command through
the typer app (which every other command takes), and, with BENCH_BEFORE=<git
revision>, the CLI of that revision (run from an exported copy of its broker/).
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, median, table
from paired import BIN, HEADERS, Command, compile_bytecode, load_note, rows, run_pairs

from tests.daemon import running_daemon

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
BEFORE = os.environ.get("BENCH_BEFORE", "")
BROKER = str(BIN / "broker")
PYTHON = str(BIN / "python")
CONNECTORS = 20
GOAL_MS, GOAL_RATIO = 150.0, 10.0


def export_revision(rev: str, into: Path) -> Path:
    """broker/ as of ``rev``, compiled, in a directory of its own."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "broker"], capture_output=True, check=True
    ).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    compileall.compile_dir(into / "broker", quiet=1)
    return into


def main() -> None:
    cached = compile_bytecode()
    with tempfile.TemporaryDirectory() as tmp, running_daemon(Path(tmp) / "data") as daemon:
        for i in range(CONNECTORS):
            daemon.cli(
                "connector",
                "register",
                f"reg{i:02d}",
                "--type",
                "docker",
                "username=u",
                "password=p",
                f"registry=registry{i:02d}.bench:5000",
                "--label",
                f"team=t{i % 3}",
                "--no-verify",
            )
        env = {**daemon.env, "BROKER_SOCKET": str(daemon.socket)}
        goal = f"≤ {GOAL_MS:g} ms and ≤ {GOAL_RATIO:g}×"

        def broker(name: str, *args: str, goal: str = goal) -> Command:
            return Command(name, [BROKER, *args], env=env, goal=goal)

        commands = [
            broker("`broker connector list -o json`", "connector", "list", "-o", "json"),
            broker("`broker connector list` (table)", "connector", "list"),
            broker(
                "`broker credentials get reg00 -o json`",
                "credentials",
                "get",
                "reg00",
                "-o",
                "json",
            ),
            broker("`broker credentials get reg00` (table)", "credentials", "get", "reg00"),
            broker("`broker status -o json`", "status", "-o", "json"),
            broker("`broker status` (table)", "status"),
            broker(
                "`broker __complete credentials get reg` (shell completion: names)",
                "__complete",
                "credentials",
                "get",
                "reg",
            ),
            Command(
                "floor: `import broker.api.v1.broker_pb2` (protobuf + the messages)",
                [PYTHON, "-I", "-c", "import broker.api.v1.broker_pb2"],
            ),
            Command(
                "`import grpc` alone (why the fast path does not use grpcio)",
                [PYTHON, "-I", "-c", "import grpc"],
            ),
            Command(
                "`connector list -o json` through the typer app",
                [
                    PYTHON,
                    "-c",
                    "import sys; from broker.cli.main import main; "
                    "sys.argv[1:] = ['connector', 'list', '-o', 'json']; main()",
                ],
                env=env,
            ),
        ]
        if BEFORE:
            old = export_revision(BEFORE, Path(tmp) / "before")
            for name, args in (
                ("connector list -o json", ["connector", "list", "-o", "json"]),
                ("credentials get reg00 -o json", ["credentials", "get", "reg00", "-o", "json"]),
                ("status -o json", ["status", "-o", "json"]),
            ):
                commands.append(
                    Command(
                        f"before ({BEFORE}): `broker {name}`",
                        [PYTHON, "-m", "broker.cli.main", *args],
                        env=env,
                        cwd=str(old),  # -m puts the working directory first on sys.path
                    )
                )
        baseline = run_pairs(commands, ROUNDS)
    out = rows(commands, baseline)
    for row, command in zip(out[1:], commands, strict=True):
        if command.goal != "-":
            ok = median(command.samples) <= GOAL_MS and command.ratio <= GOAL_RATIO
            row[-1] = f"{command.goal} {'✓' if ok else '✗'}"
    print(f"{cached}; {load_note()}; {ROUNDS} pairs per command")
    print(table(HEADERS, out))


if __name__ == "__main__":
    sys.exit(main())
