"""Start-up benchmarks measured in pairs: each command right after its own baseline run.

On a shared machine the load moves within seconds; a baseline measured once, or in
a block of its own, drifts apart from the commands it is compared with. Here every
sample of a command is taken right after a sample of the baseline (A, B, A, C, A,
B, ...), so each ratio compares runs that saw the same load.

The baseline is the honest floor: the interpreter the commands run on (the venv's
``python``, which the console scripts name in their shebang) started with
``-I -c pass``. Bytecode is compiled first (``compileall``), so that a shell with
``PYTHONDONTWRITEBYTECODE`` set measures the same cached start-up as any other.
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, median, percentile

BIN = Path(sys.executable).parent
#: The same interpreter as the console scripts' shebang, with nothing of ours loaded.
BASELINE = [str(BIN / "python"), "-I", "-c", "pass"]


def compile_bytecode() -> str:
    """Compile broker/ to __pycache__ (the venv's packages were compiled by pip); say so."""
    compileall.compile_dir(ROOT / "broker", quiet=1, force=False)
    flag = os.environ.get("PYTHONDONTWRITEBYTECODE")
    return (
        "bytecode cached (compileall before measuring"
        + (f"; PYTHONDONTWRITEBYTECODE={flag} in this shell" if flag else "")
        + ")"
    )


@dataclass
class Command:
    name: str
    argv: list[str]
    stdin: str = ""
    env: Mapping[str, str] | None = None
    goal: str = "-"
    cwd: str | None = None
    #: Measured every this many rounds only (for slow reference tools).
    every: int = 1
    samples: list[float] = field(default_factory=list)
    #: The baseline run just before each sample.
    paired: list[float] = field(default_factory=list)

    def run_once(self) -> float:
        start = time.perf_counter()
        result = subprocess.run(
            self.argv, input=self.stdin, capture_output=True, text=True, env=self.env, cwd=self.cwd
        )
        took = (time.perf_counter() - start) * 1000
        if result.returncode != 0:
            raise SystemExit(f"{self.name} failed: {result.stdout}{result.stderr}")
        return took

    @property
    def ratio(self) -> float:
        """p50 of this command over p50 of the baseline runs paired with it."""
        return median(self.samples) / median(self.paired)

    @property
    def pair_ratio(self) -> float:
        """Median of the per-pair ratios (robust to load that moves between pairs)."""
        return median([s / b for s, b in zip(self.samples, self.paired, strict=True)])


def run_pairs(commands: Sequence[Command], rounds: int, warmup: int = 2) -> list[float]:
    """Every round: baseline, command, for each command in turn. The baseline samples."""
    baseline = Command("baseline", BASELINE)
    for _ in range(warmup):
        for command in commands:
            if command.every == 1:
                baseline.run_once()
                command.run_once()
    for index in range(rounds):
        for command in commands:
            if index % command.every:
                continue
            b = baseline.run_once()
            command.paired.append(b)
            command.samples.append(command.run_once())
            baseline.samples.append(b)
    return baseline.samples


def rows(commands: Sequence[Command], baseline: list[float]) -> list[list[object]]:
    out: list[list[object]] = [
        [
            "`python -I -c pass` (baseline)",
            len(baseline),
            f"{median(baseline):.1f}",
            f"{percentile(baseline, 95):.1f}",
            "1.00×",
            "-",
            "-",
        ]
    ]
    for c in commands:
        out.append(
            [
                c.name,
                len(c.samples),
                f"{median(c.samples):.1f}",
                f"{percentile(c.samples, 95):.1f}",
                f"{c.ratio:.2f}×",
                f"{c.pair_ratio:.2f}×",
                c.goal,
            ]
        )
    return out


HEADERS = ["command", "runs", "p50 ms", "p95 ms", "p50 / baseline p50", "median pair ratio", "goal"]


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"
