"""The ``[attestors]`` section of the config file: which attestors run, and how.

::

    [attestors]
    cache_seconds = 10            # how long one process's attestation is reused

    [attestors.docker]            # present = on
    host = "unix:///var/run/docker.sock"

    [attestors.kubernetes]        # present = on
    node_name = "node-1"          # default: $NODE_NAME (the DaemonSet sets it)

Parsed apart from the flat settings (like ``[policy]``): no environment
variables or flags, unknown keys refused naming the key. Nothing here imports
a client library; the attestors load theirs when the daemon starts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from broker.errors import InvalidArgument


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class DockerSettings:
    host: str = field(
        default="unix:///var/run/docker.sock",
        metadata=_doc("Docker Engine API: unix:///PATH, or http://HOST:PORT"),
    )
    timeout_seconds: float = field(default=2.0, metadata=_doc("Bound on one container inspection"))


@dataclass(frozen=True)
class KubernetesSettings:
    node_name: str | None = field(
        default=None,
        metadata=_doc(
            "This node's name: pods are listed with spec.nodeName=NODE (default: $NODE_NAME)"
        ),
    )
    kubeconfig: Path | None = field(
        default=None,
        metadata=_doc(
            "A kubeconfig for the API server (default: the pod's service account, in-cluster)"
        ),
    )
    kubelet_url: str | None = field(
        default=None,
        metadata=_doc(
            "List pods from this kubelet's /pods endpoint instead of the API server "
            "(e.g. http://127.0.0.1:10255, or https://127.0.0.1:10250 with a token)"
        ),
    )
    kubelet_ca: Path | None = field(
        default=None, metadata=_doc("PEM CA of the kubelet's serving certificate")
    )
    kubelet_token_file: Path | None = field(
        default=None,
        metadata=_doc(
            "Bearer token sent to the kubelet (re-read on every listing: projected tokens rotate)"
        ),
    )
    timeout_seconds: float = field(default=5.0, metadata=_doc("Bound on one pod listing"))
    pod_cache_seconds: float = field(
        default=5.0,
        metadata=_doc(
            "How long a pod listing is reused; a container not in it lists again at once"
        ),
    )
    miss_retries: int = field(
        default=2,
        metadata=_doc(
            "Listings more after a container was not found: a new container's id reaches its "
            "pod's status a moment after it starts"
        ),
    )
    retry_interval_seconds: float = field(default=0.5, metadata=_doc("Time between those listings"))


@dataclass(frozen=True)
class AttestorSettings:
    cache_seconds: float = field(
        default=10.0,
        metadata=_doc("How long one process's attestation (and one container's) is reused"),
    )
    docker: DockerSettings | None = None
    kubernetes: KubernetesSettings | None = None

    @property
    def enabled(self) -> bool:
        return self.docker is not None or self.kubernetes is not None


def _value(where: str, kind: str, value: Any) -> Any:
    base = kind.replace(" | None", "")
    ok = True
    if base == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        value = float(value) if ok else value
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif base == "Path":
        ok = isinstance(value, str) and bool(value)
        value = Path(value).expanduser() if ok else value
    else:
        ok = isinstance(value, str) and bool(value)
    if not ok:
        words = {
            "float": "a non-negative number",
            "int": "a non-negative whole number",
            "Path": "a path",
        }.get(base, "non-empty text")
        raise InvalidArgument(f"{where} must be {words}, got {value!r}", field=where)
    return value


def _table(cls: type[Any], data: object, where: str, skip: frozenset[str] = frozenset()) -> Any:
    if not isinstance(data, dict):
        raise InvalidArgument(f"[{where}] must be a table", field=where)
    known = {f.name: f for f in fields(cls) if f.name not in skip}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise InvalidArgument(f"unknown key '{where}.{key}'", field=f"{where}.{key}")
        values[key] = _value(f"{where}.{key}", str(known[key].type), value)
    return cls(**values)


def _url(where: str, value: str, schemes: tuple[str, ...]) -> None:
    if not value.startswith(tuple(f"{s}://" for s in schemes)) or value.endswith("://"):
        raise InvalidArgument(
            f"{where} must be a {' or '.join(s + '://' for s in schemes)} URL, got {value!r}",
            field=where,
        )


def parse_attestors(
    section: object, source: str, env: Mapping[str, str] | None = None
) -> AttestorSettings | None:
    """``[attestors]`` of a config file, or None when it has none (attestation off)."""
    if section is None:
        return None
    where = "attestors"
    if not isinstance(section, dict):
        raise InvalidArgument(f"[attestors] in {source} must be a table", field=where)
    data = dict(section)
    docker = data.pop("docker", None)
    kubernetes = data.pop("kubernetes", None)
    nested = frozenset({"docker", "kubernetes"})
    top: AttestorSettings = _table(AttestorSettings, data, where, nested)
    docker_settings = None
    if docker is not None:
        docker_settings = _table(DockerSettings, docker, "attestors.docker")
        _url("attestors.docker.host", docker_settings.host, ("unix", "http", "https"))
    kube_settings: KubernetesSettings | None = None
    if kubernetes is not None:
        kube_settings = _table(KubernetesSettings, kubernetes, "attestors.kubernetes")
        if kube_settings.kubelet_url is not None:
            _url("attestors.kubernetes.kubelet_url", kube_settings.kubelet_url, ("http", "https"))
        if kube_settings.node_name is None:
            node = (env or {}).get("NODE_NAME") or None
            if node is None and kube_settings.kubelet_url is None:
                raise InvalidArgument(
                    "attestors.kubernetes needs node_name (or NODE_NAME in the environment) to "
                    "list this node's pods",
                    field="attestors.kubernetes.node_name",
                )
            kube_settings = replace(kube_settings, node_name=node)
    if docker_settings is None and kube_settings is None:
        raise InvalidArgument(
            f"[attestors] in {source} names no attestor: add [attestors.docker] and/or "
            "[attestors.kubernetes]",
            field=where,
        )
    return AttestorSettings(
        cache_seconds=top.cache_seconds, docker=docker_settings, kubernetes=kube_settings
    )
