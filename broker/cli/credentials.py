"""`broker credentials get|watch`: client credentials for one resource."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import typer

from broker.api.v1 import broker_pb2 as pb
from broker.cli import fast, render
from broker.cli.client import connect
from broker.cli.options import (
    FullOpt,
    Output,
    OutputOpt,
    ResourceIdOpt,
    ResourceTypeOpt,
    SocketOpt,
)
from broker.cli.shapes import print_data

app = typer.Typer(no_args_is_help=True, help="Get or watch client credentials.")


_KINDS = {
    pb.CredentialEvent.ISSUED: "issued",
    pb.CredentialEvent.RENEWED: "renewed",
    pb.CredentialEvent.UPDATED: "updated",
    pb.CredentialEvent.DELETED: "deleted",
    pb.CredentialEvent.ERROR: "error",
}


@app.command()
def get(
    name: str,
    resource_type: ResourceTypeOpt = None,
    resource_id: ResourceIdOpt = None,
    full: FullOpt = False,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Print the client credential for one resource (secrets included: that is its job)."""
    fast.show_credential(
        name, resource_type, resource_id, socket, output, hide_secrets=False, full=full
    )


@app.command()
def rotate(
    name: str,
    resource_type: ResourceTypeOpt = None,
    resource_id: ResourceIdOpt = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Mint the resource's credential now (admin). Watchers, outputs and `broker exec`
    children get the new one; the old one is served until then (and after a failure)."""
    request = pb.RotateCredentialsRequest(
        connector=name,
        resource_type=resource_type or "",
        resource_id=resource_id or "",
        hide_secrets=True,  # `credentials get` shows the values
    )
    cred = fast.call(socket, lambda stub, _health: stub.RotateCredentials(request))
    data = render.credential_json(cred)
    if output is Output.table:
        expiry = data["expires_at"] or "never (long-lived)"
        render.console.print(
            f"rotated {data['resource_type']} '{data['resource_id']}' of connector "
            f"'{name}': expires at {expiry}"
        )
    else:
        print_data(output, data)


@app.command()
def watch(
    name: str,
    resource_type: ResourceTypeOpt = None,
    resource_id: ResourceIdOpt = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Stream the credential, then each renewal, until the connector is deleted (or Ctrl-C,
    exit 130).

    A table prints a line per event: when it arrived (UTC), the event, the resource and
    when its credential expires; json prints one JSON object a line, yaml one document
    per event.
    """
    with connect(socket) as stub:
        stream = stub.WatchCredentials(
            pb.WatchCredentialsRequest(
                connector=name, resource_type=resource_type or "", resource_id=resource_id or ""
            )
        )
        try:
            for event in stream:
                _print_event(event, output)
        except KeyboardInterrupt:
            stream.cancel()
            raise  # exit 130, as every command on Ctrl-C


def _print_event(event: pb.CredentialEvent, output: Output) -> None:
    """One event: a JSON line or a YAML document (the stable shape, as documented), or a
    table line that starts with when it arrived."""
    kind = _KINDS.get(event.kind, "error")
    cred = render.credential_json(event.credential) if event.HasField("credential") else None
    data = {"event": kind, "credential": cred, "error": event.error or None}
    if output is Output.json:
        sys.stdout.write(json.dumps(data) + "\n")
    elif output is Output.yaml:
        sys.stdout.write("---\n")
        render.print_data(output, data)
    else:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        shown = event.credential if event.HasField("credential") else None
        sys.stdout.write(watch_line(now, kind, shown, event.error) + "\n")
    sys.stdout.flush()


def watch_line(now: str, kind: str, cred: pb.Credential | None, error: str) -> str:
    """``TIME EVENT RESOURCE expires AT (in LEFT)``; ``no expiry`` only for a credential
    that has none (a stored registry password without expires_at)."""
    if error:
        return f"{now}  {kind:<8} error: {error}"
    if cred is None:
        return f"{now}  {kind:<8} -"
    resource = f"{cred.resource_type}:{cred.resource_id}"
    if not cred.HasField("expires_at"):
        return f"{now}  {kind:<8} {resource} no expiry (long-lived)"
    left = render.human_remaining(render.remaining(cred, "expires_at"))
    return f"{now}  {kind:<8} {resource} expires {render.rfc3339(cred, 'expires_at')} (in {left})"
