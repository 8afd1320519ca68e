"""`broker env aws|gcp NAME`: the variables a job sets so unmodified SDKs use the broker.

`broker env list` shows the caller's grants (every grant for an admin);
`broker env revoke ID` cuts one off.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.api.v1 import broker_pb2 as pb
from broker.cli import render
from broker.cli.client import connect
from broker.cli.options import Output, OutputOpt, ResourceIdOpt, SocketOpt
from broker.errors import InvalidArgument

app = typer.Typer(no_args_is_help=True, help="Environment for SDKs: AWS container / GCE metadata.")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:(\d+)([smhd]))")

TtlOpt = Annotated[
    str | None,
    typer.Option(
        "--ttl",
        help="Lifetime of the grant: seconds or 90s / 30m / 12h / 7d / 1h30m "
        "(1 minute to 7 days) [default: 12h]",
        show_default=False,
    ),
]


def parse_ttl(text: str | None) -> int:
    """``--ttl`` into seconds (None: 0, the daemon's default); the daemon checks the bounds."""
    if text is None:
        return 0
    value = text.strip().lower()
    if value.isdigit():
        seconds = int(value)
    else:
        parts = _DURATION.findall(value)
        if not value or "".join(n + u for n, u in parts) != value:
            raise InvalidArgument(
                f"--ttl '{text}' is not a duration: use seconds or e.g. 90s, 30m, 12h, 7d, 1h30m",
                field="ttl_seconds",
            )
        seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if not 0 < seconds < 2**63:
        raise InvalidArgument(
            f"--ttl '{text}' must be between 1 minute and 7 days", field="ttl_seconds"
        )
    return seconds


def _bound(endpoint: pb.SdkEndpoint) -> int | None:
    return None if endpoint.bound_uid < 0 else int(endpoint.bound_uid)


def _short_owner(owner: str) -> str:
    """The owner without the creating process and transport: ``uid=0(root) gid=0(root)``."""
    return re.sub(r" pid=\d+", "", owner).split(" via ", 1)[0]


def _bound_text(endpoint: pb.SdkEndpoint) -> str:
    if endpoint.kind != "gcp":
        return "-"  # bound by its token
    bound = _bound(endpoint)
    return "any" if bound is None else str(bound)


def endpoint_json(endpoint: pb.SdkEndpoint, *, env: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": endpoint.id,
        "kind": endpoint.kind,
        "connector": endpoint.connector,
        "resource_type": endpoint.resource_type or None,
        "resource_id": endpoint.resource_id or None,
        "owner": endpoint.owner,
        "created_at": render.rfc3339(endpoint, "created_at"),
        "expires_at": render.rfc3339(endpoint, "expires_at"),
        "expires_in_seconds": render.remaining(endpoint, "expires_at"),
        "bound_uid": _bound(endpoint),
    }
    if env:
        data["env"] = dict(sorted(endpoint.env.items()))
    return data


def _print(endpoint: pb.SdkEndpoint, output: Output) -> None:
    if output is not Output.table:
        render.print_data(output, endpoint_json(endpoint, env=True))
        return
    for key, value in sorted(endpoint.env.items()):
        print(f"export {key}={shlex.quote(value)}")
    expires = render.rfc3339(endpoint, "expires_at")
    left = render.human_remaining(render.remaining(endpoint, "expires_at"))
    print(f"# expires {expires} (in {left})")
    bound = _bound(endpoint)
    if endpoint.kind == "gcp":
        print(
            "# any local uid may connect"
            if bound is None
            else f"# only sockets of uid {bound} may connect"
        )
    print(f"# revoke with: broker env revoke {endpoint.id}")


def _create(
    kind: str,
    name: str,
    resource_type: str,
    resource_id: str | None,
    socket: Path | None,
    ttl: str | None,
    bind_uid: int | None = None,
) -> pb.SdkEndpoint:
    request = pb.CreateSdkEndpointRequest(
        kind=kind,
        connector=name,
        resource_type=resource_type,
        resource_id=resource_id or "",
        ttl_seconds=parse_ttl(ttl),
    )
    if bind_uid is not None:
        request.bind_uid = bind_uid
    with connect(socket) as stub:
        endpoint: pb.SdkEndpoint = stub.CreateSdkEndpoint(request)
    return endpoint


@app.command("aws")
def env_aws(
    name: str,
    resource_type: Annotated[str, typer.Option("--resource-type", "-r")] = "aws-generic",
    resource_id: ResourceIdOpt = None,
    ttl: TtlOpt = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """AWS_CONTAINER_CREDENTIALS_FULL_URI + a revocable token for one connector and resource."""
    _print(_create("aws", name, resource_type, resource_id, socket, ttl), output)


@app.command("gcp")
def env_gcp(
    name: str,
    resource_type: Annotated[str, typer.Option("--resource-type", "-r")] = "gcp-generic",
    resource_id: ResourceIdOpt = None,
    ttl: TtlOpt = None,
    bind_uid: Annotated[
        int | None,
        typer.Option(
            "--bind-uid",
            help="The local uid whose sockets may connect; -1: any uid. Another uid than "
            "your own needs admin [default: your uid]",
            show_default=False,
        ),
    ] = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """GCE_METADATA_HOST / _ROOT / _IP of a GCE metadata server for one gcp connector: its
    tokens (any scopes), ID tokens, service account email and project, for Google's
    clients as they are (google-auth, gcloud, Node's google-auth-library)."""
    _print(_create("gcp", name, resource_type, resource_id, socket, ttl, bind_uid), output)


@app.command("list")
def env_list(socket: SocketOpt = None, output: OutputOpt = Output.table) -> None:
    """Your live SDK endpoints (every one for an admin)."""
    with connect(socket) as stub:
        reply: pb.ListSdkEndpointsResponse = stub.ListSdkEndpoints(pb.ListSdkEndpointsRequest())
    endpoints = sorted(reply.endpoints, key=lambda e: (e.expires_at.ToSeconds(), e.id))
    if output is not Output.table:
        render.print_data(output, [endpoint_json(e, env=False) for e in endpoints])
        return
    render.print_table(
        None,
        ["ID", "KIND", "CONNECTOR", "RESOURCE", "OWNER", "EXPIRES IN", "BOUND UID"],
        [
            (
                e.id,
                e.kind,
                e.connector,
                f"{e.resource_type}:{e.resource_id}" if e.resource_id else e.resource_type or "-",
                _short_owner(e.owner),
                render.human_remaining(render.remaining(e, "expires_at")),
                _bound_text(e),
            )
            for e in endpoints
        ],
    )


@app.command("revoke")
def env_revoke(grant_id: str, socket: SocketOpt = None, output: OutputOpt = Output.table) -> None:
    """Cut off an endpoint created by `broker env aws|gcp` (your own, unless admin)."""
    with connect(socket) as stub:
        stub.RevokeSdkEndpoint(pb.RevokeSdkEndpointRequest(id=grant_id))
    if output is Output.table:
        print(f"Revoked {grant_id}.")
    else:
        render.print_data(output, {"id": grant_id, "revoked": True})
