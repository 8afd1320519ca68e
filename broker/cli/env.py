"""`broker env aws|gcp NAME`: the variables a job sets so unmodified SDKs use the broker."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from broker.api.v1 import broker_pb2 as pb
from broker.cli import render
from broker.cli.client import connect
from broker.cli.options import Output, OutputOpt, ResourceIdOpt, SocketOpt

app = typer.Typer(no_args_is_help=True, help="Environment for SDKs: AWS container / GCE metadata.")


def _print(endpoint: pb.SdkEndpoint, output: Output) -> None:
    if output is Output.json:
        render.print_json({"id": endpoint.id, "env": dict(sorted(endpoint.env.items()))})
        return
    for key, value in sorted(endpoint.env.items()):
        print(f"export {key}={shlex.quote(value)}")
    print(f"# revoke with: broker env revoke {endpoint.id}")


def _create(
    kind: str, name: str, resource_type: str, resource_id: str | None, socket: Path | None
) -> pb.SdkEndpoint:
    with connect(socket) as stub:
        endpoint: pb.SdkEndpoint = stub.CreateSdkEndpoint(
            pb.CreateSdkEndpointRequest(
                kind=kind,
                connector=name,
                resource_type=resource_type,
                resource_id=resource_id or "",
            )
        )
    return endpoint


@app.command("aws")
def env_aws(
    name: str,
    resource_type: Annotated[str, typer.Option("--resource-type", "-r")] = "aws-generic",
    resource_id: ResourceIdOpt = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """AWS_CONTAINER_CREDENTIALS_FULL_URI + a revocable token for one connector and resource."""
    _print(_create("aws", name, resource_type, resource_id, socket), output)


@app.command("gcp")
def env_gcp(
    name: str,
    resource_type: Annotated[str, typer.Option("--resource-type", "-r")] = "gcp-generic",
    resource_id: ResourceIdOpt = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """GCE_METADATA_HOST of a metadata server serving one gcp connector's tokens."""
    _print(_create("gcp", name, resource_type, resource_id, socket), output)


@app.command("revoke")
def env_revoke(grant_id: str, socket: SocketOpt = None) -> None:
    """Cut off an endpoint created by `broker env aws|gcp`."""
    with connect(socket) as stub:
        stub.RevokeSdkEndpoint(pb.RevokeSdkEndpointRequest(id=grant_id))
    render.console.print(f"Revoked {grant_id}.")
