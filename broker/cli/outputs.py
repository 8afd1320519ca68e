"""`broker outputs list`: the files the daemon keeps written ([[outputs]] in its config)."""

from __future__ import annotations

from typing import Any

import typer

from broker.api.v1 import broker_pb2 as pb
from broker.cli import render
from broker.cli.client import connect
from broker.cli.options import Output, OutputOpt, SocketOpt

app = typer.Typer(no_args_is_help=True, help="Credential files the daemon keeps written.")


def output_json(o: pb.Output) -> dict[str, Any]:
    return {
        "index": o.index,
        "connector": o.connector,
        "resource_type": o.resource_type or None,
        "resource_id": o.resource_id or None,
        "format": o.format,
        "path": o.path,
        "mode": f"{o.mode:04o}",
        "last_write": render.rfc3339(o, "last_write"),
        "next_renewal": render.rfc3339(o, "next_renewal"),
        "margin_at": render.rfc3339(o, "margin_at"),
        "expires_at": render.rfc3339(o, "expires_at"),
        "last_error": o.last_error if o.HasField("last_error") else None,
        "last_error_at": render.rfc3339(o, "last_error_at"),
        "writes": o.writes,
        "write_failures": o.write_failures,
        "hook_runs": o.hook_runs,
        "hook_failures": o.hook_failures,
        "on_change": o.on_change or None,
        "signal": o.signal or None,
    }


@app.command("list")
def outputs_list(socket: SocketOpt = None, output: OutputOpt = Output.table) -> None:
    """Each output's path, format, last write, next renewal and last error."""
    with connect(socket) as stub:
        reply: pb.ListOutputsResponse = stub.ListOutputs(pb.ListOutputsRequest())
    if output is not Output.table:
        render.print_data(output, [output_json(o) for o in reply.outputs])
        return
    rows = []
    for o in reply.outputs:
        data = output_json(o)
        resource = f"{o.resource_type}:{o.resource_id}" if o.resource_id else o.resource_type
        rows.append(
            (
                o.index,
                o.path,
                o.format,
                f"{o.connector} {resource}".strip(),
                data["last_write"] or "never",
                render.human_remaining(render.remaining(o, "next_renewal")),
                data["last_error"] or "-",
            )
        )
    render.print_table(
        None,
        ["#", "PATH", "FORMAT", "CREDENTIAL", "LAST WRITE", "NEXT RENEWAL IN", "LAST ERROR"],
        rows,
    )
