"""Who may do what, end to end: real users, real sockets, real certificates.

One daemon serves the gRPC Unix socket, the helper socket and TCP with mutual
TLS, with ``socket_group`` = brokerclients and these rules:

    alice    consumer of connectors app-*
    bob      viewer of everything
    carol    admin
    mallory  in the socket group, no rule
    eve      not in the socket group
    cert spiffe://test.example/app    consumer of app-*
    cert spiffe://test.example/ops    admin

Every cell of the table runs the real CLI or helper as that user (``setpriv``)
and checks the exit code, the message, the audit line with the principal, and
that nothing was written on a denial.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker.api.v1 import broker_pb2 as pb
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from tests.daemon import Daemon, running_daemon
from tests.servers.moto import REGION, MotoServer, shared_moto
from tests.servers.ports import free_port
from tests.servers.tls import (
    CertificateAuthority,
    IssuedCert,
    issue_cert,
    issue_client_cert,
    make_ca,
)
from tests.users import (  # noqa: F401  (pytest fixtures)
    User,
    Users,
    audit_events,
    fixture_users,
    run_as,
    shared_tmp,
    wait_for_audit,
)

APP_ID = "spiffe://test.example/app"
OPS_ID = "spiffe://test.example/ops"


@dataclass
class Setup:
    daemon: Daemon
    users: Users
    socket: Path
    helper_socket: Path
    config: Path
    port: int
    ca: CertificateAuthority
    moto: MotoServer
    registry_host: str

    def env(self) -> dict[str, str]:
        return {"BROKER_SOCKET": str(self.socket), "BROKER_HELPER_SOCKET": str(self.helper_socket)}

    def names(self) -> set[str]:
        return {c["name"] for c in self.daemon.cli_json("connector", "list")}


def policy_toml(users: Users, extra: str = "") -> str:
    return f"""
[[policy.rules]]
selector = "user:{users.alice.name}"
role = "consumer"
connectors = ["app-*"]

[[policy.rules]]
selector = "user:{users.bob.name}"
role = "viewer"

[[policy.rules]]
selector = "uid:{users.carol.uid}"
role = "admin"

[[policy.rules]]
selector = "cert:{APP_ID}"
role = "consumer"
connectors = ["app-*"]

[[policy.rules]]
selector = "cert:spiffe://test.example/o*"
role = "admin"
{extra}"""


@pytest.fixture(scope="module")
def setup(users: Users, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("authz")
    run_dir = shared_tmp(tmp, name="authz-run")
    ca = make_ca()
    server_cert, server_key = issue_cert(ca).write(tmp, "server")
    port = free_port()
    config = tmp / "broker.toml"
    settings = f"""
socket = "{run_dir / "broker.sock"}"
local_socket = "{run_dir / "helper.sock"}"
socket_group = "{users.brokerclients.name}"
tcp = "127.0.0.1:{port}"
tls_cert = "{server_cert}"
tls_key = "{server_key}"
tls_client_ca = "{ca.write(tmp)}"
"""
    config.write_text(settings + policy_toml(users))
    moto = shared_moto()
    key, secret = moto.create_user("authz-app")
    with running_daemon(
        tmp / "data", "--config", str(config), socket=run_dir / "broker.sock"
    ) as daemon:
        s = Setup(
            daemon,
            users,
            run_dir / "broker.sock",
            run_dir / "helper.sock",
            config,
            port,
            ca,
            moto,
            "registry.authz.test:5000",
        )
        daemon.cli(
            "connector",
            "register",
            "app-aws",
            "--type",
            "aws",
            "--auth-method",
            "session-token",
            f"region={REGION}",
            f"endpoint_url={moto.url}",
            f"aws_access_key_id={key}",
            f"aws_secret_access_key={secret}",
            "--no-verify",
        )
        for name, labels in (("app-reg", []), ("ops-reg", ["--label", "team=ops"])):
            daemon.cli(
                "connector",
                "register",
                name,
                "--type",
                "docker",
                "username=robot",
                f"password=pw-{name}",
                f"registry={s.registry_host if name == 'app-reg' else 'ops.authz.test'}",
                *labels,
                "--no-verify",
            )
        yield s


def broker(setup: Setup, who: str, *args: str) -> Any:
    user = setup.users[who]
    return run_as(user, ["broker", *args], env=setup.env())


def denied(result: Any, user: User, permission: str) -> None:
    assert result.returncode == 1, result
    assert "permission denied" in result.stderr, result.stderr
    assert f"uid={user.uid}({user.name})" in result.stderr
    assert f"'{permission}'" in result.stderr
    assert "Traceback" not in result.stderr


# (user, CLI arguments, allowed?, permission named when denied)
TABLE: list[tuple[str, tuple[str, ...], bool, str]] = [
    ("alice", ("connector", "describe", "app-reg"), True, ""),
    ("alice", ("connector", "describe", "ops-reg"), False, "view"),
    ("alice", ("connector", "describe", "no-such"), False, "view"),  # existence not revealed
    ("alice", ("connector", "describe", "app-reg", "--show-secrets"), False, "show-secrets"),
    ("alice", ("credentials", "get", "app-aws", "-r", "aws-generic"), True, ""),
    ("alice", ("credentials", "get", "app-reg"), False, "get-long-lived"),
    ("alice", ("connector", "delete", "app-reg"), False, "manage"),
    ("alice", ("policy", "show"), False, "admin"),
    ("bob", ("connector", "describe", "ops-reg"), True, ""),
    ("bob", ("credentials", "get", "app-aws", "-r", "aws-generic"), False, "get"),
    ("bob", ("connector", "describe", "app-reg", "--show-secrets"), False, "show-secrets"),
    ("bob", ("connector", "update", "ops-reg", "--label", "x=y", "--no-verify"), False, "manage"),
    ("carol", ("connector", "describe", "ops-reg", "--show-secrets"), True, ""),
    ("carol", ("credentials", "get", "app-reg"), True, ""),
    ("carol", ("policy", "show"), True, ""),
    ("mallory", ("connector", "describe", "app-reg"), False, "view"),
    ("mallory", ("credentials", "get", "app-aws", "-r", "aws-generic"), False, "get"),
    ("mallory", ("status",), False, "view"),
    ("mallory", ("outputs", "list"), False, "view"),
    ("mallory", ("config", "show"), False, "admin"),
    ("alice", ("config", "show"), False, "admin"),
    ("alice", ("credentials", "rotate", "app-aws", "-r", "aws-generic"), False, "admin"),
    ("mallory", ("credentials", "rotate", "app-aws", "-r", "aws-generic"), False, "admin"),
    ("mallory", ("credentials", "rotate", "no-such"), False, "admin"),  # existence not revealed
    ("carol", ("config", "show"), True, ""),
    (
        "mallory",
        (
            "connector",
            "register",
            "evil",
            "--type",
            "docker",
            "username=u",
            "password=p",
            "registry=evil.test",
            "--no-verify",
        ),
        False,
        "manage",
    ),
]


@pytest.mark.parametrize(
    ("who", "args", "allowed", "permission"),
    TABLE,
    ids=[
        f"{w}-{'-'.join(a[:2])}{'-secrets' if '--show-secrets' in a else ''}" for w, a, *_ in TABLE
    ],
)
def test_cli_over_the_grpc_unix_socket(
    setup: Setup, who: str, args: tuple[str, ...], allowed: bool, permission: str
) -> None:
    user = setup.users[who]
    before = setup.names()
    result = broker(setup, who, *args)
    if allowed:
        assert result.returncode == 0, result.stderr
        if "--show-secrets" in args:
            assert "pw-ops-reg" in result.stdout
        return
    denied(result, user, permission)
    assert setup.names() == before
    events = wait_for_audit(setup.daemon, "access_denied", uid=user.uid, action=permission)
    assert events[-1]["user"] == user.name
    assert events[-1]["pid"] > 0


def test_lists_show_only_what_a_rule_covers(setup: Setup) -> None:
    def names(who: str) -> set[str]:
        result = broker(setup, who, "connector", "list", "--output", "json")
        assert result.returncode == 0, result.stderr
        return {c["name"] for c in json.loads(result.stdout)}

    assert names("alice") == {"app-aws", "app-reg"}
    assert names("bob") == {"app-aws", "app-reg", "ops-reg"}
    denied(broker(setup, "mallory", "connector", "list"), setup.users.mallory, "view")


def test_an_outsider_cannot_even_connect(setup: Setup) -> None:
    result = broker(setup, "eve", "connector", "list")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "permission" in result.stderr.lower()


def test_issued_credentials_are_audited_with_the_principal(setup: Setup) -> None:
    alice = setup.users.alice
    result = broker(
        setup, "alice", "credentials", "get", "app-aws", "-r", "aws-generic", "-o", "json"
    )
    assert result.returncode == 0, result.stderr
    issued = json.loads(result.stdout)
    assert issued["expires_at"]  # short-lived: STS session keys
    line = wait_for_audit(setup.daemon, "credential_issued", uid=alice.uid, connector="app-aws")[-1]
    assert line["user"] == alice.name and line["pid"] > 0
    assert "via grpc unix socket" in line["principal"]
    assert issued["config"]["aws_secret_access_key"] not in json.dumps(audit_events(setup.daemon))


def test_whoami_reports_the_kernel_identity(setup: Setup) -> None:
    carol = setup.users.carol
    result = broker(setup, "carol", "whoami", "-o", "json")
    assert result.returncode == 0, result.stderr
    me = json.loads(result.stdout)
    assert f"uid:{carol.uid}" in me["selectors"]
    assert f"group:{setup.users.brokerclients.name}" in me["selectors"]
    assert me["roles"] == ["admin"]
    result = broker(setup, "mallory", "whoami", "-o", "json")
    assert json.loads(result.stdout)["roles"] == []


# -- the helper socket -------------------------------------------------------------------


def helper(setup: Setup, who: str, argv: list[str], stdin: str | None = None) -> Any:
    return run_as(setup.users[who], argv, env=setup.env(), input=stdin)


def test_docker_helper_obeys_the_policy(setup: Setup) -> None:
    host = setup.registry_host
    ok = helper(setup, "carol", ["docker-credential-broker", "get"], host)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["Secret"] == "pw-app-reg"
    # A consumer gets only scoped, short-lived credentials: this one is the stored password.
    alice = helper(setup, "alice", ["docker-credential-broker", "get"], host)
    assert alice.returncode == 1
    assert "get-long-lived" in alice.stdout + alice.stderr
    # No rule: docker is told the usual "not found", nothing about which connectors exist.
    mallory = helper(setup, "mallory", ["docker-credential-broker", "get"], host)
    assert mallory.returncode == 1
    assert "credentials not found" in mallory.stdout
    assert "app-reg" not in mallory.stdout + mallory.stderr
    listing = helper(setup, "mallory", ["docker-credential-broker", "list"])
    assert listing.returncode == 0 and json.loads(listing.stdout) == {}
    # list names only the hosts of connectors the caller may get credentials from.
    alice_list = helper(setup, "alice", ["docker-credential-broker", "list"])
    assert json.loads(alice_list.stdout)[host] == "robot"
    assert "ops.authz.test" not in json.loads(alice_list.stdout)
    carol_list = json.loads(helper(setup, "carol", ["docker-credential-broker", "list"]).stdout)
    assert {host, "ops.authz.test"} <= set(carol_list)
    wait_for_audit(setup.daemon, "access_denied", uid=setup.users.alice.uid)


def test_credential_process_helper_as_consumer_and_as_stranger(setup: Setup) -> None:
    argv = ["broker-aws-credential", "app-aws", "--resource-type", "aws-generic"]
    ok = helper(setup, "alice", argv)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["Version"] == 1
    line = wait_for_audit(
        setup.daemon, "credential_issued", uid=setup.users.alice.uid, via="helper"
    )[-1]
    assert "via helper socket" in line["principal"]
    no = helper(setup, "mallory", argv)
    assert no.returncode == 1
    assert "permission denied" in no.stderr and f"uid={setup.users.mallory.uid}" in no.stderr


# -- TCP with mutual TLS -----------------------------------------------------------------


def tls_stub(setup: Setup, cert: IssuedCert | None, ca: CertificateAuthority | None = None):  # type: ignore[no-untyped-def]
    trust = setup.ca.cert_pem.encode()
    if cert is None:
        creds = grpc.ssl_channel_credentials(root_certificates=trust)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=trust,
            private_key=cert.key_pem.encode(),
            certificate_chain=cert.cert_pem.encode(),
        )
    channel = grpc.secure_channel(f"127.0.0.1:{setup.port}", creds)
    return channel, pb_grpc.BrokerServiceStub(channel)  # type: ignore[no-untyped-call]


def test_mtls_identities_get_their_own_permissions(setup: Setup) -> None:
    app = issue_client_cert(setup.ca, "app", uris=(APP_ID,))
    ops = issue_client_cert(setup.ca, "ops", uris=(OPS_ID,))
    channel, stub = tls_stub(setup, app)
    with channel:
        cred = stub.GetCredentials(
            pb.GetCredentialsRequest(connector="app-aws", resource_type="aws-generic"), timeout=20
        )
        assert cred.config["aws_access_key_id"]
        with pytest.raises(grpc.RpcError) as info:
            stub.GetConnector(pb.GetConnectorRequest(name="ops-reg"), timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"cert {APP_ID}" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            stub.DeleteConnector(pb.DeleteConnectorRequest(name="app-reg"), timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    wait_for_audit(setup.daemon, "access_denied", cert_id=APP_ID, action="manage")
    channel, stub = tls_stub(setup, ops)
    with channel:
        shown = stub.GetConnector(pb.GetConnectorRequest(name="ops-reg", show_secrets=True))
        assert shown.config["password"] == "pw-ops-reg"
    wait_for_audit(setup.daemon, "secrets_shown", cert_id=OPS_ID, connector="ops-reg")
    assert setup.names() == {"app-aws", "app-reg", "ops-reg"}


def test_rogue_ca_and_missing_client_certificates_are_refused(setup: Setup) -> None:
    rogue = issue_client_cert(make_ca("rogue CA"), "ops", uris=(OPS_ID,))
    for cert in (rogue, None):
        channel, stub = tls_stub(setup, cert)
        with channel, pytest.raises(grpc.RpcError) as info:
            stub.ListConnectors(pb.ListConnectorsRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- policy tools and reloads ------------------------------------------------------------


def test_policy_check_explains_decisions(setup: Setup) -> None:
    users = setup.users
    ok = setup.daemon.cli("policy", "check", "--user", users.alice.name, "get", "app-aws")
    assert ok.stdout.startswith("ALLOWED")
    no = setup.daemon.cli(
        "policy", "check", "--uid", str(users.mallory.uid), "get", "app-aws", check=False
    )
    assert no.returncode == 1
    assert no.stdout.startswith("DENIED") and "'get'" in no.stdout
    cert = setup.daemon.cli_json("policy", "check", "--cert-id", OPS_ID, "manage", "ops-reg")
    assert cert["allowed"] and cert["rule"] >= 0
    shown = setup.daemon.cli_json("policy", "show")
    assert [r["role"] for r in shown["rules"]][:1] == ["admin"]  # root, built in
    assert any(r.get("selectors") == [f"cert:{APP_ID}"] for r in shown["rules"])


def test_sighup_reloads_a_good_policy_and_keeps_the_old_one_on_a_bad_one(setup: Setup) -> None:
    users = setup.users
    assert setup.daemon.proc is not None
    original = setup.config.read_text()
    try:
        denied(broker(setup, "mallory", "connector", "list"), users.mallory, "view")
        grant = f'\n[[policy.rules]]\nselector = "user:{users.mallory.name}"\nrole = "viewer"\n'
        setup.config.write_text(original + grant)
        setup.daemon.proc.send_signal(signal.SIGHUP)
        _wait_log(setup.daemon, "policy_reloaded", 1)
        assert broker(setup, "mallory", "connector", "list").returncode == 0
        setup.config.write_text(original + grant + '\n[[policy.rules]]\nrole = "root"\n')
        setup.daemon.proc.send_signal(signal.SIGHUP)
        _wait_log(setup.daemon, "policy_reload_failed", 1)
        assert "policy.rules[6].role" in setup.daemon.log()
        assert broker(setup, "mallory", "connector", "list").returncode == 0  # old policy kept
    finally:
        setup.config.write_text(original)
        setup.daemon.proc.send_signal(signal.SIGHUP)
        _wait_log(setup.daemon, "policy_reloaded", 2)
    denied(broker(setup, "mallory", "connector", "list"), users.mallory, "view")


def _wait_log(daemon: Daemon, event: str, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while daemon.log().count(f'"{event}"') < count:
        assert time.monotonic() < deadline, f"no {event} in:\n{daemon.log()[-3000:]}"
        time.sleep(0.05)


# -- plain TCP on loopback ---------------------------------------------------------------


def test_insecure_loopback_tcp_gets_only_what_tcp_anonymous_is_given(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "broker.toml"
    config.write_text("")
    with running_daemon(
        tmp_path / "data", "--config", str(config), "--tcp", f"127.0.0.1:{port}", "--insecure"
    ) as daemon:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.BrokerServiceStub(channel)  # type: ignore[no-untyped-call]
            me = stub.WhoAmI(pb.WhoAmIRequest(), timeout=5)
            assert list(me.selectors) == ["tcp:anonymous"] and not me.roles
            with pytest.raises(grpc.RpcError) as info:
                stub.ListConnectors(pb.ListConnectorsRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            config.write_text('[[policy.rules]]\nselector = "tcp:anonymous"\nrole = "viewer"\n')
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            _wait_log(daemon, "policy_reloaded", 1)
            assert stub.ListConnectors(pb.ListConnectorsRequest(), timeout=5).connectors == []
            with pytest.raises(grpc.RpcError) as info:
                stub.RegisterConnector(
                    pb.RegisterConnectorRequest(
                        name="x",
                        connector_type="docker",
                        no_verify=True,
                        config={"username": "u", "password": "p", "registry": "r.test"},
                    ),
                    timeout=5,
                )
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert daemon.cli_json("connector", "list") == []
