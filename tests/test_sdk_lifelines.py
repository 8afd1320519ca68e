"""SDK grants bound to the caller's process (``bound_to_caller_process``, what `broker
exec` asks for), in-process with real child processes watched through pidfds: the grant
ends the moment its process exits; a process that cannot be watched (gone, a zombie, a
reused pid, a caller with no pid) is refused with a typed error and nothing is granted;
watchers are released when the grant ends otherwise. The end-to-end case (`broker exec`
SIGKILLed) is in test_exec.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import aiohttp
import pytest

from broker.clock import FakeClock
from broker.errors import FailedPrecondition, Unavailable
from broker.identity.cgroups import boot_ticks, start_time
from broker.identity.principal import Principal
from broker.local import lifelines
from broker.local.sdk import SdkEndpoints
from tests import test_sdk_hardening as hardening
from tests.test_sdk_hardening import ROOT, FakeService, _aws_grant, _gcp_grant, _get, _refused

# The in-process endpoints, their FakeClock and stand-in service, shared with the hardening tests.
clock, service, endpoints, http = (
    hardening.clock,
    hardening.service,
    hardening.endpoints,
    hardening.http,
)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing in for `broker exec` (killed and reaped at the end)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _as(proc: subprocess.Popen[bytes]) -> Principal:
    """The caller as the acceptor sees it: the kernel's pid, stamped when it was read."""
    return replace(ROOT, pid=proc.pid, seen_ticks=boot_ticks())


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _gone(endpoints: SdkEndpoints, grant_id: str, within: float = 5.0) -> float:
    """Seconds until the grant is no longer listed (real time: a real process exits)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while any(g.id == grant_id for g in endpoints.list(ROOT)):
        assert loop.time() - start < within, "the grant outlived its process"
        await asyncio.sleep(0.01)
    return loop.time() - start


@pytest.mark.anyio
async def test_a_bound_grant_ends_the_moment_its_process_exits(
    endpoints: SdkEndpoints,
    http: aiohttp.ClientSession,
    service: FakeService,
    child: subprocess.Popen[bytes],
) -> None:
    caller = _as(child)
    aws, url, token = await _aws_grant(endpoints, caller, bound_to_caller=True)
    gcp, base = await _gcp_grant(endpoints, caller, bound_to_caller=True)
    assert aws.bound_pid == gcp.bound_pid == child.pid and len(endpoints.lifelines) == 2
    assert (await _get(http, url, {"Authorization": token}))[0] == 200
    granted = service.audit_lines("sdk_endpoint_granted")[-1]
    assert granted["bound_pid"] == child.pid

    child.kill()  # not reaped yet: a zombie counts as exited
    assert await _gone(endpoints, aws.id) < 1.0
    await _gone(endpoints, gcp.id)
    assert len(endpoints.lifelines) == 0
    status, _, body = await _get(http, url, {"Authorization": token})
    assert status == 401 and "revoked" in body
    assert await _refused(base)  # the metadata listener is closed
    revoked = {line["id"]: line for line in service.audit_lines("sdk_endpoint_revoked")}
    assert set(revoked) == {aws.id, gcp.id}
    assert revoked[aws.id]["reason"] == f"the process it was bound to (pid {child.pid}) exited"
    assert token not in service.stream.getvalue()


@pytest.mark.anyio
async def test_a_gone_or_reused_process_is_refused_and_nothing_granted(
    endpoints: SdkEndpoints, child: subprocess.Popen[bytes]
) -> None:
    fds = _open_fds()

    async def refused(principal: Principal) -> str:
        with pytest.raises(FailedPrecondition) as info:
            await _aws_grant(endpoints, principal, bound_to_caller=True)
        assert info.value.field == "bound_to_caller_process"
        assert not isinstance(info.value, lifelines.ProcessInvisible)
        return info.value.message

    # The pid now belongs to a process that started after the call was accepted.
    reused = replace(_as(child), seen_ticks=start_time(child.pid) - 100)
    assert f"pid {child.pid} now belongs to a process started after" in await refused(reused)
    # An exited process: still a zombie (not reaped), then gone for good.
    caller = _as(child)
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    assert f"(pid {child.pid}) has already exited" in await refused(caller)
    child.wait()
    assert f"(pid {child.pid}) has already exited" in await refused(caller)
    assert endpoints.list(ROOT) == [] and len(endpoints.lifelines) == 0
    assert _open_fds() == fds  # every pidfd opened on the way was closed


@pytest.mark.anyio
async def test_a_process_the_daemon_cannot_see_gets_an_unbound_grant_that_says_so(
    endpoints: SdkEndpoints,
    service: FakeService,
    child: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sidecar's job in another pid namespace (SO_PEERCRED pid 0), a TCP caller, a kernel
    without pidfd_open: the grant lives out its TTL as before, with bound_pid None."""
    plain, _, _ = await _aws_grant(endpoints, _as(child))  # the AWS listener is open now
    fds = _open_fds()
    over_tcp, _, _ = await _aws_grant(
        endpoints, replace(_as(child), transport="tcp"), bound_to_caller=True
    )
    other_namespace, _, _ = await _aws_grant(
        endpoints, replace(_as(child), pid=0), bound_to_caller=True
    )
    monkeypatch.delattr(os, "pidfd_open")  # a kernel before 5.3
    old_kernel, _, _ = await _aws_grant(endpoints, _as(child), bound_to_caller=True)
    grants = (over_tcp, other_namespace, old_kernel)
    assert [g.bound_pid for g in grants] == [None, None, None]
    assert len(endpoints.lifelines) == 0 and _open_fds() == fds
    assert {g.id for g in endpoints.list(ROOT)} == {g.id for g in (plain, *grants)}
    audited = {line["id"]: line for line in service.audit_lines("sdk_endpoint_granted")}
    assert [audited[g.id].get("bound_pid") for g in grants] == [None, None, None]


@pytest.mark.anyio
async def test_watchers_are_released_on_revoke_expiry_stop_and_bounded(
    endpoints: SdkEndpoints,
    clock: FakeClock,
    child: subprocess.Popen[bytes],
) -> None:
    fds = _open_fds()
    caller = _as(child)
    revoked, _, _ = await _aws_grant(endpoints, caller, bound_to_caller=True)
    await _aws_grant(endpoints, caller, bound_to_caller=True, ttl_seconds=60)
    kept, _ = await _gcp_grant(endpoints, caller, bound_to_caller=True)
    assert len(endpoints.lifelines) == 3
    await endpoints.revoke(revoked.id, ROOT)
    assert len(endpoints.lifelines) == 2
    await clock.advance(120)
    await endpoints.sweep()
    assert len(endpoints.lifelines) == 1 and [g.id for g in endpoints.list(ROOT)] == [kept.id]

    endpoints.lifelines._limit = 2  # the bound on watched processes (MAX_WATCHED)
    await _aws_grant(endpoints, caller, bound_to_caller=True)
    with pytest.raises(Unavailable) as info:
        await _aws_grant(endpoints, caller, bound_to_caller=True)
    assert info.value.field == "bound_to_caller_process"
    assert "already watches 2 processes" in info.value.message
    await _aws_grant(endpoints, caller)  # an unbound grant is not counted
    await endpoints.stop()  # daemon shutdown: every watcher released, every pidfd closed
    assert len(endpoints.lifelines) == 0
    assert _open_fds() == fds
    assert lifelines.MAX_WATCHED == 1024
