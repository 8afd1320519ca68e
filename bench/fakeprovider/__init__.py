"""Benchmark support: the ``bench-fake`` plugin, its fake upstream and the gRPC load processes.

* ``broker_bench_connector/`` + its dist-info: the connector type, found by a
  daemon whose ``PYTHONPATH`` holds this directory (:func:`plugin_env`);
* :mod:`fakeprovider.upstream`: the upstream it mints from (delay, lifetime,
  failures, mint counts);
* :mod:`fakeprovider.grpcload`: the echo server and the client processes.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent


def plugin_env() -> dict[str, str]:
    """Environment for a daemon subprocess that should load the ``bench-fake`` type."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{PLUGIN_DIR}{os.pathsep}{path}" if path else str(PLUGIN_DIR)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(port: int) -> dict[str, float]:
    """The daemon's Prometheus metrics (``--metrics 127.0.0.1:PORT``), unlabelled samples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip() or "{" in line:
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out
