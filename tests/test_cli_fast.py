"""The CLI's fast path (broker/cli/fast.py, wire.py): the same answers and words as typer
and grpcio give, without loading them.

- The fast parser's table is the typer declarations of the three commands, and it
  parses every call it accepts into exactly the parameters click would; anything
  else (help, unknown or repeated options, bad values) is left to typer.
- The stdlib gRPC client (wire) gets the same messages and the same typed errors
  as grpcio from a real daemon; its HPACK decoder handles the dynamic table and
  refuses what it does not speak, and then grpcio runs the command.
- The three commands load neither grpc, typer, click, pydantic nor rich, tables included.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer.main
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker import errors
from broker.api.v1 import broker_pb2 as pb
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from broker.cli import fast, hpack, locate, wire
from broker.cli import main as cli_main
from broker.cli.client import connection as grpc_connection
from broker.rpc.status import error_for
from tests.daemon import BROKER, Daemon, running_daemon


def click_command(words: tuple[str, ...]) -> Any:
    command: Any = typer.main.get_command(cli_main.app)
    for word in words:
        command = command.commands[word]
    return command


@pytest.mark.parametrize("words", list(fast.COMMANDS))
def test_the_table_is_the_typer_declaration(words: tuple[str, ...]) -> None:
    positional, options, multiple = fast.COMMANDS[words]
    command = click_command(words)
    declared = {
        flag: param.name
        for param in command.params
        if param.param_type_name == "option"
        for flag in (*param.opts, *param.secondary_opts)
    }
    assert {**options, **fast.FLAGS.get(words, {})} == declared
    assert positional == tuple(p.name for p in command.params if p.param_type_name == "argument")
    assert multiple == {p.name for p in command.params if getattr(p, "multiple", False)}


ACCEPTED = [
    ["connector", "list"],
    ["connector", "list", "-o", "json"],
    ["connector", "list", "-ojson", "--type=docker", "-l", "a=b", "--label", "c=d"],
    ["connector", "list", "--name", "x", "-t", "aws", "-a", "m", "-r", "rt", "-i", "id"],
    ["connector", "list", "--socket", "/run/x.sock", "--output", "table"],
    ["connector", "list", "--name="],
    ["credentials", "get", "reg"],
    ["credentials", "get", "-r", "docker-registry", "reg", "-i", "h:5000", "-o", "json"],
    ["credentials", "get", "--socket=/s", "-", "--resource-id", "-"],
    ["credentials", "get", "reg", "--full", "-o", "yaml"],
    ["connector", "list", "-o", "yaml"],
    ["status"],
    ["status", "-o", "json", "--socket", "relative/s.sock"],
]


@pytest.mark.parametrize("argv", ACCEPTED, ids=" ".join)
def test_parses_as_click_does(argv: list[str]) -> None:
    parsed = fast.parse(argv)
    assert parsed is not None
    words, params = parsed
    ctx = click_command(words).make_context(words[-1], argv[len(words) :])
    # typer hands a repeatable option given no time to the function as None
    assert params == {k: None if v == () else v for k, v in ctx.params.items()}


DECLINED = [
    [],
    ["--help"],
    ["connector"],
    ["connector", "describe", "x"],
    ["connector", "list", "--help"],
    ["connector", "list", "extra"],
    ["connector", "list", "--nam", "x"],
    ["connector", "list", "--name", "a", "--name", "b"],
    ["connector", "list", "--name"],
    ["connector", "list", "--name", "-x"],
    ["connector", "list", "-o", "JSON"],
    ["connector", "list", "-o", "xml"],
    ["connector", "list", "--", "x"],
    ["connector", "list", "-xo", "json"],
    ["credentials", "get"],
    ["credentials", "get", "a", "b"],
    ["credentials", "get", "-h"],
    ["credentials", "get", "a", "--full", "--full"],
    ["credentials", "watch", "a"],
    ["status", "--socket"],
    ["status", "--timeout", "1"],
    ["health"],
]


@pytest.mark.parametrize("argv", DECLINED, ids=" ".join)
def test_declines_what_typer_should_answer(argv: list[str]) -> None:
    assert fast.parse(argv) is None


def test_help_and_usage_errors_are_typers() -> None:
    for argv, code in ((["connector", "list", "--help"], 0), (["status", "-o", "xml"], 2)):
        result = subprocess.run([*BROKER, *argv], capture_output=True, text=True, timeout=60)
        assert result.returncode == code, result
        if code == 0:
            assert "List connectors, filtered." in result.stdout
            assert "--label" in result.stdout
        else:
            assert "Invalid value for '--output' / '-o'" in result.stderr


def test_error_mapping_is_the_daemons() -> None:
    choice = locate.SocketChoice(Path("/s"), "flag", "given with --socket")
    for code in grpc.StatusCode:
        number = code.value[0]
        assert locate.STATUS_NAMES[number] == code.name
        if code is not grpc.StatusCode.CANCELLED:  # printed "cancelled" by both transports
            typed = locate.call_failure(choice, Path("/s"), number, "x", from_daemon=True)
            assert type(typed) is type(error_for(code, "x"))


# -- HPACK ------------------------------------------------------------------


def test_hpack_integers_and_literals_round_trip() -> None:
    fields = [("a" * 300, "v" * 70000), (":path", "/broker.v1.BrokerService/GetStatus")]
    assert hpack.HeaderDecoder().decode(hpack.encode_headers(fields)) == fields


def test_hpack_dynamic_table_indexing_and_eviction() -> None:
    decoder = hpack.HeaderDecoder()
    # literal with incremental indexing, new name; then the same field by index 62
    block = b"\x40\x0ccontent-type\x10application/grpc"
    assert decoder.decode(block + b"\xbe") == [("content-type", "application/grpc")] * 2
    # indexed name from the static table (31: content-type), indexed again
    assert decoder.decode(b"\x5f\x03x/y\xbe") == [("content-type", "x/y")] * 2
    assert decoder.table[1] == ("content-type", "application/grpc")
    # a size update to 0 empties the table; index 62 is then out of range
    with pytest.raises(hpack.ProtocolError):
        decoder.decode(b"\x20\xbe")
    assert decoder.table == []
    # entries beyond the table's size evict the oldest
    decoder.max_size = 100
    decoder.decode(b"\x40\x01a\x20" + b"x" * 32 + b"\x40\x01b\x20" + b"y" * 32)
    assert decoder.table == [("b", "y" * 32)]
    assert decoder.decode(b"\x88\x0f\x10\x05hello") == [
        (":status", "200"),
        ("content-type", "hello"),
    ]


def test_hpack_huffman_is_left_to_grpcio() -> None:
    with pytest.raises(wire.Unsupported):
        hpack.HeaderDecoder().decode(b"\x40\x82\xab\xcd\x01v")


def test_grpc_message_is_percent_decoded() -> None:
    assert wire.percent_decoded("caf%C3%A9 100%25 %zz %") == "café 100% %zz %"


# -- against a real daemon ----------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("fast") / "data") as d:
        for i in range(3):
            d.cli(
                "connector",
                "register",
                f"reg{i}",
                "--type",
                "docker",
                "username=u",
                "password=p",
                f"registry=r{i}.example:5000",
                "--label",
                f"n={i}",
                "--no-verify",
            )
        yield d


def _both(daemon: Daemon, work: Any) -> tuple[Any, Any]:
    """``work(broker_stub, health_stub)`` over wire, then over grpcio; the two results
    or the two errors."""
    results: list[Any] = []
    for use in ("wire", "grpcio"):
        try:
            if use == "wire":
                with wire.connection(daemon.socket) as conn:
                    out = work(
                        wire.Stub(conn, pb.DESCRIPTOR.services_by_name["BrokerService"], pb),
                        wire.Stub(
                            conn, health_pb2.DESCRIPTOR.services_by_name["Health"], health_pb2
                        ),
                    )
            else:
                with grpc_connection(daemon.socket) as gconn:
                    out = work(
                        pb_grpc.BrokerServiceStub(gconn.channel),  # type: ignore[no-untyped-call]
                        health_pb2_grpc.HealthStub(gconn.channel),
                    )
        except errors.BrokerError as exc:
            out = (type(exc), exc.message)
        results.append(out)
    return results[0], results[1]


def test_wire_answers_as_grpcio(daemon: Daemon) -> None:
    request = pb.ListConnectorsRequest(labels={"n": "1"})
    a, b = _both(daemon, lambda stub, _h: stub.ListConnectors(request))
    assert a == b and [c.name for c in a.connectors] == ["reg1"]
    a, b = _both(
        daemon, lambda stub, _h: fast.all_connectors(stub, pb.ListConnectorsRequest(page_size=1))
    )
    assert a == b and len(a) == 3
    get = pb.GetCredentialsRequest(connector="reg2")
    a, b = _both(daemon, lambda stub, _h: stub.GetCredentials(get))
    assert a == b and a.config["password"] == "p"
    a, b = _both(
        daemon,
        lambda stub, health: (
            stub.GetStatus(pb.GetStatusRequest()).connectors,
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status,
            health.Check(health_pb2.HealthCheckRequest(service="broker.v1.BrokerService")),
        ),
    )
    assert a == b and a[:2] == (3, health_pb2.HealthCheckResponse.SERVING)


def test_wire_fails_as_grpcio(daemon: Daemon) -> None:
    missing = pb.GetCredentialsRequest(connector="nope")
    a, b = _both(daemon, lambda stub, _h: stub.GetCredentials(missing))
    assert a == b == (errors.NotFound, "connector 'nope' not found")
    bad = pb.ListConnectorsRequest(page_size=-1)
    a, b = _both(daemon, lambda stub, _h: stub.ListConnectors(bad))
    assert a == b and a[0] is errors.InvalidArgument
    unknown = health_pb2.HealthCheckRequest(service="no.such.Service")
    a, b = _both(daemon, lambda _s, health: health.Check(unknown))
    assert a == b == (errors.NotFound, "StatusCode.NOT_FOUND")


def test_unsupported_runs_the_command_over_grpcio(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = wire.Connection.call

    def once_unsupported(self: wire.Connection, path: str, *args: Any, **kw: Any) -> bytes:
        calls.append(path)
        if len(calls) == 2:  # the second page: the first was read over wire already
            raise wire.Unsupported("test")
        return real(self, path, *args, **kw)

    monkeypatch.setattr(wire.Connection, "call", once_unsupported)
    listed = fast.call(
        daemon.socket,
        lambda stub, _h: fast.all_connectors(stub, pb.ListConnectorsRequest(page_size=2)),
    )
    assert [c.name for c in listed] == ["reg0", "reg1", "reg2"]
    assert len(calls) == 2


def _serve(path: Path, answer: bytes | None) -> socket.socket:
    """A listener that accepts, reads the client's first bytes, answers ``answer``, closes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                if answer:
                    conn.sendall(answer)

    threading.Thread(target=loop, daemon=True).start()
    return listener


@pytest.mark.parametrize(
    "answer", [None, b"HTTP/1.1 400 Bad Request\r\n\r\n"], ids=["closes", "http1"]
)
def test_something_else_on_the_socket(tmp_path: Path, answer: bytes | None) -> None:
    path = tmp_path / "other.sock"
    listener = _serve(path, answer)
    try:
        result = subprocess.run(
            [*BROKER, "connector", "list", "--socket", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    finally:
        listener.close()
    assert result.returncode == 1
    assert result.stderr == (
        f"error: cannot talk to a daemon at {path} (given with --socket): something accepts "
        "connections there but does not speak the broker's gRPC\n"
    )


LOADED = (
    "import sys\n"
    "from broker.cli import fast\n"
    "sys.argv[1:] = sys.argv[2:]\n"
    "try:\n"
    "    fast.main()\n"
    "finally:\n"
    "    heavy = ('grpc', 'typer', 'click', 'pydantic', 'rich', 'yaml', 'anyio')\n"
    "    print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
)


@pytest.mark.parametrize(
    ("argv", "loaded"),
    [
        (["connector", "list", "-o", "json"], []),
        (["credentials", "get", "reg0", "-o", "json"], []),
        (["status", "-o", "json"], []),
        (["status"], []),
        (["connector", "list"], []),
        (["credentials", "get", "reg0"], []),
    ],
    ids=" ".join,
)
def test_imports_only_what_the_command_needs(
    daemon: Daemon, argv: list[str], loaded: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOADED, "-", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**daemon.env, "BROKER_SOCKET": str(daemon.socket)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == repr(loaded)
