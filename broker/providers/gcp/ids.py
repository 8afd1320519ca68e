"""Resource IDs of the gcp connector type: every accepted spelling turned into one canonical form.

* project (gcp-generic): the project ID itself.
* gcs-bucket: ``gs://BUCKET``; a bare ``BUCKET`` (and ``gs://BUCKET/``) is accepted.
* kubernetes-cluster: ``NAME`` or ``LOCATION/NAME``. A bare name stays bare
  (which location it lives in needs an API call; the lookup then refuses a
  name that exists in several locations). Forms that carry the location
  (``projects/P/locations/L/clusters/N``, kubeconfig ``gke_P_L_N``) become
  ``LOCATION/NAME``.
* docker-registry: ``HOST/PROJECT`` for the gcr.io hosts and
  ``LOCATION-docker.pkg.dev/PROJECT/REPOSITORY`` for Artifact Registry;
  ``https://`` and image paths after them are dropped, hosts lower-cased.

Projects named in an ID must be the connector's own project.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from broker.errors import InvalidArgument
from broker.providers.values import clip

FIELD = "resource_id"
GCR_HOSTS = ("gcr.io", "us.gcr.io", "eu.gcr.io", "asia.gcr.io")
AR_SUFFIX = "-docker.pkg.dev"

_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_BUCKET_CHARS = re.compile(r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")
_CLUSTER = re.compile(r"^[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_LOCATION = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")
_REPOSITORY = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_GOOGLE_LIKE = re.compile(r"g[o0]{2}g[l1]e")


def _bad(what: str, raw: str, reason: str, expected: str) -> InvalidArgument:
    return InvalidArgument(
        f"{FIELD} '{clip(raw.strip())}' is not a {what} ({reason}); expected {expected}",
        field=FIELD,
    )


def check_project(raw: str, field: str = "project_id") -> str:
    """A Google Cloud project ID (6-30 lower-case letters, digits, hyphens)."""
    value = raw.strip()
    if not _PROJECT.match(value):
        raise InvalidArgument(
            f"{field} '{clip(value)}' is not a Google Cloud project ID (6 to 30 lower-case "
            "letters, digits or hyphens, starting with a letter)",
            field=field,
        )
    return value


def _same_project(found: str, project: str, what: str, raw: str) -> None:
    if found != project:
        raise InvalidArgument(
            f"{FIELD} '{clip(raw.strip())}' names a {what} of project '{found}', but the "
            f"connector serves project '{project}'",
            field=FIELD,
        )


def canonical_project(raw: str, project: str) -> str:
    """gcp-generic: the ID is the project, and it must be the connector's."""
    expected = "the project ID, e.g. my-project-123"
    value = raw.strip()
    if not _PROJECT.match(value):
        raise _bad("project ID", raw, "6 to 30 lower-case letters, digits or hyphens", expected)
    _same_project(value, project, "resource", raw)
    return value


def canonical_bucket(raw: str) -> str:
    """``gs://BUCKET`` from ``gs://BUCKET``, ``gs://BUCKET/`` or ``BUCKET`` (GCS naming rules)."""
    expected = "gs://BUCKET or BUCKET"
    text = raw.strip()
    name = text[len("gs://") :] if text.lower().startswith("gs://") else text
    name = name[:-1] if name.endswith("/") else name
    if not name:
        raise _bad("GCS bucket", raw, "no bucket name", expected)
    if "/" in name:
        raise _bad("GCS bucket", raw, "it names an object path; give the bucket only", expected)
    if not _BUCKET_CHARS.match(name):
        raise _bad(
            "GCS bucket",
            raw,
            "bucket names use lower-case letters, digits, '-', '_' and '.', and start and "
            "end with a letter or digit",
            expected,
        )
    parts = name.split(".")
    too_long = len(name) > 222 if len(parts) > 1 else not 3 <= len(name) <= 63
    if too_long or any(not p or len(p) > 63 for p in parts):
        raise _bad(
            "GCS bucket",
            raw,
            "3 to 63 characters, or up to 222 with dots and at most 63 between dots",
            expected,
        )
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        raise _bad("GCS bucket", raw, "it looks like an IP address", expected)
    if name.startswith("goog") or _GOOGLE_LIKE.search(name):
        raise _bad(
            "GCS bucket", raw, "names may not start with 'goog' or contain 'google'", expected
        )
    return f"gs://{name}"


@dataclass(frozen=True)
class ClusterRef:
    """A GKE cluster as an ID names it: location may be unknown (bare name)."""

    name: str
    location: str | None = None

    @property
    def canonical(self) -> str:
        return f"{self.location}/{self.name}" if self.location else self.name


def parse_cluster(raw: str, project: str) -> ClusterRef:
    """Parse any accepted GKE cluster ID; see the module docstring for the forms."""
    expected = (
        "NAME or LOCATION/NAME, e.g. prod or europe-west1/prod (also "
        "projects/P/locations/L/clusters/N and gke_P_L_N)"
    )
    text = raw.strip()
    location: str | None
    parts = text.split("/")
    if text.startswith("projects/"):
        if len(parts) != 6 or parts[2] != "locations" or parts[4] != "clusters":
            raise _bad("GKE cluster", raw, "malformed resource name", expected)
        _same_project(parts[1], project, "cluster", raw)
        location, name = parts[3], parts[5]
    elif text.startswith("gke_"):
        pieces = text.split("_")
        if len(pieces) != 4:
            raise _bad("GKE cluster", raw, "malformed kubeconfig cluster name", expected)
        _same_project(pieces[1], project, "cluster", raw)
        location, name = pieces[2], pieces[3]
    elif len(parts) == 2:
        location, name = parts
    elif len(parts) == 1:
        location, name = None, text
    else:
        raise _bad("GKE cluster", raw, "too many '/'", expected)
    if location is not None and not _LOCATION.match(location):
        raise _bad("GKE cluster", raw, f"'{clip(location)}' is not a location", expected)
    if not _CLUSTER.match(name):
        raise _bad(
            "GKE cluster",
            raw,
            "cluster names are 1 to 40 lower-case letters, digits or hyphens, starting "
            "with a letter",
            expected,
        )
    return ClusterRef(name, location)


@dataclass(frozen=True)
class RegistryRef:
    """A GCR host or an Artifact Registry docker repository of one project."""

    host: str
    project: str
    repository: str | None = None

    @property
    def canonical(self) -> str:
        tail = f"/{self.repository}" if self.repository else ""
        return f"{self.host}/{self.project}{tail}"

    @property
    def location(self) -> str | None:
        """The Artifact Registry location (None for gcr.io hosts)."""
        return self.host[: -len(AR_SUFFIX)] if self.host.endswith(AR_SUFFIX) else None


def parse_registry(raw: str, project: str) -> RegistryRef:
    """Parse a GCR / Artifact Registry address of the connector's project."""
    expected = (
        "gcr.io/PROJECT (or us., eu., asia.gcr.io) or LOCATION-docker.pkg.dev/PROJECT/REPOSITORY"
    )
    text = raw.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme.lower() != "https":
            raise _bad("Google container registry", raw, "only https:// is accepted", expected)
    host, _, path = text.partition("/")
    host = host.lower()
    parts = [p for p in path.split("/") if p]
    if "@" in host:
        raise InvalidArgument(
            f"{FIELD} must not contain a user name or password; expected {expected}", field=FIELD
        )
    if host in GCR_HOSTS:
        if not parts:
            raise _bad("Google container registry", raw, "no project after the host", expected)
        ref = RegistryRef(host, parts[0])
    elif host.endswith(AR_SUFFIX):
        location = host[: -len(AR_SUFFIX)]
        if not _LOCATION.match(location):
            raise _bad("Google container registry", raw, "bad location in the host", expected)
        if len(parts) < 2:
            raise _bad(
                "Google container registry",
                raw,
                "Artifact Registry addresses need PROJECT/REPOSITORY after the host",
                expected,
            )
        if not _REPOSITORY.match(parts[1]):
            raise _bad(
                "Google container registry",
                raw,
                f"'{clip(parts[1])}' is not an Artifact Registry repository ID",
                expected,
            )
        ref = RegistryRef(host, parts[0], parts[1])
    else:
        raise _bad("Google container registry", raw, "not a gcr.io or pkg.dev host", expected)
    if not _PROJECT.match(ref.project):
        raise _bad(
            "Google container registry",
            raw,
            f"'{clip(ref.project)}' is not a project ID",
            expected,
        )
    _same_project(ref.project, project, "registry", raw)
    return ref
