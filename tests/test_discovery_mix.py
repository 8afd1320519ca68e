"""list-resources across real servers at once: docker-registry, the Kubernetes test API server,
the Google test server and moto, with good and broken connectors of every kind side by side.

Each broken connector (wrong password or token, nothing listening, expired
stored credential, a missing permission) yields its own clear error; the
good ones are unaffected; the JSON has exactly the documented shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from broker.api.v1 import broker_pb2 as pb
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from tests.daemon import Daemon, running_daemon
from tests.servers.google import GoogleServer
from tests.servers.kube_api import KubeApiServer
from tests.servers.moto import ACCOUNT, REGION, MotoServer, make_aws_env_safe, shared_moto
from tests.servers.ports import free_port
from tests.servers.registry import RegistryServer, start_registry

PASSWORD = "mix-Pa55word-q7"
PROJECT = "broker-test"
EXPIRED_AT = datetime(2024, 1, 1, tzinfo=UTC)
KEYS = {"connector", "connector_type", "resource_type", "resource_ids", "error"}


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    make_aws_env_safe(monkeypatch)
    server = shared_moto()
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    (tmp_path / "registry").mkdir()
    with start_registry(tmp_path / "registry", users={"alice": PASSWORD}) as reg:
        yield reg


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer(tokens={"kube-good-token": "alice"}) as api:
        yield api


@pytest.fixture
def google() -> Iterator[GoogleServer]:
    with GoogleServer() as server:
        yield server


@pytest.fixture
def daemon(tmp_path: Path, google: GoogleServer) -> Iterator[Daemon]:
    gcloud = tmp_path / "gcloud-empty"
    gcloud.mkdir()
    env = {
        **google.env(),
        "CLOUDSDK_CONFIG": str(gcloud),
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with running_daemon(tmp_path / "data", env=env) as d:
        yield d


def register(
    stub: pb_grpc.BrokerServiceStub,
    name: str,
    connector_type: str,
    config: dict[str, str],
    *,
    auth_method: str = "",
    resource_type: str = "",
    verify: bool = True,
    expires_at: datetime | None = None,
) -> None:
    stamp = None
    if expires_at is not None:
        stamp = Timestamp()
        stamp.FromDatetime(expires_at)
    stub.RegisterConnector(
        pb.RegisterConnectorRequest(
            name=name,
            connector_type=connector_type,
            auth_method=auth_method,
            resource_type=resource_type,
            config=config,
            labels={"env": "mix"},
            no_verify=not verify,
            expires_at=stamp,
        ),
        timeout=30,
    )


def expire(stub: pb_grpc.BrokerServiceStub, name: str) -> None:
    """What time does to a stored token: its expiry passes (register refuses a past one)."""
    past = Timestamp()
    past.FromDatetime(EXPIRED_AT)
    stub.UpdateConnector(pb.UpdateConnectorRequest(name=name, expires_at=past, no_verify=True))


def entry(
    name: str, connector_type: str, rt: str, ids: list[str] | None = None, error: str | None = None
) -> dict[str, Any]:
    return {
        "connector": name,
        "connector_type": connector_type,
        "resource_type": rt,
        "resource_ids": ids or [],
        "error": error,
    }


AWS_RENEW = "aws_access_key_id=... aws_secret_access_key=... aws_session_token=..."


def expired(name: str, attributes: str) -> str:
    return (
        f"connector '{name}' credentials expired at {EXPIRED_AT.strftime('%Y-%m-%dT%H:%M:%SZ')}; "
        f"renew them with `broker connector update {name} {attributes} --expires-at TIME` "
        "(TIME: RFC 3339 or +DURATION, e.g. +12h)"
    )


#: How a failed listing served from the negative cache says how old it is.
AGE = re.compile(r" \(failed \d+s ago, kept for \d+s; --refresh asks again\)$")


def _without_age(entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("error"):
        return {**entry, "error": AGE.sub("", entry["error"])}
    return entry


def test_a_mix_of_real_servers_good_and_broken_listed_together(
    daemon: Daemon,
    registry: RegistryServer,
    kube: KubeApiServer,
    google: GoogleServer,
    moto: MotoServer,
    tmp_path: Path,
) -> None:
    # docker: a good login, a wrong password, a port nobody listens on.
    dead_registry = f"127.0.0.1:{free_port()}"
    # gcp: a multi-type service account; one lacking a permission; an expired oauth2 token.
    sa = google.service_account("lister")
    limited = google.service_account("limited")
    google.deny(limited.email, "container.clusters.list")
    for bucket in ("bucket-c", "bucket-a", "bucket-b"):  # two pages of two
        google.add_bucket(PROJECT, bucket)
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    google.add_cluster(PROJECT, "us-central1", "alpha", "10.0.0.1", ca)
    google.add_cluster(PROJECT, "europe-west1-b", "beta", "10.0.0.2", ca)
    google.add_repository(PROJECT, "us-central1", "images")
    # aws: a multi-type access key against moto; an expired STS token.
    moto.client("s3").create_bucket(Bucket="aws-bucket-b")
    moto.client("s3").create_bucket(Bucket="aws-bucket-a")
    moto.create_clusters(["eks-one"])
    key, secret = moto.create_user("lister")
    aws = {"region": REGION, "endpoint_url": moto.url}

    with daemon.stub() as stub:
        docker = {"username": "alice", "registry": registry.address}
        register(stub, "reg-good", "docker", {**docker, "password": PASSWORD})
        register(stub, "reg-badpass", "docker", {**docker, "password": "nope"}, verify=False)
        register(
            stub,
            "reg-noport",
            "docker",
            {**docker, "password": PASSWORD, "registry": dead_registry},
            verify=False,
        )
        k8s = {"server": kube.url, "certificate_authority": kube.ca_pem, "cluster_name": "dev"}
        register(
            stub,
            "kube-good",
            "kubernetes",
            {**k8s, "token": "kube-good-token"},
            auth_method="token",
        )
        register(
            stub,
            "kube-badtoken",
            "kubernetes",
            {**k8s, "token": "kube-bad-token"},
            auth_method="token",
            verify=False,
        )
        register(
            stub,
            "gcp-sa",
            "gcp",
            {"service_account_json": sa.json()},
            auth_method="service-account",
        )
        register(
            stub,
            "gcp-limited",
            "gcp",
            {"service_account_json": limited.json()},
            auth_method="service-account",
        )
        register(
            stub,
            "gcp-expired",
            "gcp",
            {"token": "ya29.stale", "project_id": PROJECT},
            auth_method="oauth2-token",
            resource_type="gcs-bucket",
            verify=False,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
        expire(stub, "gcp-expired")
        register(
            stub,
            "aws-good",
            "aws",
            {**aws, "aws_access_key_id": key, "aws_secret_access_key": secret},
            auth_method="secret-key",
        )
        register(
            stub,
            "aws-expired",
            "aws",
            {
                **aws,
                "aws_access_key_id": "ASIAEXPIREDEXPIRED00",
                "aws_secret_access_key": "expired-secret",
                "aws_session_token": "expired-session-token",
            },
            auth_method="sts-token",
            resource_type="s3-bucket",
            verify=False,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
        expire(stub, "aws-expired")

    data = daemon.cli_json("connector", "list-resources", "--label", "env=mix")
    assert all(set(e) == KEYS for e in data)
    gcr = [f"{host}/{PROJECT}" for host in ("asia.gcr.io", "eu.gcr.io", "gcr.io")]
    gcp_registries = [*gcr, f"us-central1-docker.pkg.dev/{PROJECT}/images", f"us.gcr.io/{PROJECT}"]
    buckets = ["gs://bucket-a", "gs://bucket-b", "gs://bucket-c"]
    good = [
        entry("aws-good", "aws", "aws-generic", [REGION]),
        entry("aws-good", "aws", "docker-registry", [f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"]),
        entry("aws-good", "aws", "kubernetes-cluster", ["eks-one"]),
        entry("aws-good", "aws", "s3-bucket", ["s3://aws-bucket-a", "s3://aws-bucket-b"]),
        entry("gcp-limited", "gcp", "docker-registry", gcp_registries),
        entry("gcp-limited", "gcp", "gcp-generic", [PROJECT]),
        entry("gcp-limited", "gcp", "gcs-bucket", buckets),
        entry("gcp-sa", "gcp", "docker-registry", gcp_registries),
        entry("gcp-sa", "gcp", "gcp-generic", [PROJECT]),
        entry("gcp-sa", "gcp", "gcs-bucket", buckets),
        entry("gcp-sa", "gcp", "kubernetes-cluster", ["alpha", "beta"]),
        entry("kube-good", "kubernetes", "kubernetes-cluster", ["dev"]),
        entry("reg-good", "docker", "docker-registry", [registry.address]),
    ]
    broken = [
        entry("aws-expired", "aws", "s3-bucket", error=expired("aws-expired", AWS_RENEW)),
        entry("gcp-expired", "gcp", "gcs-bucket", error=expired("gcp-expired", "token=...")),
        entry(
            "gcp-limited",
            "gcp",
            "kubernetes-cluster",
            error=f"credentials lack permission container.clusters.list on project '{PROJECT}'",
        ),
        entry(
            "kube-badtoken",
            "kubernetes",
            "kubernetes-cluster",
            error=f"cluster 'dev' at {kube.url} refused the credentials "
            "(HTTP 401 Unauthorized for GET /version)",
        ),
        entry(
            "reg-badpass",
            "docker",
            "docker-registry",
            error=f"registry '{registry.address}' refused the credentials for user 'alice'",
        ),
        entry(
            "reg-noport",
            "docker",
            "docker-registry",
            error=f"cannot reach registry '{dead_registry}' at https://{dead_registry}/v2/: "
            "connection refused",
        ),
    ]
    everything = sorted(good + broken, key=lambda e: (e["connector"], e["resource_type"]))
    assert data == everything

    assert (
        daemon.cli_json("connector", "list-resources", "-l", "env=mix", "--exclude-errors") == good
    )
    # Within the failure TTL the failed listings come from the cache, with their age.
    cached = daemon.cli_json("connector", "list-resources", "-l", "env=mix", "-t", "docker")
    assert [_without_age(e) for e in cached] == [
        e for e in everything if e["connector_type"] == "docker"
    ]
    assert all(AGE.search(e["error"]) for e in cached if e.get("error"))
    assert daemon.cli_json(
        "connector", "list-resources", "-l", "env=mix", "-r", "kubernetes-cluster", "--refresh"
    ) == [e for e in everything if e["resource_type"] == "kubernetes-cluster"]
    log = daemon.log()
    assert "discovered_id_not_canonical" not in log
    assert PASSWORD not in log and secret not in log and "kube-good-token" not in log
