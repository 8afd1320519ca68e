"""`broker connector ...`: types, register, list, describe, update, delete, verify."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from google.protobuf.timestamp_pb2 import Timestamp

from broker.api.v1 import broker_pb2 as pb
from broker.attributes import render_value
from broker.cli import connector_types, fast, render
from broker.cli.attrs import inline_keys, secret_names, warn_inline_secrets
from broker.cli.client import connect
from broker.cli.options import (
    FullOpt,
    Output,
    OutputOpt,
    ResourceIdOpt,
    ResourceTypeOpt,
    SocketOpt,
    parse_pairs,
    parse_time,
)
from broker.model import AutoConfigureOptions

app = typer.Typer(no_args_is_help=True, help="Register, inspect and verify connectors.")

LabelOpt = Annotated[list[str] | None, typer.Option("--label", "-l", help="K=V (repeatable)")]


def _ts(value: Any) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


app.command("list-types")(connector_types.list_types)
app.command("describe-type")(connector_types.describe_type)


def _auto_configure(
    connector_type: str,
    auth_method: str | None,
    resource_type: str | None,
    resource_id: str | None,
    options: dict[str, str],
) -> tuple[str, dict[str, str], str | None, str | None, Any]:
    """Read the caller's own environment (kubeconfig, ~/.aws, ADC): it runs here, not in the
    daemon, because the daemon may run as another user on another host."""
    from broker.providers.base import ProviderContext
    from broker.providers.registry import ProviderRegistry

    provider = ProviderRegistry.discover(ProviderContext()).get(connector_type)
    found = provider.auto_configure(
        AutoConfigureOptions(
            auth_method=auth_method,
            resource_type=resource_type,
            resource_id=resource_id,
            options={k: v for k, v in options.items() if v},
        ),
        dict(os.environ),
    )
    config = {k: render_value(v) for k, v in found.config.items()}
    return (
        found.auth_method,
        config,
        resource_type or found.resource_type,
        resource_id or found.resource_id,
        found.expires_at,
    )


def _print_change(
    reply: pb.RegisterConnectorResponse | pb.UpdateConnectorResponse, done: str, output: Output
) -> None:
    """register and update answer alike: the connector and what it reaches."""
    if output is not Output.table:
        render.print_data(
            output,
            {
                "connector": render.connector_json(reply.connector),
                "resources": [render.resource_json(r) for r in reply.resources],
            },
        )
        return
    render.console.print(done)
    if reply.resources:
        render.print_resources(reply.resources)


@app.command()
def register(
    name: str,
    attributes: Annotated[
        list[str] | None,
        typer.Argument(
            help="KEY=VALUE config attributes; KEY=@file reads a file, KEY=- reads stdin "
            "(for secrets: the command line is visible to other users)"
        ),
    ] = None,
    connector_type: Annotated[
        str,
        typer.Option(
            "--type", "-t", help="Connector type: aws, gcp, kubernetes, docker, azure ..."
        ),
    ] = ...,  # type: ignore[assignment]  # required (typer: no default)
    auth_method: Annotated[str | None, typer.Option("--auth-method", "-a")] = None,
    resource_type: ResourceTypeOpt = None,
    resource_id: ResourceIdOpt = None,
    label: LabelOpt = None,
    expiration_seconds: Annotated[int | None, typer.Option("--expiration-seconds")] = None,
    expires_at: Annotated[str | None, typer.Option("--expires-at", help="RFC 3339 or +12h")] = None,
    description: Annotated[str, typer.Option("--description")] = "",
    auto_configure: Annotated[
        bool, typer.Option("--auto-configure", help="Read credentials from this environment")
    ] = False,
    context: Annotated[str | None, typer.Option("--context", help="kubeconfig context")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="AWS profile")] = None,
    region: Annotated[str | None, typer.Option("--region", help="AWS region")] = None,
    project: Annotated[
        str | None, typer.Option("--project", help="GCP project (auto-configure)")
    ] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Store without checking")] = False,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Register a connector; prints the resources it reaches."""
    config = parse_pairs(attributes, "attribute", files=True)
    expiry = parse_time(expires_at, "expires_at")
    if auto_configure:
        auth_method, found, resource_type, resource_id, found_expiry = _auto_configure(
            connector_type,
            auth_method,
            resource_type,
            resource_id,
            {
                "context": context or "",
                "profile": profile or "",
                "region": region or "",
                "project_id": project or "",
            },
        )
        config = {**found, **config}
        expiry = expiry or found_expiry
    with connect(socket) as stub:
        warn_inline_secrets(attributes, secret_names(stub, connector_type, auth_method))
        reply = stub.RegisterConnector(
            pb.RegisterConnectorRequest(
                name=name,
                connector_type=connector_type,
                auth_method=auth_method or "",
                resource_type=resource_type or "",
                resource_id=resource_id,
                config=config,
                labels=parse_pairs(label, "label"),
                expiration_seconds=expiration_seconds,
                expires_at=_ts(expiry),
                no_verify=no_verify,
                description=description,
            )
        )
    _print_change(reply, f"Registered connector '{reply.connector.name}'.", output)


@app.command("list")
def list_connectors(
    name: Annotated[str | None, typer.Option("--name")] = None,
    connector_type: Annotated[str | None, typer.Option("--type", "-t")] = None,
    auth_method: Annotated[str | None, typer.Option("--auth-method", "-a")] = None,
    resource_type: ResourceTypeOpt = None,
    resource_id: ResourceIdOpt = None,
    label: LabelOpt = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """List connectors, filtered."""
    fast.list_connectors(
        name, connector_type, auth_method, resource_type, resource_id, label, socket, output
    )


@app.command()
def describe(
    name: str,
    show_secrets: Annotated[bool, typer.Option("--show-secrets")] = False,
    client: Annotated[
        bool, typer.Option("--client", help="Show the client credential it would issue")
    ] = False,
    resource_type: ResourceTypeOpt = None,
    resource_id: ResourceIdOpt = None,
    full: FullOpt = False,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Describe a connector (secrets [HIDDEN] unless --show-secrets)."""
    if client:
        fast.show_credential(
            name,
            resource_type,
            resource_id,
            socket,
            output,
            hide_secrets=not show_secrets,
            full=full,
        )
        return
    with connect(socket) as stub:
        c = stub.GetConnector(pb.GetConnectorRequest(name=name, show_secrets=show_secrets))
    if output is not Output.table:
        render.print_data(output, render.connector_json(c))
    else:
        render.print_connector(c, full)


@app.command()
def update(
    name: str,
    attributes: Annotated[
        list[str] | None,
        typer.Argument(help="KEY=VALUE to set; KEY=@file reads a file, KEY=- reads stdin"),
    ] = None,
    remove_attr: Annotated[list[str] | None, typer.Option("--remove-attr")] = None,
    auth_method: Annotated[str | None, typer.Option("--auth-method", "-a")] = None,
    resource_type: ResourceTypeOpt = None,
    resource_id: ResourceIdOpt = None,
    label: LabelOpt = None,
    remove_label: Annotated[list[str] | None, typer.Option("--remove-label")] = None,
    expiration_seconds: Annotated[int | None, typer.Option("--expiration-seconds")] = None,
    expires_at: Annotated[str | None, typer.Option("--expires-at")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    multi_type: Annotated[bool, typer.Option("--multi-type", help="Serve every type")] = False,
    multi_instance: Annotated[
        bool, typer.Option("--multi-instance", help="Drop the resource ID")
    ] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify")] = False,
    expected_revision: Annotated[
        int | None,
        typer.Option(
            "--expected-revision",
            help="Refuse unless the connector is still at this revision "
            "(default: the revision read just before updating)",
        ),
    ] = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change a connector (its type cannot change); every update bumps its revision.

    The update applies only to the revision it was based on: if the connector
    changed in between, it is refused (ABORTED) and nothing is written.
    """
    with connect(socket) as stub:
        if expected_revision is None or inline_keys(attributes):
            current = stub.GetConnector(pb.GetConnectorRequest(name=name))
            if expected_revision is None:
                expected_revision = current.revision
            method = auth_method or current.auth_method
            warn_inline_secrets(attributes, secret_names(stub, current.connector_type, method))
        reply = stub.UpdateConnector(
            pb.UpdateConnectorRequest(
                name=name,
                auth_method=auth_method,
                resource_type=resource_type,
                resource_id=resource_id,
                config=parse_pairs(attributes, "attribute", files=True),
                remove_attributes=remove_attr or [],
                labels=parse_pairs(label, "label"),
                remove_labels=remove_label or [],
                expiration_seconds=expiration_seconds,
                expires_at=_ts(parse_time(expires_at, "expires_at")),
                description=description,
                clear_resource_type=multi_type,
                clear_resource_id=multi_instance,
                no_verify=no_verify,
                expected_revision=expected_revision,
            )
        )
    _print_change(
        reply,
        f"Updated connector '{reply.connector.name}' (revision {reply.connector.revision}).",
        output,
    )


@app.command()
def delete(name: str, socket: SocketOpt = None, output: OutputOpt = Output.table) -> None:
    """Delete a connector; watchers of its credentials get a `deleted` event."""
    with connect(socket) as stub:
        c = stub.DeleteConnector(pb.DeleteConnectorRequest(name=name))
    if output is not Output.table:
        render.print_data(output, render.connector_json(c))
    else:
        render.console.print(f"Deleted connector '{c.name}'.")


@app.command()
def verify(
    name: str,
    resource_type: ResourceTypeOpt = None,
    resource_id: ResourceIdOpt = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Check a connector's credentials and list what they reach; exit 1 on any error."""
    with connect(socket) as stub:
        reply = stub.VerifyConnector(
            pb.VerifyConnectorRequest(
                name=name, resource_type=resource_type or "", resource_id=resource_id or ""
            )
        )
    if output is not Output.table:
        render.print_data(output, [render.resource_json(r) for r in reply.resources])
    else:
        render.print_resources(reply.resources)
    if not reply.ok:
        raise typer.Exit(1)


@app.command("list-resources")
def list_resources(
    connector_type: Annotated[str | None, typer.Option("--connector-type", "--type", "-t")] = None,
    resource_type: ResourceTypeOpt = None,
    resource_id: ResourceIdOpt = None,
    label: LabelOpt = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    exclude_errors: Annotated[
        bool, typer.Option("--exclude-errors", help="Hide connectors that failed")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.0, help="Seconds per connector [default: the daemon's]"),
    ] = 0.0,
    refresh: Annotated[bool, typer.Option("--refresh", help="Bypass the result cache")] = False,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """What every matching connector reaches, asked concurrently; partial results on errors.

    On a terminal, progress (done / pending / failed per connector) is drawn on stderr
    while results arrive.
    """
    from broker.cli.progress import collect, live_enabled

    labels = parse_pairs(label, "label")
    live = output is Output.table and live_enabled()
    request = pb.ListResourcesRequest(
        connector_type=connector_type or "",
        resource_type=resource_type or "",
        resource_id=resource_id or "",
        labels=labels,
        # Live progress shows failures too; they are dropped below instead.
        exclude_errors=exclude_errors and not live,
        timeout_seconds=timeout,
        refresh=refresh,
        name=name or "",
    )
    with connect(socket) as stub:
        expected = None
        if live:
            listed = fast.all_connectors(
                stub,
                pb.ListConnectorsRequest(
                    name=name or "",
                    connector_type=connector_type or "",
                    resource_type=resource_type or "",
                    resource_id=resource_id or "",
                    labels=labels,
                ),
            )
            expected = {
                c.name: (
                    c.connector_type,
                    1 if resource_type else max(1, len(c.resource_types)),
                )
                for c in listed
            }
        stream = stub.ListResources(request)
        try:
            results = collect(stream, expected)
        except KeyboardInterrupt:
            stream.cancel()  # the daemon cancels its fan-out when the call is cancelled
            raise
    if exclude_errors:  # a partial listing (some subscriptions failed) keeps what it found
        results = [r for r in results if r.resource_ids or not r.HasField("error")]
        for r in results:
            r.ClearField("error")
    results.sort(key=lambda r: (r.connector, r.resource_type))
    if output is not Output.table:
        render.print_data(output, [render.resource_json(r) for r in results])
    else:
        render.print_resources(results)
