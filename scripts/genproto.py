"""Regenerate broker/api/v1 from protos/ (``make proto``); ``--check`` fails on drift.

Generated modules import each other as ``broker.v1``; they live under
``broker.api.v1`` so the import lines are rewritten.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import sys
import tempfile
import tomllib
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "broker" / "api" / "v1"
GENERATED = ("broker_pb2.py", "broker_pb2.pyi", "broker_pb2_grpc.py")


def generate(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        import grpc_tools

        include = Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p) for p in sorted(PROTOS.rglob("*.proto"))],
        ]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        dest.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            text = (Path(tmp) / "broker" / "v1" / name).read_text()
            text = text.replace("from broker.v1 import", "from broker.api.v1 import")
            (dest / name).write_text(text)


def pinned_tools_version() -> str:
    """The grpcio-tools version pyproject pins (the one that generated broker/api/v1)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in data["project"]["optional-dependencies"]["dev"]:
        name, sep, version = requirement.partition("==")
        if name.strip() == "grpcio-tools" and sep:
            return version.strip()
    sys.exit("pyproject.toml must pin grpcio-tools (grpcio-tools==X.Y.Z) in the dev extras")


def check_tools_version() -> None:
    """A different protoc generates different bytes: say so instead of showing a diff."""
    pinned = pinned_tools_version()
    installed = importlib.metadata.version("grpcio-tools")
    if installed != pinned:
        sys.exit(
            f"grpcio-tools {installed} is installed but the generated code comes from "
            f"grpcio-tools {pinned} (pinned in pyproject.toml): run `make install` "
            "(it installs from constraints.txt), or change the pin and run `make proto`"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if checked-in code drifted")
    args = parser.parse_args()
    check_tools_version()
    if not args.check:
        generate(OUT)
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        drifted = [n for n in GENERATED if not filecmp.cmp(Path(tmp) / n, OUT / n, shallow=False)]
    if drifted:
        sys.exit(f"generated code drifted from protos/: {', '.join(drifted)}; run `make proto`")
    print("generated code matches protos/")


if __name__ == "__main__":
    main()
