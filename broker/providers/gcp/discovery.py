"""Listing and checking GCS buckets, GKE clusters and container registries of a project.

* GCS: ``storage/v1/b?project=P`` (paginated) or ``b/BUCKET``.
* GKE: ``v1/projects/P/locations/-/clusters`` (every location in one call).
  A name is listed bare when unique, location-qualified when it clashes.
* Registries: Artifact Registry has no cross-location list, so the project's
  locations are listed, then each location's repositories (paginated,
  a few locations at a time); docker-format ones become
  ``LOCATION-docker.pkg.dev/P/R``. The legacy ``gcr.io`` hosts are listed
  too: they are served per project and answer for it (gcr.io-domain
  repositories, named after their host, are listed in that host form only).
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from typing import Any

from broker.attributes import normalize_pem
from broker.errors import BrokerError, InvalidArgument, NotFound, UpstreamError
from broker.providers import fanout
from broker.providers.gcp.api import Endpoints, GoogleApi
from broker.providers.gcp.ids import AR_SUFFIX, GCR_HOSTS, ClusterRef, RegistryRef

#: Items per page asked for (the services cap it themselves).
PAGE_SIZE = "1000"
#: Artifact Registry locations queried at once.
LOCATION_CONCURRENCY = 8


async def list_buckets(api: GoogleApi, urls: Endpoints, project: str) -> list[str]:
    found: list[str] = []
    async for item in api.pages(
        f"{urls.storage}/storage/v1/b",
        "items",
        action="list GCS buckets",
        resource=f"project '{project}'",
        params={"project": project, "maxResults": PAGE_SIZE, "projection": "noAcl"},
    ):
        if isinstance(item.get("name"), str):
            found.append(f"gs://{item['name']}")
    return sorted(found)


async def get_bucket(api: GoogleApi, urls: Endpoints, bucket: str) -> str:
    """Check one bucket (``gs://B``) is readable; return its ID."""
    name = bucket.removeprefix("gs://")
    await api.get(
        f"{urls.storage}/storage/v1/b/{name}",
        action="get GCS bucket metadata",
        resource=f"GCS bucket '{name}'",
        params={"projection": "noAcl"},
    )
    return bucket


async def list_clusters(api: GoogleApi, urls: Endpoints, project: str) -> list[dict[str, Any]]:
    doc = await api.get(
        f"{urls.container}/v1/projects/{project}/locations/-/clusters",
        action="list GKE clusters",
        resource=f"project '{project}'",
    )
    return [c for c in doc.get("clusters") or () if isinstance(c, dict) and c.get("name")]


def cluster_ids(clusters: list[dict[str, Any]]) -> list[str]:
    """IDs for listing: a bare name when unique in the project, else LOCATION/NAME."""
    counts = Counter(str(c["name"]) for c in clusters)
    ids = {
        str(c["name"]) if counts[str(c["name"])] == 1 else f"{c.get('location')}/{c['name']}"
        for c in clusters
    }
    return sorted(ids)


def find_cluster(clusters: list[dict[str, Any]], ref: ClusterRef, project: str) -> dict[str, Any]:
    """The one cluster ``ref`` names; a bare name in several locations is refused."""
    matches = [
        c
        for c in clusters
        if c["name"] == ref.name and (ref.location is None or c.get("location") == ref.location)
    ]
    if not matches:
        raise NotFound(f"GKE cluster '{ref.canonical}' does not exist in project '{project}'")
    if len(matches) > 1:
        where = ", ".join(sorted(str(c.get("location")) for c in matches))
        raise InvalidArgument(
            f"GKE cluster name '{ref.name}' exists in several locations of project "
            f"'{project}' ({where}): use LOCATION/{ref.name}",
            field="resource_id",
        )
    return matches[0]


def cluster_access(cluster: dict[str, Any], ref: ClusterRef) -> tuple[str, str, str]:
    """(server URL, CA PEM, location) of a GKE cluster from its API object."""
    endpoint = cluster.get("endpoint")
    ca_b64 = (cluster.get("masterAuth") or {}).get("clusterCaCertificate")
    if not isinstance(endpoint, str) or not endpoint:
        raise UpstreamError(
            f"GKE cluster '{ref.canonical}' has no endpoint yet (status "
            f"{cluster.get('status', 'unknown')})",
            retryable=True,
        )
    if not isinstance(ca_b64, str) or not ca_b64:
        raise UpstreamError(f"GKE cluster '{ref.canonical}' reports no CA certificate")
    try:
        ca = normalize_pem("certificate_authority", base64.b64decode(ca_b64).decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError, BrokerError):
        raise UpstreamError(
            f"GKE cluster '{ref.canonical}' reports a CA certificate that is not base64 PEM"
        ) from None
    return f"https://{endpoint}", ca, str(cluster.get("location", ""))


async def list_registries(api: GoogleApi, urls: Endpoints, project: str) -> list[str]:
    """The gcr.io hosts plus every docker-format Artifact Registry repository of ``project``."""
    locations = [
        str(loc["locationId"])
        async for loc in api.pages(
            f"{urls.artifactregistry}/v1/projects/{project}/locations",
            "locations",
            action="list Artifact Registry locations",
            resource=f"project '{project}'",
        )
        if isinstance(loc.get("locationId"), str)
    ]
    found: set[str] = {f"{host}/{project}" for host in GCR_HOSTS}

    async def one(location: str) -> list[str]:
        return await _location_repositories(api, urls, project, location)

    found.update(await fanout.gather_bounded(locations, one, LOCATION_CONCURRENCY))
    return sorted(found)


async def _location_repositories(
    api: GoogleApi, urls: Endpoints, project: str, location: str
) -> list[str]:
    ids = []
    async for repo in api.pages(
        f"{urls.artifactregistry}/v1/projects/{project}/locations/{location}/repositories",
        "repositories",
        action="list Artifact Registry repositories",
        resource=f"project '{project}' location '{location}'",
        params={"pageSize": PAGE_SIZE},
    ):
        name = str(repo.get("name", "")).rpartition("/")[2]
        if repo.get("format") != "DOCKER" or not name or name in GCR_HOSTS:
            continue
        ids.append(f"{location}{AR_SUFFIX}/{project}/{name}")
    return ids


async def check_registry(api: GoogleApi, urls: Endpoints, ref: RegistryRef) -> str:
    """Check an Artifact Registry repository exists and holds docker images."""
    if ref.location is None:
        return ref.canonical  # gcr.io hosts: the working token is the check
    repo = await api.get(
        f"{urls.artifactregistry}/v1/projects/{ref.project}/locations/{ref.location}"
        f"/repositories/{ref.repository}",
        action="get Artifact Registry repository",
        resource=f"repository '{ref.canonical}'",
    )
    if repo.get("format") != "DOCKER":
        raise InvalidArgument(
            f"Artifact Registry repository '{ref.canonical}' holds {repo.get('format')} "
            "packages, not docker images",
            field="resource_id",
        )
    return ref.canonical
