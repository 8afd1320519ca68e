"""Workload attestation as a unit: the [attestors] settings, attested selectors in policy
rules, and the attestation of one caller (caches per process start and per container,
pids gone or reused, attestors that cannot answer) against a fake /proc."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from broker.config import load_settings
from broker.errors import InvalidArgument, Unauthenticated
from broker.identity.attestors.attestation import Attestation
from broker.identity.attestors.base import AttestorUnavailable, Finding
from broker.identity.attestors.settings import (
    AttestorSettings,
    DockerSettings,
    KubernetesSettings,
    parse_attestors,
)
from broker.identity.cgroups import Container
from broker.identity.principal import selector_principal, unix_principal, with_selectors
from broker.policy import Action, Target, build_policy, parse_policy, validate_selector

ID = "24d3ccfb007a4363f1d3dc9f6718bf20dd3fed7469d1f38ac759dbddba97ec46"
ID2 = "9f2c4bc1d0e4a8cf4f3b5b5a1f60e2c7e1d92c8a5f3b6a1c0d7e8f9a0b1c2d3e"

# -- settings ---------------------------------------------------------------------------


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> AttestorSettings | None:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return load_settings(path, env=env or {}).attestors


def test_no_attestors_section_means_attestation_off(tmp_path: Path) -> None:
    assert load(tmp_path, 'log_level = "info"\n') is None


def test_attestors_with_defaults_and_the_node_name_from_the_environment(tmp_path: Path) -> None:
    got = load(
        tmp_path,
        "[attestors.docker]\n[attestors.kubernetes]\n",
        env={"NODE_NAME": "node-7"},
    )
    assert got == AttestorSettings(
        docker=DockerSettings(), kubernetes=KubernetesSettings(node_name="node-7")
    )
    assert got.docker.host == "unix:///var/run/docker.sock"  # type: ignore[union-attr]


def test_every_attestor_key_is_read(tmp_path: Path) -> None:
    got = load(
        tmp_path,
        """
[attestors]
cache_seconds = 3
[attestors.docker]
host = "unix:///run/d.sock"
timeout_seconds = 0.5
[attestors.kubernetes]
node_name = "n1"
kubeconfig = "/etc/k.yaml"
timeout_seconds = 1
pod_cache_seconds = 2
miss_retries = 0
retry_interval_seconds = 0.1
""",
    )
    assert got is not None and got.cache_seconds == 3.0
    assert got.docker == DockerSettings("unix:///run/d.sock", 0.5)
    assert got.kubernetes == KubernetesSettings(
        node_name="n1",
        kubeconfig=Path("/etc/k.yaml"),
        timeout_seconds=1.0,
        pod_cache_seconds=2.0,
        miss_retries=0,
        retry_interval_seconds=0.1,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[attestors]\n", "names no attestor"),
        ("[attestors.podman]\n", "unknown key 'attestors.podman'"),
        ("[attestors.docker]\nsocket = '/x'\n", "unknown key 'attestors.docker.socket'"),
        ("[attestors.docker]\nhost = '/var/run/docker.sock'\n", "attestors.docker.host must be"),
        ("[attestors.docker]\ntimeout_seconds = -1\n", "non-negative number"),
        ("[attestors.docker]\ntimeout_seconds = true\n", "non-negative number"),
        ("[attestors.kubernetes]\n", "needs node_name"),
        ("[attestors.kubernetes]\nnode_name = 'n'\nmiss_retries = 1.5\n", "whole number"),
        ("[attestors.kubernetes]\nkubelet_url = 'ftp://x'\n", "kubelet_url must be"),
        ("[attestors]\ndocker = 1\n", "must be a table"),
        ("attestors = 1\n", "must be a table"),
    ],
)
def test_bad_attestor_settings_are_refused_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load(tmp_path, text)


def test_the_kubelet_needs_no_node_name() -> None:
    got = parse_attestors({"kubernetes": {"kubelet_url": "http://127.0.0.1:10255"}}, "t")
    assert got is not None and got.kubernetes is not None
    assert got.kubernetes.node_name is None


# -- selectors in policy rules ----------------------------------------------------------


@pytest.mark.parametrize(
    "selector",
    [
        "k8s:ns:ml",
        "k8s:sa:trainer",
        "k8s:pod-label:app:trainer",
        "k8s:pod-label:tier:",
        "k8s:pod-name:trainer-*",
        "k8s:pod-uid:6b8e8e1a-3c5d-4c7e-9a8b-1f2e3d4c5b6a",
        "k8s:container-name:main",
        "k8s:node-name:node-1",
        "docker:label:team:ml",
        "docker:image_id:sha256:12b16205e7cd",
        "docker:image:registry.example/ml/trainer:1.2",
        "docker:env:AWS_REGION",
        f"container:{ID}",
    ],
)
def test_attested_selectors_are_valid_in_rules(selector: str) -> None:
    assert validate_selector(selector, "r") == selector
    assert parse_policy({"rules": [{"selector": selector, "role": "viewer"}]}, "t")


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("k8s:namespace:ml", "one of k8s:ns:VALUE"),
        ("k8s:ns:", "use k8s:ns:VALUE"),
        ("k8s:pod-label:app", "use k8s:pod-label:KEY:VALUE"),
        ("docker:label:team", "use docker:label:KEY:VALUE"),
        ("docker:env:AWS_SECRET_ACCESS_KEY=abc", "never its value"),
        ("docker:image", "one of docker:label:KEY:VALUE"),
        ("kubernetes:ns:ml", "bad selector"),
    ],
)
def test_malformed_attested_selectors_are_refused(selector: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_policy({"rules": [{"selector": selector, "role": "viewer"}]}, "test.toml")


def attested(uid: int, *selectors: str, container: str = ID) -> object:
    base = unix_principal(uid, uid, 4242)
    extra = frozenset({f"container:{container}", *selectors})
    return replace(base, selectors=base.selectors | extra, attested=extra, container_id=container)


def test_the_issues_example_rule_namespace_and_service_account() -> None:
    policy = build_policy(
        999,
        parse_policy(
            {
                "rules": [
                    {
                        "selectors": ["k8s:ns:ml", "k8s:sa:trainer"],
                        "role": "consumer",
                        "connectors": ["prod-aws"],
                        "resource_types": ["s3-bucket"],
                        "resource_ids": ["s3://ml-*"],
                    }
                ]
            },
            "t",
        ),
        attesting=True,
    )
    trainer = attested(1000, "k8s:ns:ml", "k8s:sa:trainer")
    other_ns = attested(1000, "k8s:ns:web", "k8s:sa:trainer")

    def get(who: object, rid: str, connector: str = "prod-aws") -> bool:
        target = Target(connector, resource_type="s3-bucket", resource_id=rid)
        return policy.decide(who, Action.GET, target).allowed  # type: ignore[arg-type]

    assert get(trainer, "s3://ml-data")
    assert not get(trainer, "s3://web-data")
    assert not get(trainer, "s3://ml-data", "other")
    assert not get(other_ns, "s3://ml-data")
    assert not get(unix_principal(1000, 1000, 1), "s3://ml-data")


def test_globs_match_attested_selectors_of_their_kind_only() -> None:
    policy = build_policy(
        999,
        parse_policy({"rules": [{"selector": "k8s:pod-name:trainer-*", "role": "viewer"}]}, "t"),
    )
    assert policy.decide(attested(5, "k8s:pod-name:trainer-7d9f"), Action.VIEW, Target()).allowed  # type: ignore[arg-type]
    assert not policy.decide(attested(5, "k8s:pod-name:web-1"), Action.VIEW, Target()).allowed  # type: ignore[arg-type]


def test_with_attestation_root_in_a_container_is_not_the_hosts_root() -> None:
    host_root = unix_principal(0, 0, 1)
    pod_root = attested(0, "k8s:ns:ml")
    off = build_policy(999, [])
    on = build_policy(999, [], attesting=True)
    assert off.decide(host_root, Action.ADMIN, Target()).allowed
    assert on.decide(host_root, Action.ADMIN, Target()).allowed
    denied = on.decide(pod_root, Action.ADMIN, Target())  # type: ignore[arg-type]
    assert not denied.allowed
    assert "in container" not in denied.reason  # label untouched here; see the e2e test
    assert "outside containers" in on.rules[0].description
    assert on.rules[0].as_data()["selectors"] == ["uid:0"]


def test_policy_check_subjects_with_selectors() -> None:
    pod = with_selectors(unix_principal(1000, 1000, None), frozenset({"k8s:ns:ml"}))
    assert "k8s:ns:ml" in pod.selectors and "uid:1000" in pod.selectors
    assert pod.describe().endswith("with k8s:ns:ml")
    only = selector_principal(frozenset({"k8s:ns:ml", "k8s:sa:trainer"}))
    assert only.selectors == {"k8s:ns:ml", "k8s:sa:trainer"}
    assert only.describe() == "selectors k8s:ns:ml, k8s:sa:trainer"


# -- attesting one caller ------------------------------------------------------------------


class FakeProc:
    """A /proc with the processes a test puts there."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, pid: int, start: int, container: str | None) -> None:
        d = self.root / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        rest = " ".join(["S", "1", *["0"] * 17, str(start), "0", "0"])
        (d / "stat").write_text(f"{pid} (worker) {rest}\n")
        path = f"/system.slice/docker-{container}.scope" if container else "/user.slice"
        (d / "cgroup").write_text(
            f"4:memory:/process_api/86a3873fcf5fadaf6dff59138d67e0a6\n0::{path}\n"
        )

    def remove(self, pid: int) -> None:
        for f in (self.root / str(pid)).iterdir():
            f.unlink()
        (self.root / str(pid)).rmdir()


class FakeAttestor:
    name = "fake"

    def __init__(self, known: dict[str, frozenset[str]]) -> None:
        self.known = known
        self.calls: list[str] = []
        self.down: str | None = None
        self.delay = 0.0

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def attest(self, container: Container) -> Finding:
        self.calls.append(container.id)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise AttestorUnavailable(self.down)
        if container.id not in self.known:
            return Finding(note=f"no container {container.short}")
        return Finding(self.known[container.id])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path)


def setup(proc: FakeProc, **known: frozenset[str]) -> tuple[Attestation, FakeAttestor, Clock]:
    fake = FakeAttestor({ID: frozenset({"k8s:ns:ml"}), ID2: frozenset({"k8s:ns:web"}), **known})
    clock = Clock()
    return Attestation([fake], cache_seconds=10.0, proc=proc.root, clock=clock), fake, clock


def caller(pid: int, uid: int = 54321) -> object:
    return unix_principal(uid, uid, pid, via="helper socket")


@pytest.mark.anyio
async def test_a_process_outside_containers_keeps_its_principal(proc: FakeProc) -> None:
    attestation, fake, _ = setup(proc)
    proc.put(10, 500, None)
    base = caller(10)
    assert await attestation.principal(base) is base  # type: ignore[arg-type]
    assert fake.calls == []


@pytest.mark.anyio
async def test_a_container_process_gets_the_attested_selectors(proc: FakeProc) -> None:
    attestation, _, _ = setup(proc)
    proc.put(11, 500, ID)
    got = await attestation.principal(caller(11))  # type: ignore[arg-type]
    assert {"uid:54321", f"container:{ID}", "k8s:ns:ml"} <= got.selectors
    assert got.attested == {f"container:{ID}", "k8s:ns:ml"}
    assert got.container_id == ID
    assert got.label == f"uid=54321 gid=54321 pid=11 in container {ID[:12]} via helper socket"
    assert got.key == f"uid:54321@container:{ID}"  # owns its SDK grants, not its uid's
    audit = got.audit_fields()
    assert audit["container"] == ID and audit["selectors"] == [f"container:{ID}", "k8s:ns:ml"]
    assert "attestation" not in audit


@pytest.mark.anyio
async def test_answers_are_cached_per_process_start_and_per_container(proc: FakeProc) -> None:
    attestation, fake, clock = setup(proc)
    proc.put(12, 500, ID)
    await attestation.principal(caller(12))  # type: ignore[arg-type]
    await attestation.principal(caller(12))  # type: ignore[arg-type]
    proc.put(13, 600, ID)  # a new process in the same container: no new look-up
    await attestation.principal(caller(13))  # type: ignore[arg-type]
    assert fake.calls == [ID]
    clock.now += 11  # both caches expired
    await attestation.principal(caller(12))  # type: ignore[arg-type]
    assert fake.calls == [ID, ID]


@pytest.mark.anyio
async def test_a_recycled_pid_does_not_reuse_a_cached_identity(proc: FakeProc) -> None:
    attestation, _, _ = setup(proc)
    proc.put(14, 500, ID)
    first = await attestation.principal(caller(14))  # type: ignore[arg-type]
    assert "k8s:ns:ml" in first.selectors
    proc.put(14, 700, ID2)  # the process exited; pid 14 went to another container's process
    second = await attestation.principal(caller(14))  # type: ignore[arg-type]
    assert "k8s:ns:web" in second.selectors and "k8s:ns:ml" not in second.selectors
    proc.put(14, 800, None)  # and then to a host process: nothing attested stays
    third = await attestation.principal(caller(14))  # type: ignore[arg-type]
    assert third.container_id is None and not any(s.startswith("k8s:") for s in third.selectors)


@pytest.mark.anyio
async def test_a_gone_or_invisible_pid_is_refused(proc: FakeProc) -> None:
    attestation, _, _ = setup(proc)
    with pytest.raises(Unauthenticated, match=r"pid 15\) is gone"):
        await attestation.principal(caller(15))  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated, match="not visible to the daemon"):
        await attestation.principal(unix_principal(1000, 1000, 0))


@pytest.mark.anyio
async def test_a_process_started_after_the_connection_is_refused(proc: FakeProc) -> None:
    attestation, _, _ = setup(proc)
    proc.put(16, 900, ID)
    with pytest.raises(Unauthenticated, match="reused"):
        await attestation.principal(caller(16), started_by=800)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_requests_on_one_connection_must_come_from_its_first_process(
    proc: FakeProc,
) -> None:
    attestation, _, _ = setup(proc)

    class Conn:
        pass

    conn = Conn()
    proc.put(17, 500, ID)
    await attestation.principal(caller(17), connection=conn)  # type: ignore[arg-type]
    await attestation.principal(caller(17), connection=conn)  # type: ignore[arg-type]
    proc.put(17, 501, ID)  # pid reused while a child kept the connection open
    with pytest.raises(Unauthenticated, match="another process than the one that called first"):
        await attestation.principal(caller(17), connection=conn)  # type: ignore[arg-type]
    # another connection from the new process is fine
    await attestation.principal(caller(17), connection=Conn())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_an_unreachable_attestor_leaves_only_the_container_and_says_why(
    proc: FakeProc,
) -> None:
    attestation, fake, clock = setup(proc)
    fake.down = "the API server at https://127.0.0.1:1 is unreachable: refused"
    proc.put(18, 500, ID)
    got = await attestation.principal(caller(18, uid=0))  # type: ignore[arg-type]
    assert got.attested == {f"container:{ID}"}
    assert got.attestation_note == f"fake attestor: {fake.down}"
    assert got.audit_fields()["attestation"] == got.attestation_note
    policy = build_policy(999, parse_policy({"rules": []}, "t"), attesting=True)
    denied = policy.decide(got, Action.GET, Target("prod"))
    assert not denied.allowed  # root, but in a container: not the built-in admin
    assert f"[attestation: fake attestor: {fake.down}]" in denied.reason
    # Kept a second only: once the API is back, the next call is attested in full.
    fake.down = None
    assert (await attestation.principal(caller(18))).attested == {f"container:{ID}"}  # type: ignore[arg-type]
    clock.now += 1.5
    assert "k8s:ns:ml" in (await attestation.principal(caller(18))).selectors  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_an_unknown_container_gets_no_attested_selectors(proc: FakeProc) -> None:
    attestation, _, _ = setup(proc)
    unknown = "ab" * 32
    proc.put(19, 500, unknown)
    got = await attestation.principal(caller(19))  # type: ignore[arg-type]
    assert got.attested == {f"container:{unknown}"}
    assert got.attestation_note == f"fake attestor: no container {unknown[:12]}"


@pytest.mark.anyio
async def test_callers_of_a_new_container_share_one_look_up(proc: FakeProc) -> None:
    attestation, fake, _ = setup(proc)
    fake.delay = 0.05
    for pid in range(20, 30):
        proc.put(pid, 500 + pid, ID)
    got = await asyncio.gather(*(attestation.principal(caller(p)) for p in range(20, 30)))  # type: ignore[arg-type]
    assert all("k8s:ns:ml" in p.selectors for p in got)
    assert fake.calls == [ID]
