"""Bad input through the real gRPC API: the right status, a message naming the field,
and a store left unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker.api.v1 import broker_pb2 as pb
from tests.daemon import Daemon, running_daemon

CODE = grpc.StatusCode
PW = "pw-Secret-9Z"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("api") / "data") as d:
        with d.stub() as stub:
            stub.RegisterConnector(
                pb.RegisterConnectorRequest(
                    name="hub",
                    connector_type="docker",
                    auth_method="password",
                    config={"username": "u", "password": "p", "registry": "registry.example:5000"},
                    no_verify=True,
                    labels={"team": "a"},
                )
            )
            stub.RegisterConnector(
                pb.RegisterConnectorRequest(
                    name="kube",
                    connector_type="kubernetes",
                    auth_method="token",
                    config={
                        "server": "https://127.0.0.1:1",
                        "token": "t0k",
                        "insecure": "true",
                        "cluster_name": "prod",
                    },
                    no_verify=True,
                )
            )
        yield d


def _register(**kw: Any) -> pb.RegisterConnectorRequest:
    base: dict[str, Any] = {
        "name": "new",
        "connector_type": "docker",
        "auth_method": "password",
        "config": {"username": "u", "password": PW, "registry": "r.example"},
        "no_verify": True,
    }
    base.update(kw)
    return pb.RegisterConnectorRequest(**base)


REGISTER_CASES = [
    ("unknown type", _register(connector_type="nope"), CODE.NOT_FOUND, "connector type 'nope'"),
    (
        "wrong auth method",
        _register(auth_method="token"),
        CODE.INVALID_ARGUMENT,
        "auth method 'token'",
    ),
    (
        "unknown attribute",
        _register(config={"username": "u", "password": "p", "colour": "red"}),
        CODE.INVALID_ARGUMENT,
        "unknown attribute 'colour'",
    ),
    (
        "missing attribute",
        _register(config={"username": "u"}),
        CODE.INVALID_ARGUMENT,
        "attribute 'password' is required",
    ),
    (
        "bad bool",
        _register(config={"username": "u", "password": "p", "insecure": "maybe"}),
        CODE.INVALID_ARGUMENT,
        "'insecure' must be true or false",
    ),
    (
        "bad pem",
        _register(config={"username": "u", "password": "p", "certificate_authority": "xx"}),
        CODE.INVALID_ARGUMENT,
        "certificate_authority",
    ),
    (
        "expiration on a method that mints nothing",
        _register(expiration_seconds=900),
        CODE.INVALID_ARGUMENT,
        "expiration_seconds",
    ),
    ("bad name", _register(name="bad name!"), CODE.INVALID_ARGUMENT, "connector name"),
    ("duplicate", _register(name="hub"), CODE.ALREADY_EXISTS, "connector 'hub' already exists"),
    (
        "unknown resource type",
        _register(resource_type="s3-bucket"),
        CODE.INVALID_ARGUMENT,
        "resource type 's3-bucket'",
    ),
    (
        "id without type, several types",
        _register(
            connector_type="aws",
            auth_method="secret-key",
            config={
                "aws_access_key_id": "AKIAEXAMPLEEXAMPLE12",
                "aws_secret_access_key": PW,
                "region": "eu-west-1",
            },
            resource_id="s3://bucket",
        ),
        CODE.INVALID_ARGUMENT,
        "resource_id",
    ),
    (
        "malformed registry",
        _register(config={"username": "u", "password": "p", "registry": "a b"}),
        CODE.INVALID_ARGUMENT,
        "registry",
    ),
    (
        "kubernetes without token or cert",
        _register(
            connector_type="kubernetes", auth_method="token", config={"server": "https://k:6443"}
        ),
        CODE.INVALID_ARGUMENT,
        "token",
    ),
    ("bad label", _register(labels={"bad key!": "v"}), CODE.INVALID_ARGUMENT, "label"),
    (
        "oversized attribute",
        _register(config={"username": "u" * 300_000, "password": "p"}),
        CODE.INVALID_ARGUMENT,
        "config['username'] is 300000 bytes; at most 65536 are allowed",
    ),
]


def _snapshot(daemon: Daemon) -> list[tuple[str, int]]:
    with daemon.stub() as stub:
        reply = stub.ListConnectors(pb.ListConnectorsRequest())
    return [(c.name, c.revision) for c in reply.connectors]


@pytest.mark.parametrize(
    ("case", "request_", "code", "text"), REGISTER_CASES, ids=[c[0] for c in REGISTER_CASES]
)
def test_register_rejects_bad_input(
    daemon: Daemon, case: str, request_: pb.RegisterConnectorRequest, code: CODE, text: str
) -> None:
    before = _snapshot(daemon)
    with daemon.stub() as stub, pytest.raises(grpc.RpcError) as info:
        stub.RegisterConnector(request_)
    assert info.value.code() == code, info.value.details()
    assert text in info.value.details()
    assert PW not in info.value.details()
    assert _snapshot(daemon) == before


CREDENTIAL_CASES = [
    (
        "unknown connector",
        pb.GetCredentialsRequest(connector="ghost"),
        CODE.NOT_FOUND,
        "connector 'ghost'",
    ),
    (
        "type outside scope",
        pb.GetCredentialsRequest(connector="hub", resource_type="kubernetes-cluster"),
        CODE.INVALID_ARGUMENT,
        "does not serve resource type 'kubernetes-cluster'",
    ),
    (
        "other registry",
        pb.GetCredentialsRequest(connector="hub", resource_id="other.example"),
        CODE.INVALID_ARGUMENT,
        "registry.example:5000",
    ),
    (
        "malformed registry id",
        pb.GetCredentialsRequest(connector="hub", resource_id="::bad::"),
        CODE.INVALID_ARGUMENT,
        "resource_id",
    ),
    (
        "other cluster",
        pb.GetCredentialsRequest(connector="kube", resource_id="staging"),
        CODE.INVALID_ARGUMENT,
        "prod",
    ),
]


@pytest.mark.parametrize(
    ("case", "request_", "code", "text"), CREDENTIAL_CASES, ids=[c[0] for c in CREDENTIAL_CASES]
)
def test_get_credentials_rejects_bad_input(
    daemon: Daemon, case: str, request_: pb.GetCredentialsRequest, code: CODE, text: str
) -> None:
    with daemon.stub() as stub, pytest.raises(grpc.RpcError) as info:
        stub.GetCredentials(request_)
    assert info.value.code() == code, info.value.details()
    assert text in info.value.details()


UPDATE_CASES = [
    ("unknown connector", pb.UpdateConnectorRequest(name="ghost"), CODE.NOT_FOUND, "ghost"),
    (
        "remove a required attribute",
        pb.UpdateConnectorRequest(name="hub", remove_attributes=["password"], no_verify=True),
        CODE.INVALID_ARGUMENT,
        "'password' is required",
    ),
    (
        "remove a missing attribute",
        pb.UpdateConnectorRequest(name="hub", remove_attributes=["nope"], no_verify=True),
        CODE.INVALID_ARGUMENT,
        "no attribute 'nope'",
    ),
    (
        "unknown attribute",
        pb.UpdateConnectorRequest(name="hub", config={"colour": "red"}, no_verify=True),
        CODE.INVALID_ARGUMENT,
        "colour",
    ),
    (
        "wrong auth method",
        pb.UpdateConnectorRequest(name="hub", auth_method="token", no_verify=True),
        CODE.INVALID_ARGUMENT,
        "auth method 'token'",
    ),
]


@pytest.mark.parametrize(
    ("case", "request_", "code", "text"), UPDATE_CASES, ids=[c[0] for c in UPDATE_CASES]
)
def test_update_rejects_bad_input(
    daemon: Daemon, case: str, request_: pb.UpdateConnectorRequest, code: CODE, text: str
) -> None:
    before = _snapshot(daemon)
    with daemon.stub() as stub, pytest.raises(grpc.RpcError) as info:
        stub.UpdateConnector(request_)
    assert info.value.code() == code, info.value.details()
    assert text in info.value.details()
    assert _snapshot(daemon) == before


def test_garbage_bytes_get_a_clean_error_and_the_daemon_survives(daemon: Daemon) -> None:
    with grpc.insecure_channel(f"unix://{daemon.socket}") as channel:
        call = channel.unary_unary("/broker.v1.BrokerService/RegisterConnector")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\x00garbage\x12\x99")
        assert info.value.code() in (CODE.INTERNAL, CODE.INVALID_ARGUMENT, CODE.UNKNOWN)
        too_big = channel.unary_unary("/broker.v1.BrokerService/RegisterConnector")
        with pytest.raises(grpc.RpcError) as info:
            too_big(b"\x0a" + b"\xff" * (5 * 1024 * 1024))
        assert info.value.code() == CODE.RESOURCE_EXHAUSTED
    assert [n for n, _ in _snapshot(daemon)] == ["hub", "kube"]


def test_describe_type_narrows_and_names_unknowns(daemon: Daemon) -> None:
    with daemon.stub() as stub:
        t = stub.DescribeConnectorType(
            pb.DescribeConnectorTypeRequest(connector_type="kubernetes", auth_method="token")
        )
        assert [m.auth_method for m in t.auth_methods] == ["token"]
        secret = {a.name for a in t.auth_methods[0].attributes if a.secret}
        assert "token" in secret
        with pytest.raises(grpc.RpcError) as info:
            stub.DescribeConnectorType(
                pb.DescribeConnectorTypeRequest(connector_type="docker", resource_type="nope")
            )
        assert info.value.code() == CODE.NOT_FOUND
        assert "resource type 'nope'" in info.value.details()


def test_list_filters(daemon: Daemon) -> None:
    with daemon.stub() as stub:

        def names(**kw: Any) -> list[str]:
            return [c.name for c in stub.ListConnectors(pb.ListConnectorsRequest(**kw)).connectors]

        assert names() == ["hub", "kube"]
        assert names(connector_type="kubernetes") == ["kube"]
        assert names(resource_type="docker-registry") == ["hub"]
        assert names(resource_id="registry.example:5000") == ["hub"]
        assert names(resource_id="https://registry.example:5000/v2/") == ["hub"]
        assert names(labels={"team": "a"}) == ["hub"]
        assert names(labels={"team": "b"}) == []
        assert names(auth_method="token") == ["kube"]
        assert names(name="kube") == ["kube"]


def test_secrets_hidden_unless_asked(daemon: Daemon, tmp_path: Path) -> None:
    with daemon.stub() as stub:
        c = stub.GetConnector(pb.GetConnectorRequest(name="hub"))
        assert c.config["password"] == "[HIDDEN]"
        assert c.config["username"] == "u"
        assert list(c.secret_attributes) == ["password"]
        c = stub.GetConnector(pb.GetConnectorRequest(name="hub", show_secrets=True))
        assert c.config["password"] == "p"
        cred = stub.GetCredentials(pb.GetCredentialsRequest(connector="hub", hide_secrets=True))
        assert cred.config["password"] == "[HIDDEN]"
