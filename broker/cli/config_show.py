"""`broker config show`: the running daemon's effective settings, or what `serve` would use.

The daemon answers GetConfig (admin only) with what it loaded at start; ``--local``
loads the settings here instead, from the same sources in the same order, so a
change to a file or a variable can be checked before a restart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.api.v1 import broker_pb2 as pb
from broker.cli import render
from broker.cli.client import connect
from broker.cli.options import Output, OutputOpt, SocketOpt


def _from_daemon(socket: Path | None) -> tuple[dict[str, Any], str]:
    with connect(socket) as stub:
        reply: pb.DaemonConfig = stub.GetConfig(pb.GetConfigRequest())
    return {k: json.loads(v) for k, v in reply.settings.items()}, reply.config_file


def _local(config: Path | None) -> tuple[dict[str, Any], str]:
    from broker.config import describe, load_settings

    settings = load_settings(config)
    return describe(settings), str(settings.config_file or "")


def show(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The TOML file `broker serve --config` would read (implies --local)",
        ),
    ] = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="What `broker serve` started here would use (this shell's BROKER_* "
            "variables, --config or BROKER_CONFIG), not the running daemon's settings",
        ),
    ] = False,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The running daemon's effective configuration, secrets hidden (admin only).

    Precedence: defaults < TOML file (--config / BROKER_CONFIG) < BROKER_* environment
    variables < `broker serve` flags. Without a daemon, --local shows what `serve` would
    load here from the first three.
    """
    local = local or config is not None  # a file only this process can read
    data, source = _local(config) if local else _from_daemon(socket)
    if output is not Output.table:
        render.print_data(output, data)
        return
    from broker.config import setting_fields

    docs = {f.name: f.metadata["doc"] for f in setting_fields()}
    title = f"{'Local' if local else 'Daemon'} configuration" + (
        f" (file {source})" if source else " (no config file)"
    )
    render.print_table(
        title,
        ["SETTING", "VALUE", "MEANING"],
        [(k, v, docs.get(k, "")) for k, v in data.items()],
    )
