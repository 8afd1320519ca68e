"""`broker policy show|check` and `broker whoami`: what the daemon's access policy decides."""

from __future__ import annotations

from typing import Annotated

import typer

from broker.cli import render
from broker.cli.client import connect
from broker.cli.options import Output, OutputOpt, ResourceIdOpt, ResourceTypeOpt, SocketOpt
from broker.errors import InvalidArgument

app = typer.Typer(no_args_is_help=True, help="Inspect the access policy (admin only).")


@app.command("show")
def show(socket: SocketOpt = None, output: OutputOpt = Output.table) -> None:
    """Every rule in order (built-in first), and the actions each role includes."""
    from google.protobuf.json_format import MessageToDict

    from broker.api.v1 import broker_pb2 as pb

    with connect(socket) as stub:
        policy = stub.GetPolicy(pb.GetPolicyRequest())
    if output is not Output.table:
        data = MessageToDict(policy, preserving_proto_field_name=True)
        data.setdefault("rules", [])
        render.print_data(output, data)
        return
    rows = []
    for index, rule in enumerate(policy.rules):
        scope = []
        if rule.connectors:
            scope.append("connectors=" + ",".join(rule.connectors))
        if rule.labels:
            scope.append("labels=" + ",".join(f"{k}={v}" for k, v in sorted(rule.labels.items())))
        if rule.resource_types:
            scope.append("types=" + ",".join(rule.resource_types))
        if rule.resource_ids:
            scope.append("ids=" + ",".join(rule.resource_ids))
        if rule.long_lived_secrets:
            scope.append("long-lived secrets")
        rows.append(
            (index, rule.role, " & ".join(rule.selectors), "; ".join(scope) or "all", rule.source)
        )
    render.print_table("Rules", ["#", "ROLE", "SELECTORS", "SCOPE", "SOURCE"], rows)
    render.print_table(
        "Actions", ["ACTION", "ROLES"], sorted((k, v) for k, v in policy.actions.items())
    )


@app.command("check")
def check(
    action: Annotated[str, typer.Argument(help="view, get, watch, manage, show-secrets, …")],
    connector: Annotated[str | None, typer.Argument(help="Connector name")] = None,
    uid: Annotated[int | None, typer.Option("--uid", help="A local uid")] = None,
    user: Annotated[str | None, typer.Option("--user", help="A local user name")] = None,
    cert_id: Annotated[
        str | None, typer.Option("--cert-id", help="A client certificate identity")
    ] = None,
    selector: Annotated[
        list[str] | None,
        typer.Option(
            "--selector",
            "-s",
            help="A selector the subject has too, e.g. an attested k8s:ns:ml (repeatable); "
            "alone: a subject with only these",
        ),
    ] = None,
    resource_type: ResourceTypeOpt = None,
    resource_id: ResourceIdOpt = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Explain whether a principal may do ACTION (to CONNECTOR); exit 1 when denied."""
    from broker.api.v1 import broker_pb2 as pb

    subjects = sum(x is not None for x in (uid, user, cert_id))
    if subjects > 1 or (subjects == 0 and not selector):
        raise InvalidArgument(
            "give one of --uid, --user or --cert-id, and/or --selector", field="uid"
        )
    request = pb.CheckPolicyRequest(
        user=user or "",
        cert_id=cert_id or "",
        action=action,
        connector=connector or "",
        resource_type=resource_type or "",
        resource_id=resource_id or "",
        selectors=selector or [],
    )
    if uid is not None:
        request.uid = uid
    with connect(socket) as stub:
        decision = stub.CheckPolicy(request)
    if output is not Output.table:
        render.print_data(
            output,
            {
                "allowed": decision.allowed,
                "principal": decision.principal,
                "reason": decision.reason,
                "rule": decision.rule,
            },
        )
    else:
        verdict = "ALLOWED" if decision.allowed else "DENIED"
        print(f"{verdict}: {decision.principal}")
        print(decision.reason)
    if not decision.allowed:
        raise typer.Exit(1)


def whoami(socket: SocketOpt = None, output: OutputOpt = Output.table) -> None:
    """Who the daemon sees calling (from the kernel or your certificate) and your roles."""
    from broker.api.v1 import broker_pb2 as pb

    with connect(socket) as stub:
        identity = stub.WhoAmI(pb.WhoAmIRequest())
    data = {
        "principal": identity.principal,
        "selectors": list(identity.selectors),
        "roles": list(identity.roles),
    }
    if output is not Output.table:
        render.print_data(output, data)
        return
    render.print_table(
        "Caller",
        ["PROPERTY", "VALUE"],
        [(k, ", ".join(v) if isinstance(v, list) else v or "-") for k, v in data.items()],
    )
