"""The Kubernetes attestor: finds the pod on this node whose status lists the container.

Pods come from one of two places, as in SPIRE's agent:

- the API server (kubernetes-asyncio, with a kubeconfig or the pod's service
  account): ``GET /api/v1/pods?fieldSelector=spec.nodeName=NODE``, which needs
  ``list`` on pods (RBAC) and nothing more;
- the kubelet's ``/pods`` endpoint (``kubelet_url``): the read-only port, or the
  secure one with a bearer token. No API server load at all.

A listing is reused for ``pod_cache_seconds``. A container not in it lists
again at once (callers waiting together share one listing), and up to
``miss_retries`` more times ``retry_interval_seconds`` apart: the runtime
starts a container before the kubelet writes its id into the pod's status.
Only a container id found in ``status.containerStatuses`` (or the init or
ephemeral lists) counts; when the cgroup path also names a pod UID it must
be that pod's. A container in docker's or podman's own cgroups (no pod in the
path) is no kubelet's: not looked for.

Selectors: ``k8s:ns:``, ``k8s:sa:``, ``k8s:pod-name:``, ``k8s:pod-uid:``,
``k8s:node-name:``, ``k8s:pod-label:KEY:VALUE`` per label and
``k8s:container-name:``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from broker.errors import InvalidArgument
from broker.identity.attestors.base import AttestorUnavailable, Finding
from broker.identity.attestors.settings import KubernetesSettings
from broker.identity.cgroups import Container

#: Runtimes whose own cgroup names (no pod in the path) mean a container no kubelet made.
_NOT_KUBELETS = frozenset({"docker", "podman"})
_STATUS_LISTS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")


@dataclass(frozen=True)
class PodContainer:
    """One container of one pod, as a listing shows it."""

    pod_uid: str
    pod: str  # namespace/name
    selectors: frozenset[str]


def index_pods(items: Iterable[Mapping[str, Any]]) -> dict[str, PodContainer]:
    """Container id → its pod's selectors, for every container id a pod's status lists."""
    index: dict[str, PodContainer] = {}
    for pod in items:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        ns, name, uid = meta.get("namespace"), meta.get("name"), meta.get("uid")
        if not (ns and name and uid):
            continue
        common = {f"k8s:ns:{ns}", f"k8s:pod-name:{name}", f"k8s:pod-uid:{uid}"}
        account = spec.get("serviceAccountName") or spec.get("serviceAccount")
        if account:
            common.add(f"k8s:sa:{account}")
        if spec.get("nodeName"):
            common.add(f"k8s:node-name:{spec['nodeName']}")
        for key, value in (meta.get("labels") or {}).items():
            common.add(f"k8s:pod-label:{key}:{value}")
        for field in _STATUS_LISTS:
            for entry in status.get(field) or ():
                container_id = str(entry.get("containerID") or "")
                _, sep, bare = container_id.partition("://")
                if not sep or not bare or not entry.get("name"):
                    continue  # not started yet: no id to match
                index[bare] = PodContainer(
                    str(uid),
                    f"{ns}/{name}",
                    frozenset({*common, f"k8s:container-name:{entry['name']}"}),
                )
    return index


class KubernetesAttestor:
    name = "kubernetes"

    def __init__(self, settings: KubernetesSettings, clock: Any = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._index: dict[str, PodContainer] = {}
        self._listed_at: float | None = None
        #: Listings started so far; the number of the one in flight; of the last one done.
        self._started = 0
        self._listing_number = 0
        self._done_number = 0
        #: The number of the last listing sent: a miss needs one numbered higher.
        self._sent = 0
        self._listing: asyncio.Task[None] | None = None
        self._api: Any = None
        self._core: Any = None
        self._session: aiohttp.ClientSession | None = None
        self.listings = 0

    @property
    def source(self) -> str:
        if self.settings.kubelet_url:
            return f"the kubelet at {self.settings.kubelet_url}"
        host = getattr(getattr(self._api, "configuration", None), "host", "") or "?"
        return f"the API server at {host}"

    async def start(self) -> None:
        if self.settings.kubelet_url:
            context: ssl.SSLContext | bool = True
            if self.settings.kubelet_ca is not None:
                context = ssl.create_default_context(cafile=str(self.settings.kubelet_ca))
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
            return
        # Only a daemon with [attestors.kubernetes] on the API server pays for this import.
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        try:
            if self.settings.kubeconfig is not None:
                await config.load_kube_config(
                    config_file=str(self.settings.kubeconfig), client_configuration=configuration
                )
            else:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            where = self.settings.kubeconfig or "the pod's service account (in-cluster)"
            raise InvalidArgument(
                f"attestors.kubernetes: cannot load the API server's configuration from "
                f"{where}: {exc}",
                field="attestors.kubernetes.kubeconfig",
            ) from None
        self._api = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api)

    async def aclose(self) -> None:
        if self._listing is not None:
            self._listing.cancel()
        if self._api is not None:
            await self._api.close()
        if self._session is not None:
            await self._session.close()

    # -- attesting --------------------------------------------------------------------

    async def attest(self, container: Container) -> Finding:
        if container.pod_uid is None and container.runtime in _NOT_KUBELETS:
            return Finding()  # docker's or podman's own cgroup, not under kubepods: no pod
        fresh = (
            self._listed_at is not None
            and self._clock() - self._listed_at < self.settings.pod_cache_seconds
        )
        entry = self._index.get(container.id) if fresh else None
        attempts = self.settings.miss_retries + 1
        for attempt in range(attempts):
            if entry is not None:
                return self._finding(entry, container)
            if attempt:
                await asyncio.sleep(self.settings.retry_interval_seconds)
            # Only a listing sent after this miss can show a container just made.
            await self._listing_since(self._sent)
            entry = self._index.get(container.id)
        if entry is not None:
            return self._finding(entry, container)
        node = self.settings.node_name or "this node"
        return Finding(note=f"no pod on {node} lists container {container.short} in its status")

    def _finding(self, entry: PodContainer, container: Container) -> Finding:
        if container.pod_uid is not None and container.pod_uid != entry.pod_uid:
            return Finding(
                note=f"container {container.short} is in pod UID {container.pod_uid} by its "
                f"cgroup, but pod {entry.pod} ({entry.pod_uid}) lists it"
            )
        return Finding(entry.selectors)

    async def _listing_since(self, started: int) -> None:
        """Until a listing numbered above ``started`` (sent after the caller's miss) has
        finished; callers missing together share one."""
        while self._done_number <= started:
            task = self._listing
            if task is None or task.done():
                self._started += 1
                self._listing_number = self._started
                task = self._listing = asyncio.get_running_loop().create_task(
                    self._list(self._started)
                )
                task.add_done_callback(self._listed)
            elif self._listing_number <= started:
                # One that asked before the miss: let it finish, then start a fresh one.
                with contextlib.suppress(AttestorUnavailable):
                    await asyncio.shield(task)
                continue
            await asyncio.shield(task)

    def _listed(self, task: asyncio.Task[None]) -> None:
        if self._listing is task:
            self._listing = None
        if not task.cancelled():
            task.exception()  # its waiters got it; none left must not warn

    async def _list(self, number: int) -> None:
        self._sent = number  # from here on, a miss needs a later listing
        self.listings += 1
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                document = await (self._from_kubelet() if self._session else self._from_api())
        except TimeoutError:
            raise AttestorUnavailable(
                f"{self.source} did not list pods within {self.settings.timeout_seconds:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AttestorUnavailable(f"{self.source} is unreachable: {exc}") from None
        items = document.get("items") if isinstance(document, dict) else None
        if not isinstance(items, list):
            raise AttestorUnavailable(f"{self.source} answered something other than a pod list")
        self._index = index_pods(i for i in items if isinstance(i, dict))
        self._listed_at = self._clock()
        self._done_number = max(self._done_number, number)

    async def _from_api(self) -> Any:
        response = await self._core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.settings.node_name}",
            _preload_content=False,
            _request_timeout=self.settings.timeout_seconds,
        )
        async with response:
            body = await response.read()
            return _document(response.status, body, self.source)

    async def _from_kubelet(self) -> Any:
        assert self._session is not None
        headers = {}
        if self.settings.kubelet_token_file is not None:
            try:
                token = self.settings.kubelet_token_file.read_text().strip()
            except OSError as exc:
                raise AttestorUnavailable(
                    f"cannot read the kubelet token file {self.settings.kubelet_token_file}: "
                    f"{exc.strerror}"
                ) from None
            headers["Authorization"] = f"Bearer {token}"
        url = f"{str(self.settings.kubelet_url).rstrip('/')}/pods"
        async with self._session.get(url, headers=headers) as response:
            body = await response.read()
            return _document(response.status, body, self.source)


def _document(status: int, body: bytes, source: str) -> Any:
    if status != 200:
        try:
            message = str(json.loads(body).get("message", ""))[:200]
        except (ValueError, AttributeError):
            message = ""
        detail = f": {message}" if message else ""
        raise AttestorUnavailable(f"{source} answered HTTP {status} to a pod listing{detail}")
    try:
        return json.loads(body)
    except ValueError:
        raise AttestorUnavailable(f"{source} answered a pod listing that is not JSON") from None
