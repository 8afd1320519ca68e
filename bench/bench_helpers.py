"""Helper start-up: wall time per call of the docker credential helper and the kubectl
plugin (process start to exit) against `python3 -I -c pass` and `aws eks get-token`,
measured side by side in the same run.

Goal: helpers ≤ 2× the bare interpreter and ≤ 40 ms p50.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import median, percentile, table

from tests.daemon import running_daemon

BIN = Path(sys.executable).parent
CALLS = int(os.environ.get("BENCH_CALLS", "60"))
BARE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")


def timed(
    cmd: list[str], calls: int, stdin: str = "", env: dict[str, str] | None = None
) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env)
        samples.append((time.perf_counter() - start) * 1000)
        if result.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed: {result.stdout}{result.stderr}")
    return samples


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, running_daemon(Path(tmp) / "data") as daemon:
        daemon.cli(
            "connector",
            "register",
            "reg",
            "--type",
            "docker",
            "username=u",
            "password=p",
            "registry=registry.bench:5000",
            "--no-verify",
        )
        daemon.cli(
            "connector",
            "register",
            "kube",
            "--type",
            "kubernetes",
            "--auth-method",
            "token",
            "server=https://127.0.0.1:1",
            "token=t",
            "insecure=true",
            "cluster_name=bench",
            "--no-verify",
        )
        env = {**os.environ, "BROKER_HELPER_SOCKET": str(daemon.data_dir / "helper.sock")}
        rows = []
        bare = timed([BARE_PYTHON, "-I", "-c", "pass"], CALLS)
        docker = timed(
            [str(BIN / "docker-credential-broker"), "get"], CALLS, "registry.bench:5000", env
        )
        kubectl = timed([str(BIN / "broker-kubectl-credential"), "kube"], CALLS, env=env)
        bare_p50 = median(bare)

        def row(name: str, samples: list[float], goal: str) -> list[object]:
            return [
                name,
                len(samples),
                f"{median(samples):.1f}",
                f"{percentile(samples, 95):.1f}",
                f"{median(samples) / bare_p50:.2f}×",
                goal,
            ]

        rows.append(row("python3 -I -c pass (baseline)", bare, "-"))
        rows.append(row("docker-credential-broker get", docker, "≤ 2× and ≤ 40 ms p50"))
        rows.append(row("broker-kubectl-credential", kubectl, "≤ 2× and ≤ 40 ms p50"))
        aws = shutil.which("aws")
        if aws:
            aws_env = {
                **os.environ,
                "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                "AWS_SECRET_ACCESS_KEY": "x" * 40,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            }
            samples = timed(
                [aws, "eks", "get-token", "--cluster-name", "bench"],
                max(5, CALLS // 6),
                env=aws_env,
            )
            rows.append(row("aws eks get-token (today's tool)", samples, "-"))
        for tool in (
            "docker-credential-ecr-login",
            "gke-gcloud-auth-plugin",
            "docker-credential-gcloud",
        ):
            if shutil.which(tool) is None:
                rows.append([f"{tool}", 0, "not installed here", "-", "-", "-"])
    print(table(["command", "calls", "p50 ms", "p95 ms", "p50 vs baseline", "goal"], rows))


if __name__ == "__main__":
    main()
