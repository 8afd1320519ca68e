"""Warning about secret attributes written on the command line itself.

Any user on the host can read another process's argv (``ps``, ``/proc/PID/cmdline``) and
the shell keeps it in its history, so ``password=hunter2`` leaks even though the daemon
seals it. ``KEY=-`` (stdin) and ``KEY=@FILE`` do not; register and update say so.
"""

from __future__ import annotations

import sys
from typing import Any

import grpc

from broker.api.v1 import broker_pb2 as pb
from broker.cli.shapes import inline_keys as inline_keys


def secret_names(stub: Any, connector_type: str, auth_method: str | None) -> set[str]:
    """The type's secret attributes (of every auth method when none is named yet)."""
    try:
        described = stub.DescribeConnectorType(
            pb.DescribeConnectorTypeRequest(
                connector_type=connector_type, auth_method=auth_method or ""
            )
        )
    except grpc.RpcError:  # an unknown type or method: the register call itself says so
        return set()
    return {a.name for m in described.auth_methods for a in m.attributes if a.secret}


def warn_inline_secrets(items: list[str] | None, secrets: set[str]) -> None:
    """One stderr line per secret attribute given inline, saying how to avoid it."""
    for key in inline_keys(items):
        if key in secrets:
            print(
                f"warning: secret attribute '{key}' was given on the command line, where "
                f"other users can read it (ps, /proc/PID/cmdline) and your shell history "
                f"keeps it; give it as {key}=- (read from stdin) or {key}=@FILE (a file "
                "outside the working tree, mode 0600)",
                file=sys.stderr,
            )
