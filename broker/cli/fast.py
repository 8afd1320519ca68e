"""The `broker` command's entry point, with a fast path for the commands run in loops.

``broker connector list``, ``broker credentials get`` and ``broker status`` are
scripted in loops and typed all day, and must answer within 150 ms and 10× a bare
interpreter. Importing typer (click, and pydantic once it parses arguments), rich
or grpcio each costs more than that here, so when one of these three is called
with nothing but its own options, it is parsed here from a table of those options
and run with only protobuf and the generated messages loaded: gRPC spoken by
:mod:`broker.cli.wire`, JSON printed by :mod:`broker.cli.shapes` and tables drawn
by :mod:`broker.cli.table` (as rich draws them).

``broker __complete WORD...`` (shell completion, :mod:`broker.cli.completion`) is
answered here too. Anything else goes to the typer app in :mod:`broker.cli.main`, unchanged: every
other command, ``--help``, an unknown or repeated option, a missing or odd value,
an output other than ``table`` / ``json`` / ``yaml``. So help and usage errors stay click's,
word for word, and an option added to one of these commands in typer works at
once (through typer) until it is added here. argparse was not used: its help and
error texts are not click's, and declining is both cheaper and exact.
``tests/test_cli_fast.py`` holds the table to the typer declarations.

The three commands' bodies live here; the typer commands call the same functions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from broker.cli.shapes import (
    Output,
    Table,
    connector_json,
    connectors_table,
    credential_json,
    credential_tables,
    parse_pairs,
    print_data,
    properties_table,
)
from broker.errors import BrokerError

if TYPE_CHECKING:
    from pathlib import Path

    from broker.api.v1 import broker_pb2 as pb

T = TypeVar("T")

#: The options every fast command takes: flag -> parameter name (as typer names it).
_COMMON = {"--socket": "socket", "--output": "output", "-o": "output"}
_RESOURCE = {
    "--resource-type": "resource_type",
    "-r": "resource_type",
    "--resource-id": "resource_id",
    "-i": "resource_id",
}

#: command words -> (names of its positional arguments, its options, options given many times)
COMMANDS: dict[tuple[str, ...], tuple[tuple[str, ...], dict[str, str], frozenset[str]]] = {
    ("connector", "list"): (
        (),
        {
            "--name": "name",
            "--type": "connector_type",
            "-t": "connector_type",
            "--auth-method": "auth_method",
            "-a": "auth_method",
            **_RESOURCE,
            "--label": "label",
            "-l": "label",
            **_COMMON,
        },
        frozenset({"label"}),
    ),
    ("credentials", "get"): (("name",), {**_RESOURCE, **_COMMON}, frozenset()),
    ("status",): ((), dict(_COMMON), frozenset()),
}
#: command words -> its options that take no value (flag -> parameter name).
FLAGS: dict[tuple[str, ...], dict[str, str]] = {("credentials", "get"): {"--full": "full"}}


def parse(argv: Sequence[str]) -> tuple[tuple[str, ...], dict[str, Any]] | None:
    """``(command words, parameters)`` as typer would pass them, or None: let typer answer.

    Accepts ``--opt VALUE``, ``--opt=VALUE`` and ``-o VALUE`` / ``-oVALUE``, options and
    arguments in any order (click intersperses them); declines anything else.
    """
    words = next((w for w in COMMANDS if tuple(argv[: len(w)]) == w), None)
    if words is None:
        return None
    positional, options, multiple = COMMANDS[words]
    flags = FLAGS.get(words, {})
    params: dict[str, Any] = {name: None for name in options.values()}
    params.update(dict.fromkeys(flags.values(), False))
    args: list[str] = []
    rest = iter(argv[len(words) :])
    for item in rest:
        if not item.startswith("-") or item == "-":
            args.append(item)
            continue
        if item in flags and not params[flags[item]]:
            params[flags[item]] = True
            continue
        given: str | None
        if item.startswith("--"):
            flag, eq, attached = item.partition("=")
            given = attached if eq else None
        else:  # -oVALUE
            flag, given = item[:2], item[2:] or None
        name = options.get(flag)
        if name is None:
            return None  # --help, --, an unknown option: typer says what it says today
        value = given if given is not None else next(rest, None)
        if value is None or (given is None and value.startswith("-") and value != "-"):
            return None  # click would take "-x" as the value; rare enough to leave to it
        if name in multiple:
            params[name] = [*(params[name] or []), value]
        elif params[name] is not None:
            return None  # repeated: click keeps the last one; leave it to click
        else:
            params[name] = value
    if len(args) != len(positional):
        return None
    params.update(zip(positional, args, strict=True))
    if params["output"] is None:
        params["output"] = Output.table
    elif params["output"] in Output.__members__:
        params["output"] = Output(params["output"])
    else:
        return None
    if params["socket"] is not None:
        from pathlib import Path

        params["socket"] = Path(params["socket"])
    return words, params


def call(socket: Path | None, work: Callable[[Any, Any], T]) -> T:
    """``work(broker_stub, health_stub)`` on one connection to the daemon: over
    :mod:`broker.cli.wire`, or over grpcio when that meets something it does not speak
    (then ``work`` runs again from the start: it only reads)."""
    from grpc_health.v1 import health_pb2

    from broker.api.v1 import broker_pb2 as pb
    from broker.cli import wire

    try:
        with wire.connection(socket) as conn:
            return work(
                wire.Stub(conn, pb.DESCRIPTOR.services_by_name["BrokerService"], pb),
                wire.Stub(conn, health_pb2.DESCRIPTOR.services_by_name["Health"], health_pb2),
            )
    except wire.Unsupported:
        pass
    from grpc_health.v1 import health_pb2_grpc

    from broker.api.v1 import broker_pb2_grpc as pb_grpc
    from broker.cli.client import connection

    with connection(socket) as grpc_conn:
        return work(
            pb_grpc.BrokerServiceStub(grpc_conn.channel),  # type: ignore[no-untyped-call]
            health_pb2_grpc.HealthStub(grpc_conn.channel),
        )


def list_connectors(
    name: str | None,
    connector_type: str | None,
    auth_method: str | None,
    resource_type: str | None,
    resource_id: str | None,
    label: list[str] | None,
    socket: Path | None,
    output: Output,
) -> None:
    """``broker connector list``: every page, then one JSON array or one table."""
    from broker.api.v1 import broker_pb2 as pb

    def work(stub: Any, _health: Any) -> list[pb.Connector]:
        return all_connectors(
            stub,
            pb.ListConnectorsRequest(
                name=name or "",
                connector_type=connector_type or "",
                auth_method=auth_method or "",
                resource_type=resource_type or "",
                resource_id=resource_id or "",
                labels=parse_pairs(label, "label"),
            ),
        )

    connectors = call(socket, work)
    if output is not Output.table:
        print_data(output, [connector_json(c) for c in connectors])
    else:
        _print_tables(connectors_table(connectors))


def all_connectors(stub: Any, request: pb.ListConnectorsRequest) -> list[pb.Connector]:
    """Every page of a ListConnectors answer (the daemon pages them, see broker.rpc.limits)."""
    out: list[pb.Connector] = []
    while True:
        reply = stub.ListConnectors(request)
        out.extend(reply.connectors)
        if not reply.next_page_token:
            return out
        request.page_token = reply.next_page_token


def show_credential(
    name: str,
    resource_type: str | None,
    resource_id: str | None,
    socket: Path | None,
    output: Output,
    *,
    hide_secrets: bool,
    full: bool = False,
) -> None:
    """Fetch and print one client credential (`credentials get`, `connector describe --client`);
    a table shows a PEM as fingerprint + subject unless ``full``."""
    from broker.api.v1 import broker_pb2 as pb

    request = pb.GetCredentialsRequest(
        connector=name,
        resource_type=resource_type or "",
        resource_id=resource_id or "",
        hide_secrets=hide_secrets,
    )
    cred = call(socket, lambda stub, _health: stub.GetCredentials(request))
    if output is not Output.table:
        print_data(output, credential_json(cred))
    elif credential_json(cred)["session_policy"] is not None:
        from broker.cli import render  # rich, for the policy's highlighted JSON

        render.print_credential(cred, full)
    else:
        _print_tables(*credential_tables(cred, full))


#: Seconds `broker status` waits for the health service's answer.
HEALTH_TIMEOUT = 5.0


def status(socket: Path | None, output: Output) -> None:
    """``broker status``: GetStatus and the health service, on one connection."""
    from grpc_health.v1 import health_pb2

    from broker.api.v1 import broker_pb2 as pb

    def work(stub: Any, health: Any) -> tuple[pb.Status, Any]:
        st = stub.GetStatus(pb.GetStatusRequest())
        return st, health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT)

    st, reply = call(socket, work)
    health = str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    data = {
        "health": "DEGRADED" if health == "SERVING" and st.degraded else health,
        "version": st.version,
        "uptime_seconds": round(st.uptime_seconds, 1),
        "connectors": st.connectors,
        "cached_credentials": st.cached_credentials,
        "subscribers": st.subscribers,
        "connector_types": list(st.connector_types),
        "store": st.store,
        "degraded": list(st.degraded),
    }
    if output is not Output.table:
        print_data(output, data)
    else:
        _print_tables(properties_table("Daemon", data))


def _print_tables(*tables: Table) -> None:
    """As rich draws them (broker.cli.table), without loading rich."""
    from broker.cli.table import print_table

    for table in tables:
        print_table(*table)


def _run(words: tuple[str, ...], params: dict[str, Any]) -> None:
    if words == ("connector", "list"):
        list_connectors(**params)
    elif words == ("credentials", "get"):
        show_credential(**params, hide_secrets=False)
    else:
        status(**params)


def main(full: Callable[[], None] | None = None) -> None:
    """Entry point of `broker`: the fast path, else ``full`` (the typer app's main).

    Errors as the typer app prints them: one line on stderr, exit 1.
    """
    if sys.argv[1:2] == ["__complete"]:  # the shell completion scripts' question
        from broker.cli import completion

        completion.run(sys.argv[2:])
        return
    if sys.argv[1:2] == ["exec"]:  # its own parser: the child's argv is not ours to read
        from broker.cli import exec_run

        if exec_run.main(sys.argv[2:]):
            return
    parsed = parse(sys.argv[1:])
    if parsed is None:
        if full is None:
            from broker.cli.main import main as typer_main

            full = typer_main
        full()
        return
    try:
        _run(*parsed)
    except BrokerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a grpc.RpcError, if grpcio was used at all
        grpc = sys.modules.get("grpc")
        if grpc is None or not isinstance(exc, grpc.RpcError):
            raise
        from broker.cli.client import rpc_error

        print(f"error: {rpc_error(exc).message}", file=sys.stderr)
        sys.exit(1)
