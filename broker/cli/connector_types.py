"""`broker connector list-types` and `describe-type`: what each connector type offers."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from broker.api.v1 import broker_pb2 as pb
from broker.cli import render
from broker.cli.client import connect
from broker.cli.options import Output, OutputOpt, ResourceTypeOpt, SocketOpt


def _type_json(t: pb.ConnectorType) -> dict[str, Any]:
    return {
        "connector_type": t.connector_type,
        "name": t.name,
        "description": t.description,
        "resource_types": [
            {
                "resource_type": rt.resource_type,
                "name": rt.name,
                "description": rt.description,
                "supports_instances": rt.supports_instances,
                "id_formats": list(rt.id_formats),
            }
            for rt in t.resource_types
        ],
        "auth_methods": [
            {
                "auth_method": m.auth_method,
                "name": m.name,
                "description": m.description,
                "implicit": m.implicit,
                "requires_expires_at": m.requires_expires_at,
                "min_expiration_seconds": m.min_expiration_seconds
                if m.HasField("min_expiration_seconds")
                else None,
                "max_expiration_seconds": m.max_expiration_seconds
                if m.HasField("max_expiration_seconds")
                else None,
                "default_expiration_seconds": m.default_expiration_seconds
                if m.HasField("default_expiration_seconds")
                else None,
                "attributes": [
                    {
                        "name": a.name,
                        "description": a.description,
                        "kind": a.kind,
                        "required": a.required,
                        "secret": a.secret,
                        "default": a.default_value if a.HasField("default_value") else None,
                    }
                    for a in m.attributes
                ],
            }
            for m in t.auth_methods
        ],
        "supports_auto_configuration": t.supports_auto_configuration,
    }


def list_types(
    connector_type: Annotated[str | None, typer.Option("--type", "-t")] = None,
    resource_type: ResourceTypeOpt = None,
    auth_method: Annotated[str | None, typer.Option("--auth-method", "-a")] = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """List connector types with their resource types and auth methods."""
    with connect(socket) as stub:
        reply = stub.ListConnectorTypes(
            pb.ListConnectorTypesRequest(
                connector_type=connector_type or "",
                resource_type=resource_type or "",
                auth_method=auth_method or "",
            )
        )
    if output is not Output.table:
        render.print_data(
            output,
            [
                {
                    "connector_type": t.connector_type,
                    "name": t.name,
                    "resource_types": [rt.resource_type for rt in t.resource_types],
                    "auth_methods": [m.auth_method for m in t.auth_methods],
                    "supports_auto_configuration": t.supports_auto_configuration,
                }
                for t in reply.connector_types
            ],
        )
        return
    render.print_table(
        None,
        ["TYPE", "NAME", "RESOURCE TYPES", "AUTH METHODS", "AUTO-CONFIGURE"],
        [
            (
                t.connector_type,
                t.name,
                "\n".join(rt.resource_type for rt in t.resource_types),
                "\n".join(m.auth_method for m in t.auth_methods),
                "yes" if t.supports_auto_configuration else "no",
            )
            for t in reply.connector_types
        ],
    )


def describe_type(
    connector_type: str,
    resource_type: ResourceTypeOpt = None,
    auth_method: Annotated[str | None, typer.Option("--auth-method", "-a")] = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Describe a connector type, or one of its resource types or auth methods."""
    with connect(socket) as stub:
        t = stub.DescribeConnectorType(
            pb.DescribeConnectorTypeRequest(
                connector_type=connector_type,
                resource_type=resource_type or "",
                auth_method=auth_method or "",
            )
        )
    data = _type_json(t)
    if output is not Output.table:
        render.print_data(output, data)
        return
    render.console.print(f"[bold]{t.name}[/bold] ({t.connector_type}): {t.description}")
    if not auth_method:
        render.print_table(
            "Resource types",
            ["RESOURCE TYPE", "INSTANCES", "ID FORMATS", "DESCRIPTION"],
            [
                (
                    r["resource_type"],
                    "many" if r["supports_instances"] else "one",
                    "\n".join(r["id_formats"]),
                    r["description"],
                )
                for r in data["resource_types"]
            ],
        )
    if resource_type and not auth_method:
        return
    for m in data["auth_methods"]:
        bounds = (
            f"expiration {m['min_expiration_seconds']}..{m['max_expiration_seconds']}s, "
            f"default {m['default_expiration_seconds']}s"
            if m["default_expiration_seconds"]
            else "mints no tokens"
        )
        render.print_table(
            f"Auth method {m['auth_method']}: {m['description']} ({bounds})",
            ["ATTRIBUTE", "KIND", "REQUIRED", "SECRET", "DEFAULT", "DESCRIPTION"],
            [
                (
                    a["name"],
                    a["kind"],
                    "yes" if a["required"] else "",
                    "yes" if a["secret"] else "",
                    a["default"],
                    a["description"],
                )
                for a in m["attributes"]
            ],
        )
