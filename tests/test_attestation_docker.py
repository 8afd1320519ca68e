"""The Docker attestor against the real dockerd (a container run from an imported busybox
image) where it runs here, else the Engine API stand-in; failures against the stand-in."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.identity.attestors.base import AttestorUnavailable
from broker.identity.attestors.docker import DockerAttestor
from broker.identity.attestors.settings import DockerSettings
from broker.identity.cgroups import Container
from tests.servers.docker_engine import IMAGE, Engine, FakeEngine, docker_engine

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-value-never-a-selector"


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with docker_engine() as found:
        yield found


@pytest.fixture
def fake() -> Iterator[FakeEngine]:
    engine = FakeEngine()
    engine.start()
    yield engine
    engine.stop()


async def attest(host: str, container_id: str, timeout: float = 2.0) -> object:
    attestor = DockerAttestor(DockerSettings(host, timeout))
    await attestor.start()
    try:
        return await attestor.attest(Container(container_id, "docker"))
    finally:
        await attestor.aclose()


async def test_a_containers_labels_image_and_env_names(engine: Engine) -> None:
    container_id = engine.create(
        {"team": "ml", "tier": ""}, {"AWS_REGION": "eu-west-1", "TOKEN": SECRET}
    )
    try:
        finding = await attest(engine.host, container_id)
    finally:
        engine.remove(container_id)
    selectors = finding.selectors  # type: ignore[attr-defined]
    assert {
        "docker:label:team:ml",
        "docker:label:tier:",
        f"docker:image:{IMAGE}",
        f"docker:image_id:{engine.image_id()}",
        "docker:env:AWS_REGION",
        "docker:env:TOKEN",
    } <= selectors, (engine.real, selectors)
    assert not any(SECRET in s or "eu-west-1" in s for s in selectors)
    print(f"engine: {'real dockerd' if engine.real else 'stand-in'}")
    assert finding.note is None  # type: ignore[attr-defined]


async def test_a_container_the_engine_does_not_know(engine: Engine) -> None:
    finding = await attest(engine.host, "ab" * 32)
    assert finding.selectors == frozenset()  # type: ignore[attr-defined]
    assert finding.note == f"the Engine API at {engine.host} knows no container abababababab"  # type: ignore[attr-defined]


async def test_an_engine_error_is_unavailable(fake: FakeEngine) -> None:
    fake.fail_with = 500
    with pytest.raises(AttestorUnavailable, match="answered 500"):
        await attest(fake.host, fake.create({}, {}))


async def test_no_engine_is_unavailable(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/missing.sock"
    with pytest.raises(AttestorUnavailable) as caught:
        await attest(host, "ab" * 32)
    assert caught.value.message.startswith(f"the Engine API at {host} is unreachable: ")
    assert "No such file or directory" in caught.value.message


async def test_an_engine_that_never_answers_times_out() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/silent.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(8)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(AttestorUnavailable, match=r"did not answer within 0\.3 s"):
                await attest(f"unix://{path}", "ab" * 32, timeout=0.3)
            assert asyncio.get_running_loop().time() - started < 2
        finally:
            listener.close()


async def test_containers_of_other_runtimes_are_not_asked_about(fake: FakeEngine) -> None:
    attestor = DockerAttestor(DockerSettings(fake.host))
    await attestor.start()
    try:
        for runtime in ("containerd", "cri-o", "podman"):
            finding = await attestor.attest(Container("ab" * 32, runtime))
            assert finding.selectors == frozenset() and finding.note is None
    finally:
        await attestor.aclose()
    assert not any("/containers/" in path for path in fake.requests)
