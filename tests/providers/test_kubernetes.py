"""The kubernetes connector type against a real TLS test API server that checks credentials."""

from __future__ import annotations

import base64
import socket
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.attributes import parse_value
from broker.clock import FakeClock
from broker.errors import (
    CredentialsRejected,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    UpstreamError,
)
from broker.model import AutoConfigureOptions, Connector, Value
from broker.providers.base import ProviderContext
from broker.providers.kubernetes import RESOURCE_TYPE, SPEC, KubernetesProvider
from tests.providers.connectors import make_connector as stored_connector
from tests.servers.kube_api import KubeApiServer
from tests.servers.ports import free_port
from tests.servers.tls import (
    CertificateAuthority,
    IssuedCert,
    issue_client_cert,
    make_ca,
)

TOKEN = "s3cr3t-bearer-token-value"
PASSWORD = "hunter2-but-longer"
KT = RESOURCE_TYPE


def make_connector(method: str, name: str = "kc", **raw: Value) -> Connector:
    """A connector whose config went through the same attribute parsing as a register call."""
    spec = SPEC.auth_method(method)
    assert spec is not None
    unknown = set(raw) - {a.name for a in spec.attributes}
    assert not unknown, f"test uses attributes the spec lacks: {unknown}"
    config: dict[str, Value] = {}
    for attr in spec.attributes:
        if attr.name in raw:
            config[attr.name] = parse_value(attr, raw[attr.name])
        elif attr.default is not None:
            config[attr.name] = attr.default
    now = datetime(2030, 1, 1, tzinfo=UTC)
    return stored_connector("kubernetes", method, config, name=name, resource_type=KT, now=now)


@pytest.fixture(scope="module")
def client_ca() -> CertificateAuthority:
    return make_ca("broker test kube client CA")


@pytest.fixture(scope="module")
def alice(client_ca: CertificateAuthority) -> IssuedCert:
    return issue_client_cert(client_ca, "alice")


@pytest.fixture
def api(client_ca: CertificateAuthority) -> Iterator[KubeApiServer]:
    with KubeApiServer(
        tokens={TOKEN: "bob"}, basic={"carol": PASSWORD}, client_ca=client_ca
    ) as server:
        yield server


@pytest.fixture
def provider() -> KubernetesProvider:
    return KubernetesProvider(ProviderContext(clock=FakeClock(), request_timeout=5.0))


# -- verification against the test API server ---------------------------------------------


@pytest.mark.anyio
async def test_verify_with_the_right_token_lists_the_cluster(
    api: KubeApiServer, provider: KubernetesProvider
) -> None:
    connector = make_connector(
        "token", server=api.url, token=TOKEN, certificate_authority=api.ca_pem, cluster_name="dev"
    )
    assert await provider.discover(connector, KT, None) == ["dev"]
    assert api.users == ["bob"]
    assert api.count(401) == 0


@pytest.mark.anyio
async def test_wrong_token_is_rejected_without_echoing_it(
    api: KubeApiServer, provider: KubernetesProvider
) -> None:
    wrong = "wrong-token-that-must-not-leak"
    connector = make_connector(
        "token", server=api.url, token=wrong, certificate_authority=api.ca_pem, cluster_name="dev"
    )
    with pytest.raises(CredentialsRejected) as info:
        await provider.discover(connector, KT, None)
    message = str(info.value)
    assert "cluster 'dev'" in message and api.url in message and "401" in message
    assert wrong not in message
    assert info.value.retryable is False
    assert api.count(401) == 1


@pytest.mark.anyio
async def test_client_certificate_authenticates_as_its_common_name(
    api: KubeApiServer, provider: KubernetesProvider, alice: IssuedCert
) -> None:
    connector = make_connector(
        "token",
        server=api.url,
        client_certificate=alice.cert_pem,
        client_key=alice.key_pem,
        certificate_authority=api.ca_pem,
    )
    assert await provider.discover(connector, KT, None) == [f"127.0.0.1:{api.port}"]
    assert api.users == ["alice"]


@pytest.mark.anyio
async def test_client_certificate_of_an_untrusted_ca_fails_with_a_hint(
    api: KubeApiServer, provider: KubernetesProvider
) -> None:
    mallory = issue_client_cert(make_ca("some other CA"), "mallory")
    connector = make_connector(
        "token",
        server=api.url,
        client_certificate=mallory.cert_pem,
        client_key=mallory.key_pem,
        certificate_authority=api.ca_pem,
    )
    with pytest.raises(UpstreamError, match="client_certificate"):
        await provider.discover(connector, KT, None)
    assert api.users == []


@pytest.mark.anyio
async def test_client_key_files_do_not_outlive_the_call(
    api: KubeApiServer,
    provider: KubernetesProvider,
    alice: IssuedCert,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    connector = make_connector(
        "token",
        server=api.url,
        client_certificate=alice.cert_pem,
        client_key=alice.key_pem,
        certificate_authority=api.ca_pem,
    )
    await provider.discover(connector, KT, None)
    assert api.users == ["alice"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
async def test_basic_auth_works_and_a_wrong_password_is_rejected_unechoed(
    api: KubeApiServer, provider: KubernetesProvider
) -> None:
    good = make_connector(
        "password",
        server=api.url,
        username="carol",
        password=PASSWORD,
        certificate_authority=api.ca_pem,
    )
    assert await provider.discover(good, KT, None) == [f"127.0.0.1:{api.port}"]
    assert api.users == ["carol"]
    bad = make_connector(
        "password",
        server=api.url,
        username="carol",
        password="not-the-password-x",
        certificate_authority=api.ca_pem,
    )
    with pytest.raises(CredentialsRejected) as info:
        await provider.discover(bad, KT, None)
    assert "not-the-password-x" not in str(info.value)


@pytest.mark.anyio
async def test_missing_ca_gives_a_tls_error_that_names_the_fix(
    api: KubeApiServer, provider: KubernetesProvider
) -> None:
    connector = make_connector("token", server=api.url, token=TOKEN)
    with pytest.raises(UpstreamError) as info:
        await provider.discover(connector, KT, None)
    message = str(info.value)
    assert "TLS" in message and "certificate_authority" in message and "insecure" in message
    assert info.value.retryable is False
    assert api.count() == 0


@pytest.mark.anyio
async def test_a_different_ca_is_not_trusted(
    api: KubeApiServer, provider: KubernetesProvider
) -> None:
    other = make_ca("not the server's CA")
    connector = make_connector(
        "token", server=api.url, token=TOKEN, certificate_authority=other.cert_pem
    )
    with pytest.raises(UpstreamError, match="certificate_authority"):
        await provider.discover(connector, KT, None)


@pytest.mark.anyio
async def test_insecure_really_skips_verification(
    api: KubeApiServer, provider: KubernetesProvider
) -> None:
    plain = make_connector("token", server=api.url, token=TOKEN, insecure="true")
    assert await provider.discover(plain, KT, None) == [f"127.0.0.1:{api.port}"]
    # Even a CA that would fail verification is irrelevant once insecure is set.
    wrong_ca = make_connector(
        "token",
        server=api.url,
        token=TOKEN,
        insecure=True,
        certificate_authority=make_ca("unrelated").cert_pem,
    )
    assert await provider.discover(wrong_ca, KT, None) == [f"127.0.0.1:{api.port}"]
    assert api.users == ["bob", "bob"]


@pytest.mark.anyio
async def test_plain_http_on_loopback_works(provider: KubernetesProvider) -> None:
    with KubeApiServer(tokens={TOKEN: "bob"}, tls=False) as api:
        connector = make_connector("token", server=api.url, token=TOKEN)
        assert await provider.discover(connector, KT, None) == [f"127.0.0.1:{api.port}"]
        assert api.users == ["bob"]


@pytest.mark.anyio
async def test_https_to_a_plain_http_port_says_so(provider: KubernetesProvider) -> None:
    with KubeApiServer(tokens={TOKEN: "bob"}, tls=False) as api:
        connector = make_connector("token", server=f"https://127.0.0.1:{api.port}", token=TOKEN)
        with pytest.raises(UpstreamError, match="HTTPS") as info:
            await provider.discover(connector, KT, None)
    assert info.value.retryable is False


@pytest.mark.anyio
async def test_unreachable_server_is_a_retryable_upstream_error(
    provider: KubernetesProvider,
) -> None:
    server = f"https://127.0.0.1:{free_port()}"
    connector = make_connector("token", server=server, token=TOKEN)
    with pytest.raises(UpstreamError) as info:
        await provider.discover(connector, KT, None)
    assert info.value.retryable is True
    assert server in str(info.value) and "refused" in str(info.value)


@pytest.mark.anyio
async def test_a_server_that_never_answers_times_out_retryably() -> None:
    with socket.socket() as silent:  # accepts TCP (backlog) but never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        server = f"https://127.0.0.1:{silent.getsockname()[1]}"
        provider = KubernetesProvider(ProviderContext(request_timeout=0.3))
        connector = make_connector("token", server=server, token=TOKEN)
        with pytest.raises(UpstreamError, match=r"did not answer within 0\.3s") as info:
            await provider.discover(connector, KT, None)
    assert info.value.retryable is True


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "retryable"), [(503, True), (500, True), (400, False)])
async def test_server_errors_are_upstream_errors(
    api: KubeApiServer, provider: KubernetesProvider, status: int, retryable: bool
) -> None:
    api.fail_with = status
    connector = make_connector(
        "token", server=api.url, token=TOKEN, certificate_authority=api.ca_pem
    )
    with pytest.raises(UpstreamError, match=str(status)) as info:
        await provider.discover(connector, KT, None)
    assert not isinstance(info.value, CredentialsRejected)
    assert info.value.retryable is retryable


@pytest.mark.anyio
async def test_forbidden_is_a_rejection_of_the_credentials(
    api: KubeApiServer, provider: KubernetesProvider
) -> None:
    api.fail_with = 403
    connector = make_connector(
        "token", server=api.url, token=TOKEN, certificate_authority=api.ca_pem
    )
    with pytest.raises(CredentialsRejected, match="403") as info:
        await provider.discover(connector, KT, None)
    assert "injected failure" in str(info.value)  # the server's own explanation is kept
    assert TOKEN not in str(info.value)


@pytest.mark.anyio
async def test_something_that_is_not_a_kubernetes_api_is_reported(
    provider: KubernetesProvider,
) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>welcome</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        connector = make_connector(
            "token", server=f"http://127.0.0.1:{httpd.server_port}", token=TOKEN
        )
        with pytest.raises(UpstreamError, match="Kubernetes API server") as info:
            await provider.discover(connector, KT, None)
        assert info.value.field == "server"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.mark.anyio
async def test_test_server_accepts_tokens_through_a_validator(
    provider: KubernetesProvider,
) -> None:
    async def async_validator(token: str) -> str | None:
        return "eks-user" if token.startswith("k8s-aws-v1.") else None

    def sync_validator(token: str) -> str | None:
        return "gke-user" if token.startswith("ya29.") else None

    for validator, token, user in (
        (async_validator, "k8s-aws-v1.abc", "eks-user"),
        (sync_validator, "ya29.abc", "gke-user"),
    ):
        with KubeApiServer(token_validator=validator) as api:
            ok = make_connector("token", server=api.url, token=token, insecure=True)
            await provider.discover(ok, KT, None)
            bad = make_connector("token", server=api.url, token="other", insecure=True)
            with pytest.raises(CredentialsRejected):
                await provider.discover(bad, KT, None)
            assert api.users == [user]
            assert api.count(401) == 1


# -- resource IDs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "cluster_name", "expected"),
    [
        ("https://k8s.example.com", "", "k8s.example.com"),
        ("https://k8s.example.com:443/", None, "k8s.example.com"),
        ("https://10.0.0.1:6443", None, "10.0.0.1:6443"),
        ("https://[fd00::1]:6443", None, "[fd00::1]:6443"),
        ("https://10.0.0.1:6443", "prod-eu", "prod-eu"),
    ],
)
def test_the_resource_id_is_the_cluster_name_or_the_servers_host(
    provider: KubernetesProvider, server: str, cluster_name: str | None, expected: str
) -> None:
    extra: dict[str, Value] = {} if cluster_name is None else {"cluster_name": cluster_name}
    connector = make_connector("token", server=server, token=TOKEN, **extra)
    assert provider.default_resource_id(connector, KT) == expected
    assert provider.canonical_resource_id(connector, KT, expected) == expected


def test_the_server_url_is_accepted_as_a_resource_id(provider: KubernetesProvider) -> None:
    connector = make_connector(
        "token", server="https://K8S.example.com:6443", token=TOKEN, cluster_name="prod"
    )
    assert provider.canonical_resource_id(connector, KT, "https://k8s.example.com:6443/") == (
        "prod"
    )
    with pytest.raises(InvalidArgument) as info:
        provider.canonical_resource_id(connector, KT, "https://k8s.example.com:7443")
    assert info.value.field == "resource_id"


def test_another_cluster_name_is_refused_naming_the_served_one(
    provider: KubernetesProvider,
) -> None:
    connector = make_connector(
        "token", name="prod-kc", server="https://10.0.0.1", token=TOKEN, cluster_name="prod"
    )
    with pytest.raises(InvalidArgument) as info:
        provider.canonical_resource_id(connector, KT, "staging")
    assert info.value.field == "resource_id"
    assert "'prod'" in str(info.value) and "staging" in str(info.value)
    assert "prod-kc" in str(info.value)


def test_other_resource_types_are_refused(provider: KubernetesProvider) -> None:
    connector = make_connector("token", server="https://10.0.0.1", token=TOKEN)
    with pytest.raises(InvalidArgument) as info:
        provider.canonical_resource_id(connector, "s3-bucket", "b")
    assert info.value.field == "resource_type"


@pytest.mark.anyio
async def test_discover_of_another_cluster_is_refused_before_any_request(
    api: KubeApiServer, provider: KubernetesProvider
) -> None:
    connector = make_connector(
        "token", server=api.url, token=TOKEN, certificate_authority=api.ca_pem, cluster_name="a"
    )
    with pytest.raises(InvalidArgument, match="'a'"):
        await provider.discover(connector, KT, "b")
    assert api.count() == 0
    assert await provider.discover(connector, KT, "a") == ["a"]


# -- validation ----------------------------------------------------------------------------


def _pair() -> tuple[str, str]:
    cert = issue_client_cert(make_ca(), "x")
    return cert.cert_pem, cert.key_pem


CERT, KEY = _pair()
OTHER_CERT, OTHER_KEY = _pair()


@pytest.mark.parametrize(
    ("method", "config", "field", "fragment"),
    [
        ("token", {"server": "https://k"}, "token", "needs attribute 'token'"),
        ("token", {"server": "https://k", "client_certificate": CERT}, "client_key", "required"),
        ("token", {"server": "https://k", "client_key": KEY}, "client_certificate", "required"),
        (
            "token",
            {"server": "https://k", "client_certificate": CERT, "client_key": OTHER_KEY},
            "client_key",
            "do not match",
        ),
        ("token", {"server": "http://k8s.example.com", "token": "t"}, "server", "clear text"),
        (
            "token",
            {"server": "http://k8s.example.com", "token": "t", "insecure": True},
            "server",
            "clear text",
        ),
        ("token", {"server": "https://u:pw-in-url@k", "token": "t"}, "server", "user info"),
        ("token", {"server": "https://k/?x=1", "token": "t"}, "server", "query"),
        ("token", {"server": "https://k", "token": "t", "cluster_name": "a b"}, "cluster_name", ""),
        (
            "token",
            {
                "server": "https://k",
                "token": "t",
                "certificate_authority": "-----BEGIN CERTIFICATE-----\nAAAA\n"
                "-----END CERTIFICATE-----",
            },
            "certificate_authority",
            "no usable CA",
        ),
    ],
)
def test_validate_refuses_bad_configurations(
    provider: KubernetesProvider,
    method: str,
    config: dict[str, Value],
    field: str,
    fragment: str,
) -> None:
    connector = make_connector(method, **config)
    with pytest.raises(InvalidArgument) as info:
        provider.validate(connector)
    assert info.value.field == field
    assert fragment in str(info.value)
    assert "pw-in-url" not in str(info.value)
    assert KEY not in str(info.value) and OTHER_KEY not in str(info.value)


@pytest.mark.parametrize(
    ("method", "config"),
    [
        ("token", {"server": "https://k", "token": "t"}),
        ("token", {"server": "https://k", "client_certificate": CERT, "client_key": KEY}),
        (
            "token",
            {"server": "https://k", "token": "t", "client_certificate": CERT, "client_key": KEY},
        ),
        ("token", {"server": "http://127.0.0.1:8001", "token": "t"}),
        ("token", {"server": "http://localhost:8001", "token": "t"}),
        ("token", {"server": "http://[::1]:8001", "token": "t"}),
        ("password", {"server": "https://k/prefix/path", "username": "u", "password": "p"}),
    ],
)
def test_validate_accepts_good_configurations(
    provider: KubernetesProvider, method: str, config: dict[str, Value]
) -> None:
    provider.validate(make_connector(method, **config))


# -- mint ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_mint_hands_out_the_stored_token(provider: KubernetesProvider) -> None:
    ca = make_ca().cert_pem
    connector = make_connector(
        "token",
        server="https://10.0.0.1:6443/",
        token=TOKEN,
        certificate_authority=ca,
        cluster_name="prod",
    )
    credential = await provider.mint(connector, KT, "prod")
    assert credential.connector_type == "kubernetes"
    assert credential.auth_method == "token"
    assert credential.resource_type == KT and credential.resource_id == "prod"
    assert dict(credential.config) == {
        "server": "https://10.0.0.1:6443",
        "cluster_name": "prod",
        "insecure": False,
        "certificate_authority": ca,
        "token": TOKEN,
    }
    assert credential.secret_names == {"token"}
    assert credential.expires_at is None
    assert credential.issued_at is None  # handed through: nobody declared when it was issued


@pytest.mark.anyio
async def test_mint_of_certificate_and_password_credentials(provider: KubernetesProvider) -> None:
    cert = make_connector(
        "token", server="https://k", client_certificate=CERT, client_key=KEY, insecure=True
    )
    credential = await provider.mint(cert, KT, "k")
    assert credential.config["client_certificate"] == CERT
    assert credential.config["client_key"] == KEY
    assert credential.config["insecure"] is True
    assert "token" not in credential.config
    assert credential.secret_names == {"client_key"}

    basic = make_connector("password", server="https://k", username="u", password=PASSWORD)
    credential = await provider.mint(basic, KT, "k")
    assert credential.auth_method == "password"
    assert credential.config["username"] == "u"
    assert credential.config["password"] == PASSWORD
    assert credential.secret_names == {"password"}


@pytest.mark.anyio
async def test_mint_for_another_cluster_is_refused(provider: KubernetesProvider) -> None:
    connector = make_connector("token", server="https://k", token=TOKEN, cluster_name="a")
    with pytest.raises(InvalidArgument) as info:
        await provider.mint(connector, KT, "b")
    assert info.value.field == "resource_id"


# -- auto-configuration ----------------------------------------------------------------------


def _write_kubeconfig(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def kubeconfig(tmp_path: Path, api: KubeApiServer, alice: IssuedCert) -> Path:
    """Two contexts: 'dev' (token user, CA file by relative path) and 'prod' (cert data)."""
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text(api.ca_pem)

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return _write_kubeconfig(
        tmp_path / "config",
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "dev",
            "clusters": [
                {
                    "name": "dev-cluster",
                    "cluster": {"server": api.url, "certificate-authority": "certs/ca.pem"},
                },
                {
                    "name": "prod-cluster",
                    "cluster": {
                        "server": api.url,
                        "certificate-authority-data": api.ca.cert_pem_base64,
                    },
                },
            ],
            "users": [
                {"name": "dev-user", "user": {"token": TOKEN}},
                {
                    "name": "prod-user",
                    "user": {
                        "client-certificate-data": b64(alice.cert_pem),
                        "client-key-data": b64(alice.key_pem),
                    },
                },
            ],
            "contexts": [
                {"name": "dev", "context": {"cluster": "dev-cluster", "user": "dev-user"}},
                {"name": "prod", "context": {"cluster": "prod-cluster", "user": "prod-user"}},
            ],
        },
    )


def _auto(provider: KubernetesProvider, env: dict[str, str], **options: str) -> Any:
    return provider.auto_configure(AutoConfigureOptions(options=options), env)


@pytest.mark.anyio
async def test_auto_configure_uses_the_current_context_and_works(
    provider: KubernetesProvider, api: KubeApiServer, kubeconfig: Path
) -> None:
    found = _auto(provider, {"KUBECONFIG": str(kubeconfig)})
    assert found.auth_method == "token"
    assert found.resource_type == KT and found.resource_id == "dev-cluster"
    assert dict(found.config) == {
        "server": api.url,
        "cluster_name": "dev-cluster",
        "certificate_authority": api.ca_pem,
        "insecure": False,
        "token": TOKEN,
    }
    connector = make_connector("token", **found.config)
    assert await provider.discover(connector, KT, None) == ["dev-cluster"]
    assert api.users == ["bob"]


@pytest.mark.anyio
async def test_auto_configure_another_context_with_certificate_data(
    provider: KubernetesProvider, api: KubeApiServer, kubeconfig: Path, alice: IssuedCert
) -> None:
    found = _auto(provider, {"HOME": "/nonexistent", "KUBECONFIG": str(kubeconfig)}, context="prod")
    assert found.auth_method == "token"
    assert found.config["client_certificate"] == alice.cert_pem
    assert found.config["client_key"] == alice.key_pem
    assert found.config["certificate_authority"] == api.ca_pem
    assert "token" not in found.config
    connector = make_connector("token", **found.config)
    assert await provider.discover(connector, KT, None) == ["prod-cluster"]
    assert api.users == ["alice"]


def test_auto_configure_reads_home_kube_config(
    provider: KubernetesProvider, kubeconfig: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(kubeconfig.read_text().replace("certs/", "../../certs/"))
    found = _auto(provider, {"HOME": str(home)})
    assert found.config["token"] == TOKEN
    assert "-----BEGIN CERTIFICATE-----" in str(found.config["certificate_authority"])


def test_kubeconfig_list_skips_missing_files_and_first_definition_wins(
    provider: KubernetesProvider, kubeconfig: Path, tmp_path: Path
) -> None:
    override = _write_kubeconfig(
        tmp_path / "override",
        {
            "current-context": "prod",
            "users": [{"name": "dev-user", "user": {"token": "from-the-first-file"}}],
        },
    )
    env = {"KUBECONFIG": f"{tmp_path / 'missing'}:{override}:{kubeconfig}"}
    assert _auto(provider, env).resource_id == "prod-cluster"  # first current-context
    assert _auto(provider, env, context="dev").config["token"] == "from-the-first-file"


@pytest.mark.parametrize(
    ("user", "kind"),
    [
        ({"exec": {"command": "aws", "args": ["eks", "get-token"]}}, "exec"),
        ({"auth-provider": {"name": "gcp"}}, "auth-provider"),
    ],
)
def test_dynamic_credential_users_are_refused_naming_the_context(
    provider: KubernetesProvider, tmp_path: Path, user: dict[str, Any], kind: str
) -> None:
    path = _write_kubeconfig(
        tmp_path / "config",
        {
            "current-context": "eks",
            "clusters": [{"name": "c", "cluster": {"server": "https://eks.example.com"}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "eks", "context": {"cluster": "c", "user": "u"}}],
        },
    )
    with pytest.raises(FailedPrecondition) as info:
        _auto(provider, {"KUBECONFIG": str(path)})
    assert "context 'eks'" in str(info.value) and kind in str(info.value)
    assert "cannot store" in str(info.value)


def test_missing_context_is_not_found_by_name(
    provider: KubernetesProvider, kubeconfig: Path
) -> None:
    with pytest.raises(NotFound) as info:
        _auto(provider, {"KUBECONFIG": str(kubeconfig)}, context="staging")
    assert "'staging'" in str(info.value)
    assert "dev, prod" in str(info.value)


def test_no_kubeconfig_at_all_is_a_clear_error(
    provider: KubernetesProvider, tmp_path: Path
) -> None:
    with pytest.raises(FailedPrecondition, match="no kubeconfig file found"):
        _auto(provider, {"HOME": str(tmp_path)})


def test_password_users_and_token_files(provider: KubernetesProvider, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    path = _write_kubeconfig(
        tmp_path / "config",
        {
            "clusters": [
                {
                    "name": "c",
                    "cluster": {"server": "https://k", "insecure-skip-tls-verify": True},
                }
            ],
            "users": [
                {"name": "basic", "user": {"username": "carol", "password": PASSWORD}},
                {"name": "file", "user": {"tokenFile": "token"}},
            ],
            "contexts": [
                {"name": "b", "context": {"cluster": "c", "user": "basic"}},
                {"name": "f", "context": {"cluster": "c", "user": "file"}},
            ],
        },
    )
    env = {"KUBECONFIG": str(path)}
    basic = _auto(provider, env, context="b")
    assert basic.auth_method == "password"
    assert basic.config["username"] == "carol" and basic.config["password"] == PASSWORD
    assert basic.config["insecure"] is True
    from_file = _auto(provider, env, context="f")
    assert from_file.auth_method == "token" and from_file.config["token"] == TOKEN
    with pytest.raises(FailedPrecondition, match="sets no current-context"):
        _auto(provider, env)


def test_broken_yaml_is_reported_without_quoting_the_file(
    provider: KubernetesProvider, tmp_path: Path
) -> None:
    path = tmp_path / "config"
    path.write_text(f"users:\n- name: u\n  user: {{token: {TOKEN}\n")
    with pytest.raises(FailedPrecondition) as info:
        _auto(provider, {"KUBECONFIG": str(path)})
    assert str(path) in str(info.value) and "YAML" in str(info.value)
    assert TOKEN not in str(info.value)
