"""Request limits, decoding and paged listings through the real gRPC API (broker.rpc.limits).

Every string field of every request has a maximum; larger values are INVALID_ARGUMENT
naming the field and nothing is written. Undecodable requests are INVALID_ARGUMENT,
not UNKNOWN. ListConnectors answers in pages that the CLI follows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker.api.v1 import broker_pb2 as pb
from broker.rpc import limits
from tests.daemon import Daemon, running_daemon

CODE = grpc.StatusCode
ROOT = Path(__file__).resolve().parents[1]
DOCKER = {"username": "u", "password": "pw-Secret-9Z", "registry": "127.0.0.1:1"}
COUNT = 250


def listing(stub: Any, **kw: Any) -> list[pb.Connector]:
    out: list[pb.Connector] = []
    request = pb.ListConnectorsRequest(**kw)
    while True:
        reply = stub.ListConnectors(request)
        out.extend(reply.connectors)
        if not reply.next_page_token:
            return out
        request.page_token = reply.next_page_token


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("limits") / "data") as d:
        with d.stub() as stub:
            for i in range(COUNT):
                stub.RegisterConnector(
                    pb.RegisterConnectorRequest(
                        name=f"c{i:03d}",
                        connector_type="docker",
                        config=DOCKER,
                        no_verify=True,
                        description="d" * 1024,  # at the limit: accepted
                    )
                )
        yield d


# -- the table --------------------------------------------------------------------------


def test_every_string_field_of_every_request_has_a_limit() -> None:
    for method, cls in limits.request_types().items():
        for field in cls.DESCRIPTOR.fields:
            if field.message_type is not None and not field.message_type.GetOptions().map_entry:
                # Nested messages (Timestamp) hold no strings.
                assert all(f.type != f.TYPE_STRING for f in field.message_type.fields), (
                    f"{method}.{field.name}"
                )
                continue
            is_text = field.type in (field.TYPE_STRING, field.TYPE_BYTES)
            if is_text or field.message_type is not None:
                assert field.name in limits.LIMITS, f"{method}.{field.name} has no limit"


def test_the_readme_documents_the_limits() -> None:
    readme = (ROOT / "README.md").read_text()
    for phrase in (
        "| `name`, `connector` | 64 B |",
        "| `description` | 1 KiB |",
        "| `labels` | 64 entries; keys and values 256 B each |",
        "| `config` | 64 entries; keys 256 B, values 64 KiB |",
        "| the whole request | 1 MiB |",
    ):
        assert phrase in readme, phrase


# -- oversized fields -------------------------------------------------------------------


def _register(**kw: Any) -> pb.RegisterConnectorRequest:
    base: dict[str, Any] = {
        "name": "fresh",
        "connector_type": "docker",
        "config": DOCKER,
        "no_verify": True,
    }
    base.update(kw)
    return pb.RegisterConnectorRequest(**base)


TOO_BIG: list[tuple[str, str, Any, str]] = [
    ("name", "RegisterConnector", _register(name="n" * 65), "field 'name' is 65 bytes"),
    (
        "description",
        "RegisterConnector",
        _register(description="é" * 513),
        "field 'description' is 1026 bytes; at most 1024 are allowed",
    ),
    (
        "label value",
        "RegisterConnector",
        _register(labels={"team": "v" * 257}),
        "labels['team'] is 257 bytes; at most 256 are allowed",
    ),
    (
        "label key",
        "RegisterConnector",
        _register(labels={"k" * 257: "v"}),
        "a key of 'labels' is 257 bytes",
    ),
    (
        "label count",
        "RegisterConnector",
        _register(labels={f"k{i}": "v" for i in range(65)}),
        "field 'labels' has 65 entries; at most 64 are allowed",
    ),
    (
        "config value",
        "RegisterConnector",
        _register(config={**DOCKER, "password": "s" * (64 * 1024 + 1)}),
        "config['password'] is 65537 bytes; at most 65536 are allowed",
    ),
    (
        "update description",
        "UpdateConnector",
        pb.UpdateConnectorRequest(name="c000", description="x" * 1025, no_verify=True),
        "field 'description' is 1025 bytes",
    ),
    (
        "remove_labels",
        "UpdateConnector",
        pb.UpdateConnectorRequest(name="c000", remove_labels=["r" * 300]),
        "an entry of 'remove_labels' is 300 bytes",
    ),
    (
        "resource_id",
        "GetCredentials",
        pb.GetCredentialsRequest(connector="c000", resource_id="i" * 1025),
        "field 'resource_id' is 1025 bytes",
    ),
    (
        "page_token",
        "ListConnectors",
        pb.ListConnectorsRequest(page_token="t" * 257),
        "field 'page_token' is 257 bytes",
    ),
    (
        "cert_id",
        "CheckPolicy",
        pb.CheckPolicyRequest(cert_id="c" * 2049, action="get"),
        "field 'cert_id' is 2049 bytes",
    ),
]


@pytest.mark.parametrize(
    ("case", "method", "request_", "message"), TOO_BIG, ids=[c[0] for c in TOO_BIG]
)
def test_oversized_fields_are_refused_naming_the_field(
    daemon: Daemon, case: str, method: str, request_: Any, message: str
) -> None:
    with daemon.stub() as stub:
        before = listing(stub)
        with pytest.raises(grpc.RpcError) as info:
            getattr(stub, method)(request_)
        assert info.value.code() == CODE.INVALID_ARGUMENT
        assert message in info.value.details()
        assert "s" * 100 not in info.value.details()  # never the (secret) value itself
        assert listing(stub) == before


def test_a_3_mib_description_is_refused_at_register(daemon: Daemon) -> None:
    with daemon.stub() as stub:
        with pytest.raises(grpc.RpcError) as info:
            stub.RegisterConnector(_register(name="huge", description="x" * (3 << 20)))
        # Over the 1 MiB request limit: gRPC refuses it before the broker reads it.
        assert info.value.code() == CODE.RESOURCE_EXHAUSTED
        assert "1048576" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.GetConnector(pb.GetConnectorRequest(name="huge"))
        assert info.value.code() == CODE.NOT_FOUND


# -- undecodable requests ---------------------------------------------------------------

GARBAGE = [
    ("bad UTF-8 in a string", b"\x0a\x02\xff\xfe", "String field had bad UTF-8"),
    ("truncated field", b"\x0a\x09abc", "Wire format was corrupt"),
    ("bad tag", b"\xff\xff\xff", "Wire format was corrupt"),
]


@pytest.mark.parametrize("method", ["GetConnector", "WatchCredentials", "ListResources"])
@pytest.mark.parametrize(("case", "raw", "reason"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_undecodable_requests_are_invalid_argument(
    daemon: Daemon, method: str, case: str, raw: bytes, reason: str
) -> None:
    streaming = method in ("WatchCredentials", "ListResources")
    with grpc.insecure_channel(f"unix://{daemon.socket}") as channel:
        path = f"/broker.v1.BrokerService/{method}"
        call = channel.unary_stream(path) if streaming else channel.unary_unary(path)
        with pytest.raises(grpc.RpcError) as info:
            result = call(raw, timeout=10)
            if streaming:
                list(result)
    assert info.value.code() == CODE.INVALID_ARGUMENT
    request_type = limits.request_types()[method].DESCRIPTOR.full_name
    assert info.value.details() == f"the request is not a valid {request_type}: {reason}"
    assert "Traceback" not in daemon.log()


# -- pages ------------------------------------------------------------------------------


def test_a_listing_of_250_connectors_arrives_in_pages(daemon: Daemon) -> None:
    with daemon.stub() as stub:
        sizes, names, token = [], [], ""
        while True:
            reply = stub.ListConnectors(pb.ListConnectorsRequest(page_token=token))
            sizes.append(len(reply.connectors))
            names += [c.name for c in reply.connectors]
            token = reply.next_page_token
            if not token:
                break
        assert sizes == [100, 100, 50]
        assert names == [f"c{i:03d}" for i in range(COUNT)]
        assert (
            len(stub.ListConnectors(pb.ListConnectorsRequest(page_size=10_000)).connectors) == 250
        )
        seven = stub.ListConnectors(pb.ListConnectorsRequest(page_size=7, labels={}))
        assert [c.name for c in seven.connectors] == [f"c{i:03d}" for i in range(7)]
        after = stub.ListConnectors(pb.ListConnectorsRequest(page_token=seven.next_page_token))
        assert after.connectors[0].name == "c007"
        # A filter applies before paging: one page, no token.
        one = stub.ListConnectors(pb.ListConnectorsRequest(name="c123"))
        assert [c.name for c in one.connectors] == ["c123"] and one.next_page_token == ""
        for bad, field in (
            (pb.ListConnectorsRequest(page_size=-1), "page_size"),
            (pb.ListConnectorsRequest(page_token="%%%"), "page_token"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListConnectors(bad)
            assert info.value.code() == CODE.INVALID_ARGUMENT
            assert field in info.value.details()


def test_the_cli_follows_the_pages(daemon: Daemon) -> None:
    listed = json.loads(daemon.cli("connector", "list", "--output", "json").stdout)
    assert [c["name"] for c in listed] == [f"c{i:03d}" for i in range(COUNT)]


def test_a_page_stops_at_its_byte_budget() -> None:
    big = 600 * 1024
    items = [f"n{i}" for i in range(10)]

    def build(name: str) -> pb.Connector:
        return pb.Connector(name=name, description="x" * big)

    pages, token = [], ""
    while True:
        page, token = limits.paged(items, lambda n: n, build, 0, token)
        pages.append([c.name for c in page])
        assert sum(c.ByteSize() for c in page) <= limits.PAGE_BYTES
        if not token:
            break
    assert pages == [["n0", "n1", "n2"], ["n3", "n4", "n5"], ["n6", "n7", "n8"], ["n9"]]
    # One item over the budget still gets a page of its own.
    page, token = limits.paged(
        ["a", "b"],
        lambda n: n,
        lambda n: pb.Connector(name=n, description="y" * (limits.PAGE_BYTES + 1)),
        0,
        "",
    )
    assert [c.name for c in page] == ["a"] and token
    assert limits.paged([], lambda n: n, build, 0, "") == ([], "")
