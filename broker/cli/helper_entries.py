"""Where the helper scripts are, and the kubeconfig entries that make kubectl ask the broker.

``broker login kubernetes`` merges them into the user's kubeconfig and ``broker
exec`` writes them to a temp one; both must say the same thing to kubectl.
Stdlib only: ``broker exec`` runs on the CLI's fast path.
"""

from __future__ import annotations

import base64
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The exec credential plugin's console script.
PLUGIN = "broker-kubectl-credential"


def helper_path(name: str) -> str:
    """Absolute path of a helper script next to this interpreter (PATH may differ later)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name) or name


def plugin_entries(
    config: Mapping[str, str], connector: str, resource_id: str, helper_socket: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``cluster`` (server, CA) and ``user`` (the exec plugin) of one cluster."""
    cluster: dict[str, Any] = {"server": config["server"]}
    if config.get("certificate_authority"):
        ca = config["certificate_authority"].encode()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    if config.get("insecure") == "true":
        cluster["insecure-skip-tls-verify"] = True
    args = [connector, "--resource-id", resource_id]
    if helper_socket:
        args += ["--socket", helper_socket]
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": helper_path(PLUGIN),
            "args": args,
            "interactiveMode": "Never",
            "provideClusterInfo": False,
        }
    }
    return cluster, user
