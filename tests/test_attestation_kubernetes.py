"""The Kubernetes attestor against the test API server (TLS, real token checks): pods of
this node from the API server (field selector) or a kubelet-style /pods, the listing
cache and its refresh on a miss, containerStatuses as the only proof, and failures."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.errors import InvalidArgument
from broker.identity.attestors.base import AttestorUnavailable, Finding
from broker.identity.attestors.kubernetes import KubernetesAttestor
from broker.identity.attestors.settings import KubernetesSettings
from broker.identity.cgroups import Container
from tests.servers.kube_api import KubeApiServer, make_pod

pytestmark = pytest.mark.anyio

TOKEN = "node-attestor-token"
SA = "system:serviceaccount:credential-broker:credential-broker"


def cid() -> str:
    return secrets.token_hex(32)


@pytest.fixture(scope="module")
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(tokens={TOKEN: SA}) as server:
        yield server


@pytest.fixture
def kubeconfig(api: KubeApiServer, tmp_path: Path) -> Path:
    api.pods = []
    api.fail_with = None
    return api.write_kubeconfig(tmp_path / "kubeconfig", token=TOKEN)


def listings(api: KubeApiServer, path: str = "/api/v1/pods") -> int:
    return sum(1 for r in api.requests if r.path == path and r.status == 200)


async def attestor(kubeconfig: Path, **overrides: object) -> KubernetesAttestor:
    settings = KubernetesSettings(
        **{
            "node_name": "node-1",
            "kubeconfig": kubeconfig,
            "miss_retries": 0,
            "retry_interval_seconds": 0.05,
            "timeout_seconds": 3.0,
            **overrides,
        }  # type: ignore[arg-type]
    )
    made = KubernetesAttestor(settings)
    await made.start()
    return made


async def attest(a: KubernetesAttestor, container_id: str, pod_uid: str | None = None) -> Finding:
    return await a.attest(Container(container_id, "containerd", pod_uid))


async def test_a_pods_selectors_from_the_api_server(api: KubeApiServer, kubeconfig: Path) -> None:
    main, sidecar, elsewhere = cid(), cid(), cid()
    api.pods = [
        make_pod(
            "trainer-7d9f",
            namespace="ml",
            service_account="trainer",
            labels={"app": "trainer", "team": "ml"},
            containers={"main": main, "sidecar": sidecar},
            uid="6b8e8e1a-3c5d-4c7e-9a8b-1f2e3d4c5b6a",
        ),
        make_pod("web", namespace="web", node="node-2", containers={"main": elsewhere}),
    ]
    a = await attestor(kubeconfig)
    try:
        found = await attest(a, main)
        assert found.selectors == {
            "k8s:ns:ml",
            "k8s:sa:trainer",
            "k8s:pod-name:trainer-7d9f",
            "k8s:pod-uid:6b8e8e1a-3c5d-4c7e-9a8b-1f2e3d4c5b6a",
            "k8s:node-name:node-1",
            "k8s:pod-label:app:trainer",
            "k8s:pod-label:team:ml",
            "k8s:container-name:main",
        }
        assert "k8s:container-name:sidecar" in (await attest(a, sidecar)).selectors
        # Only this node's pods are listed: a container on node-2 is not found.
        assert (await attest(a, elsewhere)).note == (
            f"no pod on node-1 lists container {elsewhere[:12]} in its status"
        )
    finally:
        await a.aclose()
    assert api.users[-1] == SA  # every listing authenticated with the node's token


async def test_a_listing_is_reused_and_a_miss_lists_again_at_once(
    api: KubeApiServer, kubeconfig: Path
) -> None:
    first, second, new = cid(), cid(), cid()
    api.pods = [make_pod("a", containers={"c": first}), make_pod("b", containers={"c": second})]
    a = await attestor(kubeconfig, pod_cache_seconds=60.0)
    before = listings(api)
    try:
        await attest(a, first)
        await attest(a, second)
        await attest(a, first)
        assert listings(api) - before == 1
        # A pod created after the listing is recognised on its first call.
        api.pods.append(make_pod("new", namespace="ml", containers={"c": new}))
        assert "k8s:pod-name:new" in (await attest(a, new)).selectors
        assert listings(api) - before == 2
    finally:
        await a.aclose()


async def test_a_container_id_reaching_the_status_late_is_waited_for(
    api: KubeApiServer, kubeconfig: Path
) -> None:
    late = cid()
    api.pods = [make_pod("starting", containers={"c": None})]
    a = await attestor(kubeconfig, miss_retries=5, retry_interval_seconds=0.05)

    async def kubelet_writes_the_status() -> None:
        await asyncio.sleep(0.12)
        api.pods = [make_pod("starting", containers={"c": late})]

    try:
        writer = asyncio.ensure_future(kubelet_writes_the_status())
        found = await attest(a, late)
        await writer
        assert "k8s:pod-name:starting" in found.selectors
    finally:
        await a.aclose()


async def test_an_unknown_container_is_looked_for_then_not_attested(
    api: KubeApiServer, kubeconfig: Path
) -> None:
    api.pods = [make_pod("a", containers={"c": cid()})]
    a = await attestor(kubeconfig, miss_retries=2, retry_interval_seconds=0.01)
    before = listings(api)
    try:
        unknown = cid()
        found = await attest(a, unknown)
        assert found.selectors == frozenset()
        assert found.note == f"no pod on node-1 lists container {unknown[:12]} in its status"
        assert listings(api) - before == 3  # one, then miss_retries more
    finally:
        await a.aclose()


async def test_callers_missing_together_share_one_listing(
    api: KubeApiServer, kubeconfig: Path
) -> None:
    ids = [cid() for _ in range(8)]
    api.pods = [make_pod(f"p{i}", containers={"c": c}) for i, c in enumerate(ids)]
    a = await attestor(kubeconfig)
    before = listings(api)
    try:
        found = await asyncio.gather(*(attest(a, c) for c in ids))
        assert all(f.selectors for f in found)
        assert listings(api) - before == 1
    finally:
        await a.aclose()


async def test_the_cgroups_pod_uid_must_be_the_listing_pods(
    api: KubeApiServer, kubeconfig: Path
) -> None:
    container = cid()
    api.pods = [make_pod("a", namespace="ml", containers={"c": container})]
    pod_uid = api.pods[0]["metadata"]["uid"]
    a = await attestor(kubeconfig)
    try:
        assert (await attest(a, container, pod_uid)).selectors
        other = "00000000-0000-0000-0000-000000000000"
        found = await attest(a, container, other)
        assert found.selectors == frozenset()
        assert found.note is not None and f"pod UID {other} by its cgroup" in found.note
    finally:
        await a.aclose()


async def test_a_refused_token_is_unavailable(api: KubeApiServer, tmp_path: Path) -> None:
    config = api.write_kubeconfig(tmp_path / "bad", token="not-the-token")
    a = await attestor(config)
    try:
        with pytest.raises(AttestorUnavailable, match="answered HTTP 401 to a pod listing"):
            await attest(a, cid())
    finally:
        await a.aclose()


async def test_a_failing_api_server_is_unavailable(api: KubeApiServer, kubeconfig: Path) -> None:
    a = await attestor(kubeconfig)
    api.fail_with = 503
    try:
        with pytest.raises(AttestorUnavailable, match=r"the API server at https://127\.0\.0\.1"):
            await attest(a, cid())
    finally:
        api.fail_with = None
        await a.aclose()


async def test_an_unreachable_api_server_is_unavailable(tmp_path: Path) -> None:
    with KubeApiServer(tokens={TOKEN: SA}) as gone:
        config = gone.write_kubeconfig(tmp_path / "k", token=TOKEN)
        url = gone.url
    a = await attestor(config)
    try:
        with pytest.raises(AttestorUnavailable, match=f"the API server at {url} is unreachable"):
            await attest(a, cid())
    finally:
        await a.aclose()


async def test_a_bad_kubeconfig_stops_the_start(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(InvalidArgument, match="cannot load the API server's configuration"):
        await attestor(bad)


async def test_pods_from_the_kubelet(api: KubeApiServer, tmp_path: Path) -> None:
    mine, other = cid(), cid()
    api.pods = [
        make_pod("here", namespace="ml", containers={"c": mine}, runtime="cri-o"),
        make_pod("there", node="node-2", containers={"c": other}),
    ]
    ca = tmp_path / "kubelet-ca.pem"
    ca.write_text(api.ca_pem)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    settings = KubernetesSettings(
        kubelet_url=api.url, kubelet_ca=ca, kubelet_token_file=token, miss_retries=0
    )
    a = KubernetesAttestor(settings)
    await a.start()
    before_api = listings(api)
    try:
        found = await attest(a, mine)
        assert {"k8s:ns:ml", "k8s:pod-name:here", "k8s:node-name:node-1"} <= found.selectors
        assert (await attest(a, other)).selectors == frozenset()
        assert listings(api, "/pods") >= 1 and listings(api) == before_api
        token.write_text("rotated-and-wrong")  # re-read on every listing
        with pytest.raises(AttestorUnavailable, match=r"the kubelet at .* answered HTTP 401"):
            await attest(a, cid())
    finally:
        await a.aclose()
