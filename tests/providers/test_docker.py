"""The docker connector type against a real ``docker-registry`` (basic, token auth, TLS)."""

from __future__ import annotations

import socket
import ssl
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from broker.attributes import parse_value
from broker.errors import CredentialsRejected, InvalidArgument, UpstreamError
from broker.model import Connector, Value
from broker.providers.base import ProviderContext
from broker.providers.docker import DockerProvider, canonical_registry
from broker.providers.docker.ids import is_loopback
from broker.providers.docker.registry_client import parse_challenges
from broker.providers.docker.spec import PASSWORD_METHOD
from broker.providers.http import client_session, ssl_context
from tests.servers.ports import free_port
from tests.servers.registry import (
    RegistryServer,
    TokenServer,
    log_on_exit,
    start_registry,
    start_token_server,
)
from tests.servers.tls import CertificateAuthority, issue_cert, issue_client_cert, make_ca

RT = "docker-registry"
USER = "alice"
PASSWORD = "Corr3ct-Horse-Battery"
WRONG = "not-the-Pa55word"


def connector(name: str = "reg", **raw: Value) -> Connector:
    """A connector as the daemon builds it: attributes parsed, defaults filled."""
    config: dict[str, Value] = {}
    for attr in PASSWORD_METHOD.attributes:
        if attr.name in raw:
            config[attr.name] = parse_value(attr, raw[attr.name])
        elif attr.default is not None:
            config[attr.name] = attr.default
    now = datetime.now(UTC)
    return Connector(
        id="id-" + name,
        name=name,
        connector_type="docker",
        auth_method="password",
        resource_type=RT,
        resource_id=None,
        config=config,
        labels={},
        expiration_seconds=None,
        expires_at=None,
        created_at=now,
        updated_at=now,
        revision=1,
    )


@pytest.fixture
def provider() -> DockerProvider:
    return DockerProvider(ProviderContext(request_timeout=5.0))


# Registries live for the module (each starts in < 0.1 s, but there is no need);
# the function-scoped fixtures print each test's slice of the log on failure.


@pytest.fixture(scope="module")
def _plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with start_registry(tmp_path_factory.mktemp("plain"), users={USER: PASSWORD}) as reg:
        yield reg


@pytest.fixture(scope="module")
def _tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with start_registry(tmp_path_factory.mktemp("tls"), users={USER: PASSWORD}, tls=True) as reg:
        yield reg


@pytest.fixture(scope="module")
def _token_setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RegistryServer, TokenServer]]:
    workdir = tmp_path_factory.mktemp("token")
    with (
        start_token_server(workdir, {USER: PASSWORD}) as tokens,
        start_registry(workdir, token_server=tokens) as reg,
    ):
        yield reg, tokens


@pytest.fixture
def plain_registry(_plain_registry: RegistryServer) -> Iterator[RegistryServer]:
    with log_on_exit(_plain_registry) as reg:
        yield reg


@pytest.fixture
def tls_registry(_tls_registry: RegistryServer) -> Iterator[RegistryServer]:
    with log_on_exit(_tls_registry) as reg:
        yield reg


@pytest.fixture
def token_setup(
    _token_setup: tuple[RegistryServer, TokenServer],
) -> Iterator[tuple[RegistryServer, TokenServer]]:
    with log_on_exit(_token_setup[0]):
        yield _token_setup


# -- resource IDs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("registry.example.com", "registry.example.com"),
        ("Registry.Example.COM:5000", "registry.example.com:5000"),
        ("https://registry.example.com:5000/v2/", "registry.example.com:5000"),
        ("http://localhost:5000", "localhost:5000"),
        ("localhost:5000/team/app:1.0", "localhost:5000"),
        ("  ghcr.io  ", "ghcr.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("[0:0::1]:05000", "[::1]:5000"),
        ("docker.io", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("library/ubuntu", "docker.io"),
        ("index.docker.io:443", "index.docker.io:443"),
    ],
)
def test_canonical_registry_ids(raw: str, expected: str) -> None:
    assert canonical_registry(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "reg istry.example.com",
        "registry.example.com:abc",
        "registry.example.com:0",
        "registry.example.com:70000",
        ":5000",
        "ftp://registry.example.com",
        "https://",
        "under_score.example.com",
        "-dash.example.com",
        "[::1",
        "[nope]:5000",
    ],
)
def test_bad_registry_ids_name_the_field(raw: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        canonical_registry(raw)
    assert err.value.field == "resource_id"
    assert str(err.value).startswith("resource_id")


def test_registry_id_with_userinfo_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidArgument) as err:
        canonical_registry("https://bob:hunter2@registry.example.com")
    assert "user name or password" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_connector_serves_only_its_own_registry(provider: DockerProvider) -> None:
    conn = connector(username=USER, password=PASSWORD, registry="Registry.Example.com:5000")
    assert provider.default_resource_id(conn, RT) == "registry.example.com:5000"
    assert (
        provider.canonical_resource_id(conn, RT, "https://registry.example.com:5000/team/app")
        == "registry.example.com:5000"
    )
    with pytest.raises(InvalidArgument) as err:
        provider.canonical_resource_id(conn, RT, "docker.io")
    assert err.value.field == "resource_id"
    assert "serves registry 'registry.example.com:5000' only" in str(err.value)
    with pytest.raises(InvalidArgument) as err:
        provider.canonical_resource_id(conn, "s3-bucket", "registry.example.com:5000")
    assert err.value.field == "resource_type"


def test_empty_registry_means_docker_hub(provider: DockerProvider) -> None:
    assert provider.default_resource_id(connector(username=USER, password=PASSWORD), RT) == (
        "docker.io"
    )
    hub = connector(username=USER, password=PASSWORD, registry="")
    assert provider.canonical_resource_id(hub, RT, "https://index.docker.io/v1/") == "docker.io"


def test_validate_rejects_a_bad_registry_attribute(provider: DockerProvider) -> None:
    with pytest.raises(InvalidArgument) as err:
        provider.validate(connector(username=USER, password=PASSWORD, registry="bad host:x"))
    assert err.value.field == "registry"


def test_loopback_rule() -> None:
    assert is_loopback("localhost:5000")
    assert is_loopback("127.0.0.1:5000")
    assert is_loopback("127.1.2.3")
    assert is_loopback("[::1]:5000")
    assert not is_loopback("registry.example.com:5000")
    assert not is_loopback("10.0.0.1:5000")


def test_challenge_parsing_keeps_quoted_commas() -> None:
    [bearer, basic] = parse_challenges(
        [
            'Bearer realm="https://auth.example.com/token",service="reg",'
            'scope="repository:team/app:pull,push"',
            'Basic realm="x"',
        ]
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example.com/token",
        "service": "reg",
        "scope": "repository:team/app:pull,push",
    }
    assert basic.scheme == "basic"


# -- verify against the real registry ------------------------------------


@pytest.mark.anyio
async def test_verify_over_plain_http(
    provider: DockerProvider, plain_registry: RegistryServer
) -> None:
    conn = connector(username=USER, password=PASSWORD, registry=plain_registry.url)
    assert await provider.discover(conn, RT, None) == [plain_registry.address]
    # An image reference on the same registry names the same resource.
    ref = f"{plain_registry.address}/team/app:1.0"
    assert await provider.discover(conn, RT, ref) == [plain_registry.address]


@pytest.mark.anyio
async def test_wrong_password_is_rejected_without_leaking_it(
    provider: DockerProvider, plain_registry: RegistryServer
) -> None:
    conn = connector(username=USER, password=WRONG, registry=plain_registry.address)
    with capture_logs() as logs, pytest.raises(CredentialsRejected) as err:
        await provider.discover(conn, RT, None)
    message = str(err.value)
    assert f"registry '{plain_registry.address}'" in message
    assert f"user '{USER}'" in message
    assert WRONG not in message
    assert WRONG not in repr(logs)


@pytest.mark.anyio
async def test_unreachable_registry_is_retryable(provider: DockerProvider) -> None:
    address = f"127.0.0.1:{free_port()}"
    conn = connector(username=USER, password=PASSWORD, registry=address)
    with pytest.raises(UpstreamError) as err:
        await provider.discover(conn, RT, None)
    assert err.value.retryable is True
    assert f"registry '{address}'" in str(err.value)
    assert f"https://{address}/v2/" in str(err.value)
    assert "connection refused" in str(err.value)


@pytest.mark.anyio
async def test_registry_that_never_answers_times_out() -> None:
    provider = DockerProvider(ProviderContext(request_timeout=0.3))
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        conn = connector(username=USER, password=PASSWORD, registry=address)
        with pytest.raises(UpstreamError) as err:
            await provider.discover(conn, RT, None)
    assert err.value.retryable is True
    assert "did not answer within 0.3s" in str(err.value)


@pytest.mark.anyio
async def test_a_server_without_the_v2_api_is_named(
    provider: DockerProvider, token_setup: tuple[RegistryServer, TokenServer]
) -> None:
    _, tokens = token_setup  # answers 404 for /v2/
    conn = connector(username=USER, password=PASSWORD, registry=f"127.0.0.1:{tokens.port}")
    with pytest.raises(UpstreamError) as err:
        await provider.discover(conn, RT, None)
    assert err.value.retryable is False
    assert "has no Docker registry v2 API" in str(err.value)


@pytest.mark.anyio
async def test_anonymous_registry_verifies(provider: DockerProvider, tmp_path: Path) -> None:
    with start_registry(tmp_path) as reg:
        conn = connector(username=USER, password=PASSWORD, registry=reg.address)
        assert await provider.discover(conn, RT, None) == [reg.address]


# -- TLS --------------------------------------------------------------------


def _ca(reg: RegistryServer) -> CertificateAuthority:
    assert reg.ca is not None
    return reg.ca


@pytest.mark.anyio
async def test_tls_with_the_custom_ca(
    provider: DockerProvider, tls_registry: RegistryServer
) -> None:
    ca = _ca(tls_registry)
    by_ip = connector(
        username=USER,
        password=PASSWORD,
        registry=tls_registry.address,
        certificate_authority=ca.cert_pem,
    )
    assert await provider.discover(by_ip, RT, None) == [tls_registry.address]
    by_name = connector(
        username=USER,
        password=PASSWORD,
        registry=f"localhost:{tls_registry.port}",
        certificate_authority=ca.cert_pem_base64,  # base64 PEM is accepted too
    )
    assert await provider.discover(by_name, RT, None) == [f"localhost:{tls_registry.port}"]


@pytest.mark.anyio
async def test_tls_with_the_custom_ca_still_checks_the_password(
    provider: DockerProvider, tls_registry: RegistryServer
) -> None:
    conn = connector(
        username=USER,
        password=WRONG,
        registry=tls_registry.address,
        certificate_authority=_ca(tls_registry).cert_pem,
    )
    with pytest.raises(CredentialsRejected):
        await provider.discover(conn, RT, None)


@pytest.mark.anyio
@pytest.mark.parametrize("trust", ["system store", "another CA"])
async def test_tls_without_the_right_ca_says_how_to_fix_it(
    provider: DockerProvider, tls_registry: RegistryServer, trust: str
) -> None:
    raw: dict[str, Value] = {"username": USER, "password": PASSWORD}
    if trust == "another CA":
        raw["certificate_authority"] = make_ca("someone else").cert_pem
    conn = connector(registry=tls_registry.address, **raw)
    with pytest.raises(UpstreamError) as err:
        await provider.discover(conn, RT, None)
    message = str(err.value)
    assert err.value.retryable is False
    assert err.value.field == "certificate_authority"
    assert tls_registry.address in message
    assert "certificate_authority" in message
    assert "insecure=true" in message


@pytest.mark.anyio
async def test_tls_with_insecure_skips_verification(
    provider: DockerProvider, tls_registry: RegistryServer
) -> None:
    conn = connector(
        username=USER, password=PASSWORD, registry=tls_registry.address, insecure="true"
    )
    assert await provider.discover(conn, RT, None) == [tls_registry.address]
    wrong = connector(username=USER, password=WRONG, registry=tls_registry.address, insecure=True)
    with pytest.raises(CredentialsRejected):
        await provider.discover(wrong, RT, None)


# -- token auth (Bearer challenge) -----------------------------------------


@pytest.mark.anyio
async def test_token_auth_flow(
    provider: DockerProvider, token_setup: tuple[RegistryServer, TokenServer]
) -> None:
    reg, tokens = token_setup
    before = len(tokens.requests)
    conn = connector(username=USER, password=PASSWORD, registry=reg.address)
    assert await provider.discover(conn, RT, None) == [reg.address]
    [request] = tokens.requests[before:]
    assert request.granted
    assert request.user == USER
    assert request.account == USER
    assert request.service == tokens.service


@pytest.mark.anyio
async def test_token_auth_wrong_password(
    provider: DockerProvider, token_setup: tuple[RegistryServer, TokenServer]
) -> None:
    reg, tokens = token_setup
    conn = connector(username=USER, password=WRONG, registry=reg.address)
    with pytest.raises(CredentialsRejected) as err:
        await provider.discover(conn, RT, None)
    message = str(err.value)
    assert f"registry '{reg.address}' refused the credentials for user '{USER}'" in message
    assert "token service" in message
    assert WRONG not in message
    assert tokens.requests[-1].granted is False


@pytest.mark.anyio
async def test_token_auth_with_access_token_field(provider: DockerProvider, tmp_path: Path) -> None:
    with (
        start_token_server(tmp_path, {USER: PASSWORD}, token_field="access_token") as tokens,
        start_registry(tmp_path, token_server=tokens) as reg,
    ):
        conn = connector(username=USER, password=PASSWORD, registry=reg.address)
        assert await provider.discover(conn, RT, None) == [reg.address]


@pytest.mark.anyio
async def test_token_the_registry_does_not_trust_is_rejected(
    provider: DockerProvider, tmp_path: Path
) -> None:
    """A token service whose signing CA is not the registry's bundle: the token is refused."""
    rogue = issue_cert(make_ca("rogue CA"), "rogue-signer")
    with (
        start_token_server(tmp_path, {USER: PASSWORD}, sign_with=rogue) as tokens,
        start_registry(tmp_path, token_server=tokens) as reg,
    ):
        conn = connector(username=USER, password=PASSWORD, registry=reg.address)
        with pytest.raises(CredentialsRejected) as err:
            await provider.discover(conn, RT, None)
    assert "was not accepted" in str(err.value)


# -- mint -------------------------------------------------------------------


@pytest.mark.anyio
async def test_mint_hands_out_the_stored_password(provider: DockerProvider) -> None:
    ca = make_ca()
    conn = connector(
        username=USER,
        password=PASSWORD,
        registry="HTTPS://Registry.Example.com:5000/",
        certificate_authority=ca.cert_pem,
        insecure="yes",
    )
    cred = await provider.mint(conn, RT, "registry.example.com:5000")
    assert cred.connector_type == "docker"
    assert cred.auth_method == "password"
    assert cred.resource_type == RT
    assert cred.resource_id == "registry.example.com:5000"
    assert dict(cred.config) == {
        "username": USER,
        "password": PASSWORD,
        "registry": "registry.example.com:5000",
        "certificate_authority": ca.cert_pem,
        "insecure": True,
    }
    assert cred.secret_names == frozenset({"password"})
    assert cred.expires_at is None
    assert cred.issued_at is None  # handed through: nobody declared when it was issued


@pytest.mark.anyio
async def test_mint_for_docker_hub_omits_unset_tls_settings(provider: DockerProvider) -> None:
    conn = connector(username=USER, password=PASSWORD)
    cred = await provider.mint(conn, RT, "index.docker.io")
    assert cred.resource_id == "docker.io"
    assert dict(cred.config) == {"username": USER, "password": PASSWORD, "registry": "docker.io"}
    with pytest.raises(InvalidArgument):
        await provider.mint(conn, RT, "ghcr.io")


# -- the shared HTTP helper ---------------------------------------------------


def test_bad_certificate_authority_names_the_attribute() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    with pytest.raises(InvalidArgument) as err:
        ssl_context(certificate_authority=pem)
    assert err.value.field == "certificate_authority"


@pytest.mark.anyio
async def test_client_certificate_opens_an_mtls_server() -> None:
    ca = make_ca()
    server_cert = issue_cert(ca)
    client = issue_client_cert(ca, "kube-admin")
    other_client = issue_client_cert(make_ca(), "stranger")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca.cert_pem)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    _load_pair(server_ctx, server_cert.cert_pem, server_cert.key_pem)

    async def whoami(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        return web.json_response({"peer": bool(peer)})

    app = web.Application()
    app.router.add_get("/", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
    try:
        async with (
            client_session(
                timeout=5,
                certificate_authority=ca.cert_pem,
                client_certificate=client.cert_pem,
                client_key=client.key_pem,
            ) as session,
            session.get(f"https://127.0.0.1:{port}/") as resp,
        ):
            assert resp.status == 200
            assert await resp.json() == {"peer": True}
        async with client_session(
            timeout=5,
            certificate_authority=ca.cert_pem,
            client_certificate=other_client.cert_pem,
            client_key=other_client.key_pem,
        ) as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"https://127.0.0.1:{port}/") as resp:
                    await resp.read()
    finally:
        await runner.cleanup()
    with pytest.raises(InvalidArgument) as err:
        ssl_context(client_certificate=client.cert_pem, client_key=other_client.key_pem)
    assert err.value.field == "client_certificate"


def _load_pair(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "c.pem"), Path(tmp, "k.pem")
        cert.write_text(cert_pem)
        key.write_text(key_pem)
        context.load_cert_chain(cert, key)
