"""Helper start-up: wall time per call of the docker credential helper, the kubectl
plugin and the AWS credential_process (process start to exit, against a running
daemon), each run paired with the baseline `python -I -c pass` of the same
interpreter (see paired.py).

Goal: helpers p50 ≤ 2× the baseline.

Also measured, to show the floor: the interpreter without `site` (`-S`, what any
Python helper started by a pip console script cannot avoid paying less than), with
frozen modules off (3.11 freezes the start-up modules; on by default), the base
interpreter the venv was made from (its site-packages holds a machine-specific
.pth, which is what the old 82.6 ms "baseline" measured), a helper whose bytecode
is not cached (PYTHONDONTWRITEBYTECODE with an empty PYTHONPYCACHEPREFIX: compiled
on every start), and, where installed, a Go helper's start (`gke-gcloud-auth-plugin
--version`) and `aws eks get-token`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import table
from paired import BIN, HEADERS, Command, compile_bytecode, load_note, rows, run_pairs

from tests.daemon import running_daemon

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "40"))
GOAL_RATIO = 2.0


def main() -> None:
    cached = compile_bytecode()
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
        daemon.cli(
            "connector",
            "register",
            "aws",
            "--type",
            "aws",
            "--auth-method",
            "secret-key",
            "aws_access_key_id=AKIAEXAMPLEEXAMPLE12",
            "aws_secret_access_key=secret",
            "region=us-east-1",
            "--no-verify",
        )
        env = {**os.environ, "BROKER_HELPER_SOCKET": str(daemon.data_dir / "helper.sock")}
        goal = f"≤ {GOAL_RATIO:g}×"
        docker = [str(BIN / "docker-credential-broker"), "get"]
        commands = [
            Command("`docker-credential-broker get`", docker, "registry.bench:5000", env, goal),
            Command(
                "`broker-kubectl-credential kube`",
                [str(BIN / "broker-kubectl-credential"), "kube"],
                env=env,
                goal=goal,
            ),
            Command(
                "`broker-aws-credential aws`",
                [str(BIN / "broker-aws-credential"), "aws", "--resource-type", "aws-generic"],
                env=env,
                goal=goal,
            ),
            Command(
                "floor: `python -I -S -c pass` (no site)",
                [str(BIN / "python"), "-I", "-S", "-c", "pass"],
            ),
            Command(
                "`python -I -X frozen_modules=off -c pass`",
                [str(BIN / "python"), "-I", "-X", "frozen_modules=off", "-c", "pass"],
            ),
            Command(
                "base interpreter `python3 -I -c pass` (the old baseline)",
                [str(Path(sys.base_prefix) / "bin" / "python3"), "-I", "-c", "pass"],
            ),
            Command(
                "`docker-credential-broker get`, bytecode not cached",
                docker,
                "registry.bench:5000",
                {
                    **env,
                    "PYTHONDONTWRITEBYTECODE": "1",
                    "PYTHONPYCACHEPREFIX": str(Path(tmp) / "no-pycache"),
                },
            ),
        ]
        gke = shutil.which("gke-gcloud-auth-plugin")
        if gke:
            commands.append(
                Command(
                    "`gke-gcloud-auth-plugin --version` (a Go helper, no call)", [gke, "--version"]
                )
            )
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
            commands.append(
                Command(
                    "`aws eks get-token` (today's tool)",
                    [aws, "eks", "get-token", "--cluster-name", "bench"],
                    env=aws_env,
                    every=6,
                )
            )
        baseline = run_pairs(commands, ROUNDS)
    out = rows(commands, baseline)
    for row, command in zip(out[1:], commands, strict=True):
        if command.goal != "-":
            row[-1] = f"{command.goal} {'✓' if command.ratio <= GOAL_RATIO else '✗'}"
    missing = [
        tool
        for tool in (
            "docker-credential-ecr-login",
            "gke-gcloud-auth-plugin",
            "docker-credential-gcloud",
        )
        if shutil.which(tool) is None
    ]
    print(f"{cached}; {load_note()}; {ROUNDS} pairs per command")
    print(table(HEADERS, out))
    if missing:
        print(f"(not installed here: {', '.join(missing)})")


if __name__ == "__main__":
    main()
