"""service-account-token: minted TokenRequest tokens, against the test API server's
TokenAuthority, in process (no socket) with one FakeClock shared by the provider, the
cache and the server, so "after its expiry" is a clock move, not a sleep. One test runs
over real TLS with a client-certificate bootstrap identity."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
import yaml
from aiohttp import web

from broker.attributes import parse_value
from broker.cache.cache import CacheKey, CredentialCache
from broker.clock import FakeClock
from broker.connectors import check_expiration
from broker.errors import (
    BrokerError,
    CredentialsRejected,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    UpstreamError,
)
from broker.model import AutoConfigureOptions, ClientCredential, Connector, Value
from broker.providers.base import ProviderContext
from broker.providers.kubernetes import RESOURCE_TYPE, SPEC, KubernetesProvider
from broker.providers.kubernetes.client import fetch_version
from broker.providers.kubernetes.settings import ClusterSettings
from broker.providers.kubernetes.tokens import MissingRbacPermission
from broker.providers.testing import InProcessTransport
from tests.providers.connectors import make_connector
from tests.servers.kube_api import KubeApiServer
from tests.servers.kube_tokens import API_AUDIENCE, TokenAuthority
from tests.servers.tls import issue_client_cert, make_ca

BOOTSTRAP = "bootstrap-token-of-the-minter-0123456789"
OUTSIDER = "token-of-someone-without-rbac-9876543210"
HOST = "k8s.example.test:6443"
SERVER = f"https://{HOST}"
METHOD = "service-account-token"
KT = RESOURCE_TYPE


def connector(expiration_seconds: int | None = None, **raw: Value | None) -> Connector:
    """A connector whose config went through the register call's attribute parsing
    (an attribute given as None is left out)."""
    spec = SPEC.auth_method(METHOD)
    assert spec is not None
    fields: dict[str, Value | None] = {
        "server": SERVER,
        "token": BOOTSTRAP,
        "service_account": "ci/deployer",
        **raw,
    }
    config: dict[str, Value] = {}
    for attr in spec.attributes:
        value = fields.get(attr.name)
        if value is not None:
            config[attr.name] = parse_value(attr, value)
    config.setdefault("insecure", False)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    return make_connector(
        "kubernetes",
        METHOD,
        config,
        name="kc",
        resource_type=KT,
        expiration_seconds=expiration_seconds,
        now=now,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def authority(clock: FakeClock) -> TokenAuthority:
    return TokenAuthority(
        service_accounts=["ci/deployer", "ci/other", "prod/admin"],
        creators={"minter": ["ci/deployer", "ci/other"]},
        clock=lambda: clock.now().timestamp(),
    )


@pytest.fixture
def api(authority: TokenAuthority) -> KubeApiServer:
    return KubeApiServer(
        tokens={BOOTSTRAP: "minter", OUTSIDER: "outsider"}, tls=False, authority=authority
    )


@pytest.fixture
async def transport(api: KubeApiServer) -> AsyncIterator[InProcessTransport]:
    async with InProcessTransport(api.app(), hosts=[HOST]) as transport:
        yield transport


@pytest.fixture
def provider(transport: InProcessTransport, clock: FakeClock) -> KubernetesProvider:
    return KubernetesProvider(ProviderContext(clock=clock, transport=transport, request_timeout=5))


async def version_with(token: str, transport: InProcessTransport) -> str:
    """GET /version as a consumer of the credential would, with that token only."""
    settings = ClusterSettings(server=SERVER, cluster_name=HOST, auth_method="token", token=token)
    return await fetch_version(settings, 5.0, transport=transport)


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# -- minting ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_mint_hands_out_a_fresh_signed_token_and_never_the_bootstrap(
    provider: KubernetesProvider,
    api: KubeApiServer,
    transport: InProcessTransport,
    clock: FakeClock,
) -> None:
    cred = await provider.mint(connector(expiration_seconds=1200), KT, HOST)
    token = str(cred.config["token"])
    assert (
        token != BOOTSTRAP
        and BOOTSTRAP not in repr(cred)
        and BOOTSTRAP not in str(dict(cred.config))
    )
    assert set(cred.config) == {"server", "cluster_name", "insecure", "token"}
    assert cred.secret_names == frozenset({"token"})
    # expires_at and issued_at: the status' expirationTimestamp and the request.
    assert cred.issued_at == clock.now()
    assert cred.expires_at == clock.now() + timedelta(seconds=1200)
    got = claims(token)
    assert got["sub"] == "system:serviceaccount:ci:deployer"
    assert got["aud"] == [API_AUDIENCE] and got["exp"] - got["iat"] == 1200
    # One POST as the bootstrap identity, with the TokenRequest the API defines.
    assert [(r.method, r.path, r.user) for r in api.requests] == [
        ("POST", "/api/v1/namespaces/ci/serviceaccounts/deployer/token", "minter")
    ]
    # The server accepts what it signed, as the service account.
    assert (await version_with(token, transport)).startswith("v1.30")
    assert api.users[-1] == "system:serviceaccount:ci:deployer"


@pytest.mark.anyio
async def test_expiry_comes_from_the_status_when_the_cluster_caps_the_lifetime(
    provider: KubernetesProvider, authority: TokenAuthority, clock: FakeClock
) -> None:
    authority.max_seconds = 900
    cred = await provider.mint(connector(expiration_seconds=7200), KT, HOST)
    assert cred.expires_at == clock.now() + timedelta(seconds=900)
    default = await provider.mint(connector(), KT, HOST)  # no expiration_seconds: 3600 asked
    assert authority.minted[-1]["exp"] - authority.minted[-1]["iat"] == 900
    assert default.expires_at == clock.now() + timedelta(seconds=900)


@pytest.mark.anyio
async def test_the_server_rejects_a_minted_token_after_its_expiry(
    provider: KubernetesProvider,
    api: KubeApiServer,
    authority: TokenAuthority,
    transport: InProcessTransport,
    clock: FakeClock,
) -> None:
    cred = await provider.mint(connector(expiration_seconds=600), KT, HOST)
    token = str(cred.config["token"])
    await clock.advance(599)
    await version_with(token, transport)
    await clock.advance(1)
    with pytest.raises(CredentialsRejected, match="401"):
        await version_with(token, transport)
    assert authority.rejections == ["expired"]
    # A forged token (same claims, later exp, signed by another key) is refused too.
    forged = TokenAuthority().sign(claims(token) | {"exp": 2**40})
    with pytest.raises(CredentialsRejected):
        await version_with(forged, transport)
    assert authority.rejections[-1] == "signature"


@pytest.mark.anyio
async def test_audiences_are_bound_and_other_audiences_do_not_work_on_the_api(
    provider: KubernetesProvider,
    api: KubeApiServer,
    authority: TokenAuthority,
    transport: InProcessTransport,
) -> None:
    kc = connector(audiences="vault,https://vault.example.test")
    cred = await provider.mint(kc, KT, HOST)
    assert claims(str(cred.config["token"]))["aud"] == ["vault", "https://vault.example.test"]
    with pytest.raises(CredentialsRejected):
        await version_with(str(cred.config["token"]), transport)
    assert authority.rejections == ["audience"]
    # Verification of such a connector proves the minting only (its tokens are not for us).
    assert await provider.discover(kc, KT, None) == [HOST]
    assert api.requests[-1].method == "POST"


@pytest.mark.anyio
async def test_verify_mints_and_calls_the_api_with_the_minted_token(
    provider: KubernetesProvider, api: KubeApiServer
) -> None:
    assert await provider.discover(connector(), KT, None) == [HOST]
    assert [(r.method, r.path, r.user) for r in api.requests] == [
        ("POST", "/api/v1/namespaces/ci/serviceaccounts/deployer/token", "minter"),
        ("GET", "/version", "system:serviceaccount:ci:deployer"),
    ]


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "account"),
    [(OUTSIDER, "ci/deployer"), (BOOTSTRAP, "prod/admin")],
    ids=["no-rbac-at-all", "rbac-for-other-accounts-only"],
)
async def test_a_bootstrap_identity_without_rbac_gets_the_missing_rule_named(
    provider: KubernetesProvider, api: KubeApiServer, token: str, account: str
) -> None:
    with pytest.raises(MissingRbacPermission) as info:
        await provider.mint(connector(token=token, service_account=account), KT, HOST)
    error = info.value
    namespace, name = account.split("/")
    assert (error.verb, error.resource, error.namespace, error.name) == (
        "create",
        "serviceaccounts/token",
        namespace,
        name,
    )
    assert error.field == "service_account" and error.retryable is False
    message = str(error)
    assert f"'create' on 'serviceaccounts/token' for {account}" in message
    assert f"resourceNames: [{name}]" in message
    assert token not in message
    assert api.count(403) == 1


@pytest.mark.anyio
async def test_unknown_account_wrong_bootstrap_and_failing_server(
    provider: KubernetesProvider, api: KubeApiServer, authority: TokenAuthority
) -> None:
    authority.creators["minter"].add("ci/*")
    with pytest.raises(NotFound) as missing:
        await provider.mint(connector(service_account="ci/ghost"), KT, HOST)
    assert missing.value.field == "service_account" and "ci/ghost" in str(missing.value)
    wrong = "wrong-bootstrap-token-that-must-not-leak"
    with pytest.raises(CredentialsRejected) as rejected:
        await provider.mint(connector(token=wrong), KT, HOST)
    assert "bootstrap" in str(rejected.value) and wrong not in str(rejected.value)
    api.fail_with = 503
    with pytest.raises(BrokerError) as failing:
        await provider.mint(connector(), KT, HOST)
    assert failing.value.retryable is True and "POST" in str(failing.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        ({"token": "half-an-answer-token"}, False),
        ({"token": "half-an-answer-token", "expirationTimestamp": "tomorrow"}, False),
        ({"expirationTimestamp": "2030-01-01T01:00:00Z"}, False),
        ({"token": "half-an-answer-token", "expirationTimestamp": "2029-12-31T23:59:00Z"}, True),
    ],
    ids=["no-expiry", "bad-expiry", "no-token", "expired-already"],
)
async def test_a_token_request_answer_without_token_or_live_expiry_is_an_upstream_error(
    clock: FakeClock, status: dict[str, str], retryable: bool
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"kind": "TokenRequest", "status": status}, status=201)

    app = web.Application()
    app.router.add_post("/api/v1/namespaces/ci/serviceaccounts/deployer/token", answer)
    async with InProcessTransport(app, hosts=[HOST]) as transport:
        provider = KubernetesProvider(ProviderContext(clock=clock, transport=transport))
        with pytest.raises(UpstreamError) as info:
            await provider.mint(connector(), KT, HOST)
    assert info.value.retryable is retryable
    assert "half-an-answer-token" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"service_account": "deployer"}, "service_account"),
        ({"service_account": "ci/"}, "service_account"),
        ({"service_account": "/deployer"}, "service_account"),
        ({"service_account": "ci/deploy/er"}, "service_account"),
        ({"service_account": "CI/deployer"}, "service_account"),
        ({"service_account": "ci/Deployer"}, "service_account"),
        ({"service_account": "ci_x/deployer"}, "service_account"),
        ({"service_account": "a" * 64 + "/deployer"}, "service_account"),
        ({"service_account": "ci/" + "a" * 254}, "service_account"),
        ({"service_account": ""}, "service_account"),
        ({"audiences": "vault,vault"}, "audiences"),
        ({"audiences": '["has space"]'}, "audiences"),
        ({"audiences": '[""]'}, "audiences"),
        ({"audiences": ",".join(f"a{i}" for i in range(17))}, "audiences"),
        ({"audiences": '["' + "a" * 513 + '"]'}, "audiences"),
        ({"token": None}, "token"),
    ],
)
def test_bad_configurations_are_refused_naming_the_field(raw: dict[str, Any], field: str) -> None:
    provider = KubernetesProvider(ProviderContext())
    with pytest.raises(InvalidArgument) as info:
        provider.validate(connector(**raw))
    assert info.value.field == field


def test_good_configurations_and_the_declared_bounds() -> None:
    provider = KubernetesProvider(ProviderContext())
    provider.validate(connector(service_account="kube-system/my.sa-1", audiences='["a","b"]'))
    method = SPEC.auth_method(METHOD)
    assert method is not None
    assert (
        method.min_expiration_seconds,
        method.max_expiration_seconds,
        method.default_expiration_seconds,
    ) == (600, 86400, 3600)
    assert {a.name for a in method.attributes if a.secret} == {"token", "client_key"}
    assert check_expiration(method, 600) == 600
    for bad in (599, 0, 86401):
        with pytest.raises(InvalidArgument) as info:
            check_expiration(method, bad)
        assert info.value.field == "expiration_seconds" and "600..86400" in str(info.value)


def test_auto_configure_takes_the_bootstrap_from_a_kubeconfig_context(tmp_path: Path) -> None:
    api = KubeApiServer(tls=False)  # never started: only its kubeconfig writer is used
    path = api.write_kubeconfig(tmp_path / "kubeconfig", token=BOOTSTRAP)
    provider = KubernetesProvider(ProviderContext())
    found = provider.auto_configure(
        AutoConfigureOptions(auth_method=METHOD), {"KUBECONFIG": str(path)}
    )
    assert found.auth_method == METHOD and found.config["token"] == BOOTSTRAP
    plain = provider.auto_configure(AutoConfigureOptions(), {"KUBECONFIG": str(path)})
    assert plain.auth_method == "token"
    basic = tmp_path / "basic"
    document = yaml.safe_load(path.read_text())
    document["users"][0]["user"] = {"username": "carol", "password": "pw"}
    basic.write_text(yaml.safe_dump(document))
    with pytest.raises(FailedPrecondition, match="client certificate and key"):
        provider.auto_configure(
            AutoConfigureOptions(auth_method=METHOD), {"KUBECONFIG": str(basic)}
        )


# -- renewal by the cache, with the clock moved instead of waited for -------------------------


@pytest.mark.anyio
async def test_the_cache_renews_the_token_before_expiry_and_the_old_one_then_dies(
    provider: KubernetesProvider,
    authority: TokenAuthority,
    transport: InProcessTransport,
    clock: FakeClock,
) -> None:
    kc = connector(expiration_seconds=900)
    key = CacheKey("kc", 1, KT, HOST)
    seen: list[ClientCredential] = []

    async def mint() -> ClientCredential:
        return await provider.mint(kc, KT, HOST)

    async def watch() -> None:
        async for event in cache.watch(key, mint):
            if event.credential is not None:
                seen.append(event.credential)

    async def until(count: int) -> None:
        with anyio.fail_after(10):  # real time: the in-process HTTP round trip
            while len(seen) < count:
                await anyio.sleep(0.01)

    cache = CredentialCache(clock)
    async with cache.running(), anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await until(1)
        first = seen[0]
        assert first.expires_at == clock.now() + timedelta(seconds=900)
        # Renewal comes at about 2/3 of the servable lifetime (900 s - 60 s margin):
        # well before expiry; step the clock until it happens.
        moved = 0
        while len(seen) < 2 and moved < 900:
            await clock.advance(10)
            moved += 10
            await anyio.wait_all_tasks_blocked()
            if len(authority.minted) > 1:
                await until(2)
        tg.cancel_scope.cancel()
    second = seen[1]
    assert moved < 900 - 60, "renewed only inside the safety margin"
    assert second.config["token"] != first.config["token"]
    assert second.expires_at is not None and first.expires_at is not None
    assert second.expires_at > first.expires_at
    await clock.advance(900 - moved)  # the first token's expiry
    with pytest.raises(CredentialsRejected):
        await version_with(str(first.config["token"]), transport)
    assert (await version_with(str(second.config["token"]), transport)).startswith("v1.30")


# -- over real TLS, with a client-certificate bootstrap identity --------------------------------


@pytest.fixture
def tls_api() -> Iterator[tuple[KubeApiServer, Any]]:
    client_ca = make_ca("sa-token client CA")
    minter = issue_client_cert(client_ca, "cert-minter")
    authority = TokenAuthority(service_accounts=["ci/deployer"], creators={"cert-minter": ["ci/*"]})
    with KubeApiServer(client_ca=client_ca, authority=authority) as server:
        yield server, minter


@pytest.mark.anyio
async def test_a_client_certificate_bootstrap_over_tls(tls_api: tuple[KubeApiServer, Any]) -> None:
    api, minter = tls_api
    kc = connector(
        server=api.url,
        token=None,
        client_certificate=minter.cert_pem,
        client_key=minter.key_pem,
        certificate_authority=api.ca_pem,
        cluster_name="dev",
    )
    provider = KubernetesProvider(ProviderContext(request_timeout=5.0))
    assert await provider.discover(kc, KT, None) == ["dev"]
    cred = await provider.mint(kc, KT, "dev")
    assert set(cred.config) == {
        "server",
        "cluster_name",
        "insecure",
        "token",
        "certificate_authority",
    }
    assert minter.key_pem not in str(dict(cred.config)) and "client" not in "".join(cred.config)
    assert [(r.method, r.user, r.via) for r in api.requests] == [
        ("POST", "cert-minter", "certificate"),
        ("GET", "system:serviceaccount:ci:deployer", "serviceaccount"),
        ("POST", "cert-minter", "certificate"),
    ]
