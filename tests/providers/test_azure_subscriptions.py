"""An azure connector without subscription_id: every Enabled subscription it sees, as az does.

The Entra/ARM stand-ins run in process (as in test_azure_in_process): ``GET /subscriptions``
checks the token like every ARM call, pages by ``nextLink`` two at a time and marks one
subscription Disabled; ``failing`` makes one subscription answer every call with an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

import anyio
import pytest
from aiohttp import web

from broker.clock import FakeClock
from broker.discovery import Discovery, Unit
from broker.errors import CredentialsRejected, InvalidArgument, NotFound, PermissionDenied
from broker.model import Connector
from broker.providers.azure import AzureProvider
from broker.providers.azure.subscriptions import SHARE_SECONDS, SUBSCRIPTION_CONCURRENCY
from broker.providers.fanout import PartialListing
from broker.providers.registry import ProviderRegistry
from broker.providers.testing import InProcessTransport
from tests.providers.test_azure_in_process import CA, connector, make_provider
from tests.servers.azure_arm import ACR_USER, AzureCloud, Cluster
from tests.servers.azure_entra import EntraAuthority

A = "aaaaaaaa-0000-0000-0000-000000000001"
B = "bbbbbbbb-0000-0000-0000-000000000002"
OFF = "dddddddd-0000-0000-0000-000000000003"

pytestmark = pytest.mark.anyio


@pytest.fixture
def entra() -> EntraAuthority:
    return EntraAuthority(token_lifetime=3600)


@pytest.fixture
def cloud(entra: EntraAuthority) -> AzureCloud:
    cloud = AzureCloud(entra, subscriptions=[A, OFF, B], disabled={OFF})
    cloud.clusters = [
        Cluster(A, "rg-a", "prod", "https://prod-a.azmk8s.io:443", CA),
        Cluster(B, "rg-a", "prod", "https://prod-b.azmk8s.io:443", CA),
        Cluster(B, "rg-b", "solo", "https://solo-b.azmk8s.io:443", CA),
        Cluster(OFF, "rg-a", "ghost", "https://ghost.azmk8s.io:443", CA),
    ]
    cloud.registries = {A: ["acrinaaa"], B: ["acrinbbb", "acrinbbb2"], OFF: ["acrghost"]}
    return cloud


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@pytest.fixture
def middlewares() -> list[Middleware]:
    return []


@pytest.fixture
async def transport(
    entra: EntraAuthority, cloud: AzureCloud, middlewares: list[Middleware]
) -> AsyncIterator[InProcessTransport]:
    app = web.Application(middlewares=middlewares)
    entra.routes(app)
    cloud.routes(app)
    async with InProcessTransport(app) as transport:
        yield transport


@pytest.fixture
async def provider(transport: InProcessTransport) -> AsyncIterator[AzureProvider]:
    azure = make_provider(transport)
    yield azure
    await azure.aclose()


def unscoped(entra: EntraAuthority) -> Connector:
    """A service principal connector that names no subscription."""
    app = entra.add_secret_app()
    return connector(tenant_id=entra.tenant, client_id=app.client_id, client_secret=app.secret)


def clock(provider: AzureProvider) -> FakeClock:
    assert isinstance(provider.context.clock, FakeClock)
    return provider.context.clock


def subscription_pages(cloud: AzureCloud) -> int:
    """``GET /subscriptions`` requests so far (one enumeration of A, OFF, B: two pages)."""
    return sum(1 for c in cloud.calls if c[1] == "/subscriptions")


def arm_calls(cloud: AzureCloud, sub: str) -> list[str]:
    return [path for _, path, _ in cloud.calls if path.startswith(f"/subscriptions/{sub}/")]


async def test_generic_lists_the_enabled_subscriptions_of_every_page(
    provider: AzureProvider, entra: EntraAuthority, cloud: AzureCloud
) -> None:
    conn = unscoped(entra)
    assert await provider.discover(conn, "azure-generic", None) == [A, B]
    # Three subscriptions, two per page: the nextLink page was read (and held B).
    assert [c for c in cloud.calls if c[1] == "/subscriptions"] == [
        ("GET", "/subscriptions", 200),
        ("GET", "/subscriptions", 200),
    ]
    assert provider.canonical_resource_id(conn, "azure-generic", f"/subscriptions/{B.upper()}") == B
    assert await provider.discover(conn, "azure-generic", B) == [B]
    with pytest.raises(NotFound, match=f"'{OFF}' is not an Enabled subscription"):
        await provider.discover(conn, "azure-generic", OFF)
    # The tenant stays the default ID; a subscription's token names that subscription.
    assert provider.default_resource_id(conn, "azure-generic") == entra.tenant
    cred = await provider.mint(conn, "azure-generic", B)
    assert cred.resource_id == B and cred.config["subscription_id"] == B
    tenant_cred = await provider.mint(conn, "azure-generic", entra.tenant)
    assert "subscription_id" not in tenant_cred.config
    # Seeing no Enabled subscription: the tenant, as az login --allow-no-subscriptions
    # (once the shared enumeration is older than SHARE_SECONDS).
    cloud.disabled = {A, B, OFF}
    await clock(provider).advance(SHARE_SECONDS)
    assert await provider.discover(conn, "azure-generic", None) == [entra.tenant]


async def test_subscriptions_are_asked_with_the_same_token_checks(
    provider: AzureProvider, entra: EntraAuthority, cloud: AzureCloud
) -> None:
    conn = unscoped(entra)
    cloud.arm_audience = "https://somewhere-else"  # ARM refuses every token now
    with pytest.raises(CredentialsRejected, match="InvalidAuthenticationToken"):
        await provider.discover(conn, "azure-generic", None)
    assert cloud.calls == [("GET", "/subscriptions", 401)]


async def test_listings_cover_every_enabled_subscription_and_ids_stay_unambiguous(
    provider: AzureProvider, entra: EntraAuthority, cloud: AzureCloud
) -> None:
    conn = unscoped(entra)
    assert await provider.discover(conn, "docker-registry", None) == [
        "acrinaaa.azurecr.io",
        "acrinbbb.azurecr.io",
        "acrinbbb2.azurecr.io",
    ]
    # rg-a/prod exists in A and in B: the IDs carry the subscription.
    assert await provider.discover(conn, "kubernetes-cluster", None) == [
        f"{A}/rg-a/prod",
        f"{B}/rg-a/prod",
        f"{B}/rg-b/solo",
    ]
    assert arm_calls(cloud, OFF) == []  # the Disabled subscription is never asked
    assert await provider.discover(conn, "docker-registry", "acrinbbb2.azurecr.io") == [
        "acrinbbb2.azurecr.io"
    ]
    with pytest.raises(NotFound, match="any Enabled subscription"):
        await provider.discover(conn, "docker-registry", "acrghost.azurecr.io")

    # Minting reaches the cluster in its own subscription.
    cred = await provider.mint(conn, "kubernetes-cluster", f"{B}/RG-A/prod")
    assert cred.resource_id == f"{B}/rg-a/prod"
    assert cred.config["server"] == "https://prod-b.azmk8s.io:443"
    assert cloud.calls[-1][1].startswith(f"/subscriptions/{B}/resourceGroups/rg-a/")
    arm_id = (
        f"/subscriptions/{A}/resourceGroups/rg-a/providers/"
        "Microsoft.ContainerService/managedClusters/prod"
    )
    assert provider.canonical_resource_id(conn, "kubernetes-cluster", arm_id) == f"{A}/rg-a/prod"
    cred_a = await provider.mint(conn, "kubernetes-cluster", arm_id)
    assert cred_a.config["server"] == "https://prod-a.azmk8s.io:443"
    # Unqualified: resolved across subscriptions, refused when ambiguous.
    solo = await provider.mint(conn, "kubernetes-cluster", "solo")
    assert solo.resource_id == "solo" and solo.config["server"] == "https://solo-b.azmk8s.io:443"
    with pytest.raises(InvalidArgument, match="several places") as err:
        await provider.mint(conn, "kubernetes-cluster", "rg-a/prod")
    assert f"{A}/rg-a/prod" in err.value.message and f"{B}/rg-a/prod" in err.value.message
    with pytest.raises(NotFound, match="AKS cluster 'ghost'"):
        await provider.discover(conn, "kubernetes-cluster", "ghost")
    # A connector with a subscription keeps its IDs, and refuses another subscription's.
    scoped = connector(**{**conn.config, "subscription_id": B})
    assert provider.canonical_resource_id(scoped, "kubernetes-cluster", f"{B}/rg-a/prod") == (
        "rg-a/prod"
    )
    with pytest.raises(InvalidArgument, match="connector serves subscription"):
        provider.canonical_resource_id(scoped, "kubernetes-cluster", arm_id)
    assert await provider.discover(scoped, "kubernetes-cluster", None) == ["prod", "solo"]


async def test_one_failing_subscription_is_a_partial_error_naming_it(
    provider: AzureProvider, entra: EntraAuthority, cloud: AzureCloud
) -> None:
    conn = unscoped(entra)
    cloud.failing[B] = 503
    with pytest.raises(PartialListing) as partial:
        await provider.discover(conn, "docker-registry", None)
    assert partial.value.found == ["acrinaaa.azurecr.io"]
    assert partial.value.message.startswith(f"1 of 2 subscriptions failed: subscription '{B}': ")
    assert "503" in partial.value.message and partial.value.retryable
    # Through the discovery engine: the found IDs and the error in one result.
    engine = Discovery(ProviderRegistry({"azure": provider}), FakeClock(datetime.now(UTC)))
    result = await engine.discover_one(Unit(conn, "kubernetes-cluster"), cache=False)
    assert result.resource_ids == (f"{A}/rg-a/prod",)
    assert result.error is not None and f"subscription '{B}'" in result.error
    assert A not in result.error
    # The docker helper's host list keeps the registries that answered.
    assert await provider.registry_hosts(conn) == {"acrinaaa.azurecr.io": ACR_USER}
    # Resolving a bare name needs every subscription: the failure is the answer.
    with pytest.raises(PartialListing, match=f"subscription '{B}'"):
        await provider.mint(conn, "kubernetes-cluster", "solo")
    # Every subscription failing: the first error, typed, naming both.
    cloud.failing[A] = 403
    with pytest.raises(PermissionDenied) as both:
        await provider.discover(conn, "docker-registry", None)
    assert both.value.message.startswith(f"all 2 subscriptions failed: subscription '{A}': ")
    assert f"subscription '{B}'" in both.value.message
    # generic needs only /subscriptions: unaffected.
    assert await provider.discover(conn, "azure-generic", None) == [A, B]


async def test_one_listing_of_every_type_enumerates_the_subscriptions_once(
    provider: AzureProvider, entra: EntraAuthority, cloud: AzureCloud
) -> None:
    conn = unscoped(entra)
    cloud.storage_accounts = {A: [], B: []}
    engine = Discovery(ProviderRegistry({"azure": provider}), clock(provider))
    # The four types run concurrently: each waits for the one enumeration under way.
    results = await engine.discover(conn)
    assert {r.resource_type: r.error for r in results} == {
        "azure-generic": None,
        "blob-container": None,
        "kubernetes-cluster": None,
        "docker-registry": None,
    }
    assert subscription_pages(cloud) == 2  # one enumeration (two pages), not one per type
    assert arm_calls(cloud, OFF) == []
    # Within SHARE_SECONDS a mint resolving a bare cluster name shares it too ...
    await clock(provider).advance(SHARE_SECONDS - 1)
    assert (await provider.mint(conn, "kubernetes-cluster", "solo")).resource_id == "solo"
    assert subscription_pages(cloud) == 2
    # ... after it, ARM is asked again (a newly enabled subscription shows) ...
    cloud.disabled = set()
    await clock(provider).advance(1)
    assert await provider.discover(conn, "azure-generic", None) == sorted([A, B, OFF])
    assert subscription_pages(cloud) == 4
    # ... and another revision (another connector object) never shares an enumeration.
    await engine.discover(replace(conn, revision=conn.revision + 1), "azure-generic")
    assert subscription_pages(cloud) == 6
    # A failed enumeration is not kept: the next call asks again.
    audience, cloud.arm_audience = cloud.arm_audience, "https://somewhere-else"
    await clock(provider).advance(SHARE_SECONDS)
    with pytest.raises(CredentialsRejected):
        await provider.discover(conn, "docker-registry", None)
    cloud.arm_audience = audience
    assert await provider.discover(conn, "azure-generic", None) == sorted([A, B, OFF])


async def test_without_subscription_connector_filter_admits_any_subscription(
    provider: AzureProvider, entra: EntraAuthority, cloud: AzureCloud
) -> None:
    """``connector list --resource-id GUID``: may-serve, no ARM call (the transport has none
    recorded); a connector with a subscription, or fixed on one ID, admits only that one."""
    conn = unscoped(entra)
    for rid in (A, B.upper(), f"/subscriptions/{OFF}", entra.tenant):
        canonical = provider.canonical_resource_id(conn, "azure-generic", rid)
        assert provider.may_serve_id(conn, "azure-generic", canonical)
    scoped = connector(**{**conn.config, "subscription_id": B})
    assert provider.may_serve_id(scoped, "azure-generic", B)
    assert not provider.may_serve_id(scoped, "azure-generic", A)
    fixed = replace(conn, resource_type="azure-generic", resource_id=A)
    assert provider.may_serve_id(fixed, "azure-generic", A)
    assert not provider.may_serve_id(fixed, "azure-generic", B)
    # Other types keep the base rule: multi-instance, any well-formed ID.
    assert provider.may_serve_id(conn, "docker-registry", "acrinaaa.azurecr.io")
    assert cloud.calls == []


class Gate:
    """Holds ARM listings under /subscriptions/S/providers until opened; counts how many
    are waiting at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.most = 0
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    @web.middleware
    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if "/providers/" not in request.path:
            return await handler(request)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= self.limit:
            self.reached.set()
        try:
            await self.opened.wait()
            return await handler(request)
        finally:
            self.in_flight -= 1


@pytest.fixture
def gate(middlewares: list[Middleware]) -> Gate:
    gate = Gate(SUBSCRIPTION_CONCURRENCY)
    middlewares.append(gate.handle)
    return gate


async def test_subscriptions_are_asked_concurrently_and_bounded(
    gate: Gate, provider: AzureProvider, entra: EntraAuthority, cloud: AzureCloud
) -> None:
    many = [f"{n:08x}-0000-0000-0000-00000000000{n}" for n in range(1, 8)]
    cloud.subscriptions = many
    cloud.registries = {sub: [f"acr{sub[:8]}"] for sub in many}
    found: list[str] = []

    async def listing() -> None:
        found.extend(await provider.discover(unscoped(entra), "docker-registry", None))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(listing)
            await gate.reached.wait()  # never set if subscriptions were asked one by one
            for _ in range(300):  # let any request past the bound arrive too (no clock)
                await asyncio.sleep(0)
            held = gate.in_flight
            gate.opened.set()
    assert held == gate.most == SUBSCRIPTION_CONCURRENCY
    assert len(found) == 7
