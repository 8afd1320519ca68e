"""The real daemon, driven through the real `broker` CLI, against a real docker-registry."""

from __future__ import annotations

import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from broker.api.v1 import broker_pb2 as pb
from tests.daemon import Daemon, running_daemon
from tests.servers.registry import RegistryServer, start_registry

SECRET = "s3cr3t-Pa55word-zz9"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with start_registry(tmp_path_factory.mktemp("reg"), users={"alice": SECRET}) as r:
        yield r


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with start_registry(tmp_path_factory.mktemp("tlsreg"), users={"bob": SECRET}, tls=True) as r:
        yield r


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path / "data") as d:
        yield d


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the tests that check no whole listing (a start costs ~1.4 s);
    ``daemon`` for those that list every connector or stop it."""
    with running_daemon(tmp_path_factory.mktemp("shared") / "data") as d:
        yield d


def test_register_describe_get_update_delete_docker(
    daemon: Daemon, registry: RegistryServer
) -> None:
    reg = daemon.cli_json(
        "connector",
        "register",
        "local",
        "--type",
        "docker",
        "--label",
        "env=dev",
        "username=alice",
        f"password={SECRET}",
        f"registry=http://{registry.address}/v2/",
    )
    assert (
        reg["connector"]["resource_id"] is None
        or reg["connector"]["resource_id"] == registry.address
    )
    assert reg["resources"] == [
        {
            "connector": "local",
            "connector_type": "docker",
            "resource_type": "docker-registry",
            "resource_ids": [registry.address],
            "error": None,
        }
    ]

    listed = daemon.cli_json("connector", "list")
    assert [c["name"] for c in listed] == ["local"]
    described = daemon.cli_json("connector", "describe", "local")
    assert described["config"]["password"] == "[HIDDEN]"
    assert described["labels"] == {"env": "dev"}
    assert set(described) >= {
        "name",
        "id",
        "connector_type",
        "auth_method",
        "resource_types",
        "resource_id",
        "expiration_seconds",
        "expires_at",
        "labels",
        "config",
    }
    shown = daemon.cli_json("connector", "describe", "local", "--show-secrets")
    assert shown["config"]["password"] == SECRET

    cred = daemon.cli_json("credentials", "get", "local", "--resource-type", "docker-registry")
    assert cred == {
        "connector": "local",
        "connector_type": "docker",
        "auth_method": "password",
        "resource_type": "docker-registry",
        "resource_id": registry.address,
        "expires_at": None,
        "config": cred["config"],
        "session_policy": None,
    }
    assert cred["config"]["username"] == "alice"
    assert cred["config"]["password"] == SECRET
    audit = [line for line in daemon.log().splitlines() if "credential_issued" in line]
    assert audit and '"connector": "local"' in audit[-1] and SECRET not in audit[-1]

    updated = daemon.cli_json(
        "connector", "update", "local", "--label", "env=prod", "--remove-label", "nope"
    )
    assert updated["connector"]["labels"] == {"env": "prod"}
    assert updated["connector"]["revision"] == described["revision"] + 1

    table = daemon.cli("connector", "list").stdout
    assert "local" in table and "docker" in table

    daemon.cli("connector", "delete", "local")
    missing = daemon.cli("connector", "describe", "local", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: connector 'local' not found"
    assert "Traceback" not in missing.stderr
    assert SECRET not in daemon.log()


def test_wrong_password_refused_and_nothing_stored(
    daemon: Daemon, registry: RegistryServer
) -> None:
    result = daemon.cli(
        "connector",
        "register",
        "bad",
        "--type",
        "docker",
        "username=alice",
        "password=wrong-password-123",
        f"registry={registry.address}",
        check=False,
    )
    assert result.returncode == 1
    assert "refused the credentials" in result.stderr
    assert "wrong-password-123" not in result.stderr
    assert daemon.cli_json("connector", "list") == []
    # --no-verify stores it; verify then reports the refusal per type and exits 1.
    daemon.cli(
        "connector",
        "register",
        "bad",
        "--type",
        "docker",
        "username=alice",
        "password=wrong-password-123",
        f"registry={registry.address}",
        "--no-verify",
    )
    verify = daemon.cli("connector", "verify", "bad", "--output", "json", check=False)
    assert verify.returncode == 1
    assert "refused the credentials" in verify.stdout


def test_tls_registry_with_ca_file_and_insecure(
    daemon: Daemon, tls_registry: RegistryServer, tmp_path: Path
) -> None:
    assert tls_registry.ca is not None
    ca_file = tls_registry.ca.write(tmp_path)
    daemon.cli(
        "connector",
        "register",
        "tls",
        "--type",
        "docker",
        "username=bob",
        f"password={SECRET}",
        f"registry=https://{tls_registry.address}",
        f"certificate_authority=@{ca_file}",
    )
    no_ca = daemon.cli(
        "connector",
        "register",
        "tls2",
        "--type",
        "docker",
        "username=bob",
        f"password={SECRET}",
        f"registry=https://{tls_registry.address}",
        check=False,
    )
    assert no_ca.returncode == 1
    assert "certificate" in no_ca.stderr.lower()
    daemon.cli(
        "connector",
        "register",
        "tls3",
        "--type",
        "docker",
        "username=bob",
        f"password={SECRET}",
        f"registry=https://{tls_registry.address}",
        "insecure=true",
    )
    assert [c["name"] for c in daemon.cli_json("connector", "list")] == ["tls", "tls3"]


def test_restart_keeps_connectors_and_secrets_encrypted(
    tmp_path: Path, registry: RegistryServer
) -> None:
    data = tmp_path / "data"
    with running_daemon(data) as d:
        d.cli(
            "connector",
            "register",
            "keep",
            "--type",
            "docker",
            "username=alice",
            f"password={SECRET}",
            f"registry={registry.address}",
        )
        assert d.stop() == 0
    raw = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("broker.db"))
    assert SECRET.encode() not in raw
    assert b"alice" in raw
    assert stat.S_IMODE((data / "secret.key").stat().st_mode) == 0o600
    with running_daemon(data) as d:
        cred = d.cli_json("credentials", "get", "keep")
        assert cred["config"]["password"] == SECRET
        mode = stat.S_IMODE(d.socket.stat().st_mode)
        assert mode == 0o660


def test_health_reflection_and_status(shared: Daemon) -> None:
    daemon = shared
    with grpc.insecure_channel(f"unix://{daemon.socket}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="broker.v1.BrokerService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in responses[0].list_services_response.service}
        assert "broker.v1.BrokerService" in names
        assert "grpc.health.v1.Health" in names
    status = daemon.cli_json("status")
    assert status["health"] == "SERVING"
    assert {"docker", "kubernetes"} <= set(status["connector_types"])


def test_sigterm_drains_in_flight_and_exits_cleanly(daemon: Daemon) -> None:
    """A verify that is still waiting on its upstream when SIGTERM arrives completes."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    arrived, release = threading.Event(), threading.Event()

    class SlowRegistry(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            arrived.set()
            release.wait(10)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), SlowRegistry)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{upstream.server_address[1]}"
        daemon.cli(
            "connector",
            "register",
            "slow",
            "--type",
            "docker",
            "username=u",
            "password=p",
            f"registry={address}",
            "--no-verify",
        )
        assert daemon.proc is not None
        with daemon.stub() as stub:
            future = stub.VerifyConnector.future(pb.VerifyConnectorRequest(name="slow"))
            assert arrived.wait(10), "the verify never reached the upstream"
            daemon.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # the daemon is draining: the call is still open
            assert not future.done()
            release.set()
            reply = future.result(timeout=10)
        assert reply.ok and list(reply.resources[0].resource_ids) == [address]
        assert daemon.proc.wait(15) == 0
    finally:
        release.set()
        upstream.shutdown()
        upstream.server_close()
    assert not daemon.socket.exists()
    assert "daemon_stopped" in daemon.log()


def test_cli_reports_a_missing_daemon(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "nothing")
    result = d.cli("connector", "list", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: daemon not running at {d.socket}")


def test_tcp_without_tls_refused_off_loopback(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "data")
    with pytest.raises(RuntimeError, match="refused on non-loopback"):
        d.start("--tcp", "0.0.0.0:0", "--insecure", timeout=10)
    d2 = Daemon(tmp_path / "data2")
    with pytest.raises(RuntimeError, match="tls_cert"):
        d2.start("--tcp", "127.0.0.1:0", timeout=10)


def test_kubernetes_connector_verify_and_auto_configure(shared: Daemon, tmp_path: Path) -> None:
    daemon = shared
    from tests.servers.kube_api import KubeApiServer

    with KubeApiServer(tokens={"good-token-123": "alice"}) as api:
        ca = tmp_path / "ca.pem"
        ca.write_text(api.ca_pem)
        reg = daemon.cli_json(
            "connector",
            "register",
            "k",
            "--type",
            "kubernetes",
            "--auth-method",
            "token",
            f"server={api.url}",
            "token=good-token-123",
            f"certificate_authority=@{ca}",
            "cluster_name=dev",
        )
        assert reg["resources"][0]["resource_ids"] == ["dev"]
        bad = daemon.cli(
            "connector",
            "register",
            "k2",
            "--type",
            "kubernetes",
            "--auth-method",
            "token",
            f"server={api.url}",
            "token=bad-token-456",
            f"certificate_authority=@{ca}",
            check=False,
        )
        assert bad.returncode == 1
        assert "refused the credentials" in bad.stderr
        assert "bad-token-456" not in bad.stderr

        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token="good-token-123")
        auto = daemon.cli_json(
            "connector",
            "register",
            "auto",
            "--type",
            "kubernetes",
            "--auto-configure",
            env={"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)},
        )
        assert auto["connector"]["auth_method"] == "token"
        assert auto["connector"]["config"]["token"] == "[HIDDEN]"
        assert auto["resources"][0]["error"] is None
        cred = daemon.cli_json("credentials", "get", "auto")
        assert cred["connector_type"] == "kubernetes"
        assert cred["config"]["token"] == "good-token-123"
        assert cred["config"]["server"] == api.url
        assert "good-token-123" not in daemon.log()


def test_tcp_with_mutual_tls(tmp_path: Path) -> None:
    from tests.servers.ports import free_port
    from tests.servers.tls import issue_cert, issue_client_cert, make_ca

    ca = make_ca()
    server = issue_cert(ca)
    cert, key = server.write(tmp_path, "server")
    ca_file = ca.write(tmp_path)
    port = free_port()
    config = tmp_path / "broker.toml"
    config.write_text('[[policy.rules]]\nselector = "cert:ci-runner"\nrole = "admin"\n')
    with running_daemon(
        tmp_path / "data",
        "--config",
        str(config),
        "--tcp",
        f"127.0.0.1:{port}",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--tls-client-ca",
        str(ca_file),
    ) as daemon:
        client = issue_client_cert(ca, "ci-runner")
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.cert_pem.encode(),
            private_key=client.key_pem.encode(),
            certificate_chain=client.cert_pem.encode(),
        )
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            from broker.api.v1 import broker_pb2_grpc as pb_grpc

            stub = pb_grpc.BrokerServiceStub(channel)
            stub.RegisterConnector(
                pb.RegisterConnectorRequest(
                    name="d",
                    connector_type="docker",
                    no_verify=True,
                    config={"username": "u", "password": "p", "registry": "r.example"},
                )
            )
            assert (
                stub.GetCredentials(pb.GetCredentialsRequest(connector="d")).config["username"]
                == "u"
            )
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.encode())
        with grpc.secure_channel(f"127.0.0.1:{port}", anonymous) as channel:
            from broker.api.v1 import broker_pb2_grpc as pb_grpc

            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.BrokerServiceStub(channel).ListConnectors(
                    pb.ListConnectorsRequest(), timeout=5
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "ci-runner" in daemon.log()  # the audit event names the mTLS identity


def test_list_types_and_describe_type(shared: Daemon) -> None:
    daemon = shared
    types = {t["connector_type"]: t for t in daemon.cli_json("connector", "list-types")}
    assert {"aws", "gcp", "docker", "kubernetes"} <= set(types)
    assert types["docker"]["resource_types"] == ["docker-registry"]
    assert "session-token" in types["aws"]["auth_methods"]
    only = daemon.cli_json("connector", "list-types", "--resource-type", "s3-bucket")
    assert [t["connector_type"] for t in only] == ["aws"]
    iam = daemon.cli_json("connector", "describe-type", "aws", "--auth-method", "iam-role")
    method = iam["auth_methods"][0]
    assert method["auth_method"] == "iam-role"
    assert (method["min_expiration_seconds"], method["default_expiration_seconds"]) == (900, 3600)
    secret = {a["name"] for a in method["attributes"] if a["secret"]}
    assert "aws_secret_access_key" in secret
    table = daemon.cli("connector", "describe-type", "kubernetes").stdout
    assert "kubernetes-cluster" in table and "token" in table
    unknown = daemon.cli("connector", "describe-type", "nope", check=False)
    assert unknown.returncode == 1 and "unknown connector type 'nope'" in unknown.stderr


def test_a_failed_start_closes_what_it_opened_and_never_takes_a_live_socket(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path / "first") as first:
        second = Daemon(tmp_path / "second")
        second.data_dir.mkdir()
        with second.log_path.open("ab") as log:
            proc = subprocess.run(
                [
                    *second.command,
                    "serve",
                    "--data-dir",
                    str(second.data_dir),
                    "--socket",
                    str(first.socket),
                ],
                stdout=log,
                stderr=log,
                env=second.env,
                timeout=60,
            )
        assert proc.returncode == 1
        assert f"another daemon is already listening on {first.socket}" in second.log()
        assert "Traceback" not in second.log()
        # The first daemon's socket is still there and still answers.
        assert first.socket.exists()
        assert first.cli_json("status")["health"] == "SERVING"
        assert "daemon_stopped" in second.log()  # the store and providers were closed
