"""Deployment files, checked offline: Kubernetes manifests, Dockerfile, alert rules.

Manifests are validated against the Kubernetes OpenAPI schemas shipped in the
``kubernetes-validate`` package (strict: unknown fields are errors), for the
oldest release with native sidecars (1.29) and the newest it knows. kubectl's
``--dry-run=client`` cannot do this here: it downloads the schema from a live
API server. Structural checks then hold what no schema knows: the socket
volume is shared, the job never sees the long-lived key, the probes run a
command that exists, the embedded config loads.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from copy import deepcopy
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from broker.config import Settings, load_settings
from broker.identity.principal import Principal, unix_principal
from broker.metrics import COUNTERS, GAUGES
from broker.policy import Action, Target, build_policy

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
PROMETHEUS = ROOT / "deploy" / "prometheus"
KUBE_VERSIONS = ("1.29.0", "1.37.0")
BROKER_GID = 65532
BIN = Path(sys.executable).parent
#: BROKER_* variables read outside Settings (by the key loader and the clients).
OTHER_BROKER_ENV = {
    "BROKER_SECRET_KEY",
    "BROKER_HELPER_SOCKET",
    "BROKER_CONFIG",
    "BROKER_DAEMON_USER",
}


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((KUBE / name).read_text()) if d]


def by_kind(name: str, kind: str) -> dict[str, Any]:
    return next(d for d in documents(name) if d["kind"] == kind)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]
    return spec if obj["kind"] == "Pod" else spec["template"]["spec"]


def containers(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


MANIFESTS = sorted(p.name for p in KUBE.glob("*.yaml"))
ALL_DOCS = [(name, i) for name in MANIFESTS for i, _ in enumerate(documents(name))]


# -- schema ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize(("name", "index"), ALL_DOCS)
def test_manifest_is_valid_against_the_kubernetes_schema(
    name: str, index: int, version: str
) -> None:
    kubernetes_validate.validate(documents(name)[index], version, strict=True)


def test_schema_validation_rejects_a_misspelt_field() -> None:
    job = deepcopy(by_kind("sidecar-job.yaml", "Job"))
    pod_spec(job)["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="volumeMount"):
        kubernetes_validate.validate(job, KUBE_VERSIONS[-1], strict=True)


# -- what every manifest holds to ----------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_containers_are_pinned_bounded_and_unprivileged(name: str) -> None:
    for obj in documents(name):
        if obj["kind"] not in ("Pod", "Job", "DaemonSet"):
            continue
        spec = pod_spec(obj)
        assert spec["automountServiceAccountToken"] is False
        for cname, c in containers(spec).items():
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), cname
            assert "memory" in c["resources"]["requests"], cname
            security = c["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, cname
            assert security["capabilities"]["drop"] == ["ALL"], cname
            for var in env_of(c):
                if var.startswith("BROKER_"):
                    known = {f"BROKER_{f.name.upper()}" for f in fields(Settings)}
                    assert var in known | OTHER_BROKER_ENV, f"{cname}: unknown {var}"


@pytest.mark.parametrize("name", MANIFESTS)
def test_probes_run_the_broker_health_command(name: str) -> None:
    commands = {
        tuple(probe["exec"]["command"])
        for obj in documents(name)
        if obj["kind"] in ("Pod", "Job", "DaemonSet")
        for c in containers(pod_spec(obj)).values()
        for key in ("startupProbe", "readinessProbe", "livenessProbe")
        if (probe := c.get(key))
    }
    for command in commands:
        assert command[:2] == ("broker", "health"), command
        result = subprocess.run(
            [str(BIN / command[0]), *command[1:], "--socket", "/nonexistent/broker.sock"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        # A real command with real options: it runs, and fails only for want of a daemon.
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("unhealthy:"), result.stderr


# -- the sidecar Job -------------------------------------------------------------------


def test_sidecar_job_shares_the_socket_and_keeps_the_key_from_the_job() -> None:
    spec = pod_spec(by_kind("sidecar-job.yaml", "Job"))
    cs = containers(spec)
    broker, job = cs["broker"], cs["backup"]
    # A native sidecar: started (and healthy) before the job, stopped after it.
    assert broker in spec["initContainers"] and broker["restartPolicy"] == "Always"
    assert broker["startupProbe"]["exec"]["command"][:2] == ["broker", "health"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    socket_volume = mounts(broker)["/run/broker"]
    assert "emptyDir" in volumes[socket_volume]
    assert mounts(job)["/run/broker"] == socket_volume
    assert env_of(job)["BROKER_SOCKET"].startswith("/run/broker/")
    assert env_of(job)["BROKER_HELPER_SOCKET"].startswith("/run/broker/")
    # The job's clients trust the broker's sockets, owned by its uid.
    assert env_of(job)["BROKER_DAEMON_USER"] == str(BROKER_GID)
    # The sockets are 0660: the pod's fsGroup is the broker's group.
    assert spec["securityContext"]["fsGroup"] == BROKER_GID
    # State from a Secret, seen by the broker side only.
    secret_volumes = {n for n, v in volumes.items() if "secret" in v}
    assert secret_volumes
    secret_names = {volumes[n]["secret"]["secretName"] for n in secret_volumes}
    key_ref = env_of(broker)["BROKER_SECRET_KEY"]["secretKeyRef"]["name"]
    assert key_ref in secret_names
    assert not secret_volumes & set(mounts(job).values())
    assert not any(isinstance(v, dict) and "secretKeyRef" in v for v in env_of(job).values())
    restore = cs["restore-state"]
    assert set(mounts(restore).values()) >= secret_volumes | {mounts(broker)["/var/lib/broker"]}


def test_sidecar_jobs_aws_config_asks_the_broker() -> None:
    config = by_kind("sidecar-job.yaml", "ConfigMap")["data"]["config"]
    process = next(
        line.split("=", 1)[1] for line in config.splitlines() if "credential_process" in line
    )
    argv = shlex.split(process)
    assert argv[0] == "broker-aws-credential"
    assert (BIN / argv[0]).exists()  # a console script this package installs


def _config_map(manifest: str, name: str) -> dict[str, Any]:
    return next(
        d for d in documents(manifest) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name
    )


def test_sidecar_policy_lets_the_job_get_its_bucket_and_nothing_more(tmp_path: Path) -> None:
    spec = pod_spec(by_kind("sidecar-job.yaml", "Job"))
    broker, job = containers(spec)["broker"], containers(spec)["backup"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    # The daemon reads the ConfigMap's broker.toml: --config names the mounted file.
    args = broker["args"]
    config_path = Path(args[args.index("--config") + 1])
    volume = volumes[mounts(broker)[str(config_path.parent)]]
    data = _config_map("sidecar-job.yaml", volume["configMap"]["name"])["data"]
    (tmp_path / "broker.toml").write_text(data[config_path.name])
    assert mounts(broker)[str(config_path.parent)] not in mounts(job).values()
    settings = load_settings(tmp_path / "broker.toml", env={})
    policy = build_policy(BROKER_GID, settings.policy_rules, attesting=False)
    assert len(settings.policy_rules) == 1  # the job's rule; the rest is built in

    # What the job asks for: its credential_process's connector and resource.
    aws = by_kind("sidecar-job.yaml", "ConfigMap")["data"]["config"]
    process = next(
        shlex.split(line.split("=", 1)[1])
        for line in aws.splitlines()
        if "credential_process" in line
    )
    connector = process[1]
    rtype = process[process.index("--resource-type") + 1]
    rid = process[process.index("--resource-id") + 1]
    assert (connector, rtype, rid) == ("backup-s3", "s3-bucket", "s3://example-backups")
    # The job's uid in the pod's groups (fsGroup is a supplementary group of each container).
    job_uid = job["securityContext"]["runAsUser"]
    caller = unix_principal(job_uid, job_uid, 4242, frozenset({BROKER_GID}), via="helper socket")
    assert policy.roles(caller) == ["consumer"]

    def allowed(who: Principal, action: Action, target: Target) -> bool:
        return policy.decide(who, action, target).allowed

    for action in (Action.GET, Action.WATCH, Action.VERIFY, Action.LIST_RESOURCES):
        assert allowed(caller, action, Target(connector, {}, rtype, rid)), action
    # Not another bucket, resource type or connector.
    assert not allowed(caller, Action.GET, Target(connector, {}, rtype, "s3://example-other"))
    assert not allowed(caller, Action.GET, Target(connector, {}, "iam-role", rid))
    assert not allowed(caller, Action.GET, Target("other-aws", {}, rtype, rid))
    # Never an admin's: register / delete, secrets, the stored key itself, the daemon.
    for action in (Action.MANAGE, Action.SHOW_SECRETS, Action.GET_LONG_LIVED):
        assert not allowed(caller, action, Target(connector)), action
    assert not allowed(caller, Action.GET_LONG_LIVED, Target(connector, {}, rtype, rid))
    assert not allowed(caller, Action.ADMIN, Target())
    # Another uid in the same group gets nothing; the broker's own uid administers it.
    other = unix_principal(job_uid + 1, job_uid + 1, 4243, frozenset({BROKER_GID}))
    assert policy.roles(other) == []
    assert not allowed(other, Action.GET, Target(connector, {}, rtype, rid))
    own = unix_principal(BROKER_GID, BROKER_GID, 1)
    assert allowed(own, Action.MANAGE, Target(connector))


# -- the per-node DaemonSet --------------------------------------------------------------


def test_daemonset_serves_the_node_through_a_host_path_socket() -> None:
    ds = by_kind("daemonset.yaml", "DaemonSet")
    spec = pod_spec(ds)
    broker = containers(spec)["broker"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    socket_volume = volumes[mounts(broker)["/run/broker"]]
    assert socket_volume["hostPath"]["path"] == "/run/broker"
    assert "hostPath" in volumes[mounts(broker)["/var/lib/broker"]]
    security = broker["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (BROKER_GID, BROKER_GID)
    assert security["readOnlyRootFilesystem"] is True
    # The init container hands both host folders to the broker's user, and nothing more.
    init = containers(spec)["host-dirs"]
    assert set(init["securityContext"]["capabilities"]["add"]) <= {
        "CHOWN",
        "FOWNER",
        "DAC_OVERRIDE",
    }
    assert set(mounts(init).values()) == {
        mounts(broker)["/run/broker"],
        mounts(broker)["/var/lib/broker"],
    }
    # Pods on the node use the same folder and join the sockets' group.
    client = by_kind("node-client-pod.yaml", "Pod")
    client_spec = pod_spec(client)
    client_volumes = {v["name"]: v for v in client_spec["volumes"]}
    client_mount = mounts(client_spec["containers"][0])["/run/broker"]
    assert client_volumes[client_mount]["hostPath"]["path"] == "/run/broker"
    assert BROKER_GID in client_spec["securityContext"]["supplementalGroups"]


def test_daemonset_config_loads_and_exposes_the_metrics_port(tmp_path: Path) -> None:
    ds = by_kind("daemonset.yaml", "DaemonSet")
    broker = containers(pod_spec(ds))["broker"]
    config_map = by_kind("daemonset.yaml", "ConfigMap")
    mount_dir = next(p for p, n in mounts(broker).items() if n == "config")
    (tmp_path / "broker.toml").write_text(config_map["data"]["broker.toml"])
    args = broker["args"]
    assert args[args.index("--config") + 1] == f"{mount_dir}/broker.toml"
    # Raises on any bad key; NODE_NAME as the downward API sets it.
    settings = load_settings(tmp_path / "broker.toml", env={"NODE_NAME": "node-a"})
    assert settings.metrics is not None
    port = int(settings.metrics.rsplit(":", 1)[1])
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in broker["ports"]
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


def _attested(uid: int, ns: str, sa: str, **labels: str) -> Principal:
    """A caller in a pod, as the Kubernetes attestor would describe it."""
    base = unix_principal(uid, uid, 4242, via="helper socket")
    extra = frozenset(
        {
            "container:" + "ab" * 32,
            f"k8s:ns:{ns}",
            f"k8s:sa:{sa}",
            *(f"k8s:pod-label:{k}:{v}" for k, v in labels.items()),
        }
    )
    return replace(base, selectors=base.selectors | extra, attested=extra, container_id="ab" * 32)


def test_daemonset_attests_the_pods_of_its_node(tmp_path: Path) -> None:
    ds = by_kind("daemonset.yaml", "DaemonSet")
    spec = pod_spec(ds)
    broker, init = containers(spec)["broker"], containers(spec)["host-dirs"]
    # The node's pids: SO_PEERCRED and /proc/PID/cgroup name the caller as the node sees it.
    assert spec["hostPID"] is True
    # Its own service account, whose token reaches the broker container only.
    account = by_kind("daemonset.yaml", "ServiceAccount")["metadata"]
    assert spec["serviceAccountName"] == account["name"]
    assert spec["automountServiceAccountToken"] is False
    token_mount = mounts(broker)["/var/run/secrets/kubernetes.io/serviceaccount"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    sources = volumes[token_mount]["projected"]["sources"]
    assert any("serviceAccountToken" in source for source in sources)
    assert token_mount not in mounts(init).values()
    assert env_of(broker)["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # RBAC: get and list pods, nothing else, for that account.
    role = by_kind("daemonset.yaml", "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    binding = by_kind("daemonset.yaml", "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    # The config turns the attestor on with the node's name, in-cluster.
    (tmp_path / "broker.toml").write_text(
        by_kind("daemonset.yaml", "ConfigMap")["data"]["broker.toml"]
    )
    settings = load_settings(tmp_path / "broker.toml", env={"NODE_NAME": "node-a"})
    assert settings.attestors is not None and settings.attestors.kubernetes is not None
    assert settings.attestors.kubernetes.node_name == "node-a"
    assert settings.attestors.kubernetes.kubeconfig is None  # the service account's token


def test_daemonsets_example_policy_for_two_namespaces(tmp_path: Path) -> None:
    (tmp_path / "broker.toml").write_text(
        by_kind("daemonset.yaml", "ConfigMap")["data"]["broker.toml"]
    )
    settings = load_settings(tmp_path / "broker.toml", env={"NODE_NAME": "node-a"})
    policy = build_policy(BROKER_GID, settings.policy_rules, attesting=True)

    def get(who: Principal, connector: str, rtype: str, rid: str) -> bool:
        return policy.decide(who, Action.GET, Target(connector, {}, rtype, rid)).allowed

    trainer = _attested(1000, "ml", "trainer")
    assert get(trainer, "prod-aws", "s3-bucket", "s3://ml-data")
    assert not get(trainer, "prod-aws", "s3-bucket", "s3://web-assets")
    assert not get(trainer, "web-registry", "docker-registry", "registry.example")
    assert not get(_attested(1000, "ml", "default"), "prod-aws", "s3-bucket", "s3://ml-data")
    storefront = _attested(1000, "web", "default", app="storefront")
    assert get(storefront, "web-registry", "docker-registry", "registry.example")
    assert not get(storefront, "prod-aws", "s3-bucket", "s3://ml-data")
    assert not get(_attested(1000, "web", "trainer"), "prod-aws", "s3-bucket", "s3://ml-data")
    # Admin: the broker's own pod; not root nor the broker's uid in any other pod.
    own = _attested(BROKER_GID, "credential-broker", "credential-broker")
    assert policy.decide(own, Action.MANAGE, Target("prod-aws")).allowed
    for stranger in (_attested(0, "ml", "trainer"), _attested(BROKER_GID, "web", "default")):
        assert not policy.decide(stranger, Action.ADMIN, Target()).allowed


# -- Dockerfile and alert rules -------------------------------------------------------------


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_would_catch_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text((ROOT / "Dockerfile").read_text().replace("USER 65532:65532\n", ""))
    bad.write_text(bad.read_text() + "RUN cd /tmp && ls\n")
    result = subprocess.run([str(BIN / "hadolint"), str(bad)], capture_output=True, text=True)
    assert "DL3003" in result.stdout  # "use WORKDIR to switch to a directory"


def test_alert_rules_pass_promtool_checks_and_unit_tests() -> None:
    check = subprocess.run(
        ["promtool", "check", "rules", "broker-alerts.yaml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        ["promtool", "test", "rules", "broker-alerts.test.yaml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_alert_rules_use_only_metrics_the_broker_exports() -> None:
    exported = {f"{name}_total" for name, _ in COUNTERS.values()}
    exported |= {name for name, _ in GAUGES.values()}
    rules = yaml.safe_load((PROMETHEUS / "broker-alerts.yaml").read_text())
    used = {
        metric
        for group in rules["groups"]
        for rule in group["rules"]
        for metric in re.findall(r"\bbroker_[a-z_]+", rule["expr"])
    }
    assert used
    assert used <= exported, used - exported


# -- the fleet on PostgreSQL ------------------------------------------------------------------


def test_fleet_daemons_share_one_database_over_verified_tls_and_one_key(tmp_path: Path) -> None:
    ds = by_kind("fleet.yaml", "DaemonSet")
    spec = pod_spec(ds)
    broker = containers(spec)["broker"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    # The config loads, and names a PostgreSQL URL with a verified server certificate.
    config_map = by_kind("fleet.yaml", "ConfigMap")
    (tmp_path / "broker.toml").write_text(config_map["data"]["broker.toml"])
    args = broker["args"]
    mount_dir = next(p for p, n in mounts(broker).items() if n == "config")
    assert args[args.index("--config") + 1] == f"{mount_dir}/broker.toml"
    settings = load_settings(tmp_path / "broker.toml", env={})
    url = settings.database_url
    assert url is not None and "sslmode=verify-full" in url
    # No password in the config: libpq's PGPASSWORD, from a Secret.
    assert re.match(r"postgresql://[^:@/]+@", url), url
    assert env_of(broker)["PGPASSWORD"]["secretKeyRef"]["name"] == "broker-postgres"
    # The CA file it names is mounted from that Secret.
    ca_path = Path(re.search(r"sslrootcert=([^&]+)", url).group(1))  # type: ignore[union-attr]
    ca_volume = volumes[mounts(broker)[str(ca_path.parent)]]
    assert ca_volume["secret"]["secretName"] == "broker-postgres"
    assert {"key": "ca.crt", "path": ca_path.name} in ca_volume["secret"]["items"]
    # One key for the fleet, from a Secret; nothing durable on the node.
    assert env_of(broker)["BROKER_SECRET_KEY"]["secretKeyRef"]["name"] == "broker-key"
    assert "emptyDir" in volumes[mounts(broker)["/var/lib/broker"]]
    assert volumes[mounts(broker)["/run/broker"]]["hostPath"]["path"] == "/run/broker"
    # Ready only while current (DEGRADED fails --strict); alive while serving.
    assert "--strict" in broker["readinessProbe"]["exec"]["command"]
    assert "--strict" not in broker["livenessProbe"]["exec"]["command"]
    assert settings.database_pool_size >= 1 and settings.change_retention_seconds > 0
