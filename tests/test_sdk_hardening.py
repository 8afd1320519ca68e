"""SDK endpoints in-process, with real listeners and a real HTTP client, a FakeClock and
the real access policy: request hardening, grant TTL and sweep, uid binding, ownership.

The broker service behind them is a stand-in that checks the real Gatekeeper and hands
out fixed credentials (the end-to-end tests in test_sdk_endpoints.py use the daemon).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

import aiohttp
import pytest

from broker.access import Gatekeeper
from broker.audit import AuditLog
from broker.clock import FakeClock
from broker.errors import InvalidArgument, NotFound, PermissionDenied
from broker.grants import Grant
from broker.identity import tcp_owner
from broker.identity.principal import Principal, unix_principal
from broker.local import grant_table, sdk
from broker.local.sdk import SdkEndpoints
from broker.model import ClientCredential, Connector
from broker.policy import AccessPolicy, Action, Rule, Target, build_policy
from broker.service import BrokerService, Issued

ROOT = unix_principal(0, 0, 1, via="test")
ALICE = unix_principal(50_001, 50_001, 2, via="test")
BOB = unix_principal(50_002, 50_002, 3, via="test")
CONSUMERS = [Rule("consumer", ("uid:50001",)), Rule("consumer", ("uid:50002",))]
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
FLAVOR = {"Metadata-Flavor": "Google"}


class FakeService:
    """get_credentials as the real service does it: gate first, then a credential."""

    def __init__(self, clock: FakeClock, policy: AccessPolicy) -> None:
        self.clock = clock
        self.stream = io.StringIO()
        self.audit = AuditLog(self.stream)
        self.gate = Gatekeeper(policy, self.audit)
        self.error: Exception | None = None

    def audit_lines(self, event: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [line for line in lines if line["event"] == event]

    async def get_credentials(
        self,
        name: str,
        resource_type: str | None = None,
        resource_id: str | None = None,
        *,
        principal: Principal,
        via: str = "grpc",
        variant: str = "",
    ) -> Issued:
        if self.error is not None:
            raise self.error
        self.gate.require(principal, Action.GET, Target(name, {}, resource_type, resource_id))
        kind = "aws" if name.startswith("aws") else "gcp"
        now = self.clock.now()
        connector = Connector(
            id=f"id-{name}",
            name=name,
            connector_type=kind,
            auth_method="test",
            resource_type=None,
            resource_id=None,
            config={},
            labels={},
            expiration_seconds=None,
            expires_at=None,
            created_at=now,
            updated_at=now,
            revision=1,
        )
        config: dict[str, Any] = (
            {
                "aws_access_key_id": "ASIATEST",
                "aws_secret_access_key": "secret",
                "aws_session_token": "session",
            }
            if kind == "aws"
            else {"token": "ya29.test", "project_id": "proj"}
        )
        credential = ClientCredential(
            connector_type=kind,
            auth_method="test",
            resource_type=resource_type or f"{kind}-generic",
            resource_id=resource_id or "",
            config=config,
            expires_at=now + timedelta(hours=1),
        )
        self.audit.record("credential_issued", connector=name, via=via, **principal.audit_fields())
        return Issued(connector, credential)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(clock: FakeClock) -> FakeService:
    return FakeService(clock, build_policy(os.getuid(), CONSUMERS))


@pytest.fixture
async def endpoints(clock: FakeClock, service: FakeService) -> AsyncIterator[SdkEndpoints]:
    ep = SdkEndpoints(cast(BrokerService, service), clock)
    try:
        yield ep
    finally:
        await ep.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _aws_grant(
    ep: SdkEndpoints, principal: Principal = ROOT, **kw: Any
) -> tuple[Grant, str, str]:
    grant, env = await ep.create("aws", "aws1", None, None, principal=principal, **kw)
    return (
        grant,
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"],
    )


async def _gcp_grant(ep: SdkEndpoints, principal: Principal = ROOT, **kw: Any) -> tuple[Grant, str]:
    grant, env = await ep.create("gcp", "gcp1", None, None, principal=principal, **kw)
    return grant, f"http://{env['GCE_METADATA_HOST']}"


async def _get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    async with http.get(url, headers=headers or {}) as reply:
        return reply.status, dict(reply.headers), await reply.text()


async def _refused(url: str, timeout: float = 5.0) -> bool:
    """Whether the listener behind ``url`` is closed (polled: closing runs in the background)."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            return True
        writer.close()
        await writer.wait_closed()
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- hardening

BAD_HEADERS = [
    pytest.param({"X-Forwarded-For": "10.0.0.1"}, "X-Forwarded-For", id="x-forwarded-for"),
    pytest.param({"Forwarded": "for=10.0.0.1"}, "Forwarded", id="forwarded"),
    pytest.param({"Origin": "http://evil.example"}, "Origin", id="origin"),
    pytest.param({"Host": "evil.example:{port}"}, "Host", id="foreign-host"),
    pytest.param({"Host": "metadata.google.internal"}, "Host", id="metadata-host"),
    pytest.param({"Host": "127.0.0.1:1"}, "Host", id="other-port"),
]


def _port(url: str) -> str:
    return url.removeprefix("http://").split("/")[0].split(":")[1]


@pytest.mark.anyio
@pytest.mark.parametrize(("headers", "named"), BAD_HEADERS)
async def test_aws_endpoint_refuses_proxied_cross_origin_and_foreign_host(
    endpoints: SdkEndpoints,
    http: aiohttp.ClientSession,
    service: FakeService,
    headers: dict[str, str],
    named: str,
) -> None:
    _, url, token = await _aws_grant(endpoints)
    headers = {k: v.format(port=_port(url)) for k, v in headers.items()}
    status, reply_headers, body = await _get(http, url, {"Authorization": token, **headers})
    assert status == 403
    assert named in json.loads(body)["error"]
    assert "\n" not in reply_headers["X-Broker-Error"]
    refused = service.audit_lines("sdk_endpoint_refused")
    assert refused and named in refused[-1]["reason"]
    assert not service.audit_lines("credential_issued")[1:]  # only the creation check


@pytest.mark.anyio
@pytest.mark.parametrize(("headers", "named"), BAD_HEADERS)
async def test_metadata_endpoint_refuses_proxied_cross_origin_and_foreign_host(
    endpoints: SdkEndpoints,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    named: str,
) -> None:
    _, base = await _gcp_grant(endpoints)
    headers = {k: v.format(port=_port(base)) for k, v in headers.items()}
    for path in (TOKEN_PATH, "/"):
        status, reply_headers, body = await _get(http, base + path, {**FLAVOR, **headers})
        assert status == 403, path
        assert reply_headers["Metadata-Flavor"] == "Google"
        assert named in json.loads(body)["error"]


@pytest.mark.anyio
async def test_loopback_host_forms_are_accepted(
    endpoints: SdkEndpoints, http: aiohttp.ClientSession
) -> None:
    _, url, token = await _aws_grant(endpoints)
    _, base = await _gcp_grant(endpoints)
    for host in (f"127.0.0.1:{_port(url)}", f"localhost:{_port(url)}", f"LOCALHOST:{_port(url)}"):
        status, _, body = await _get(http, url, {"Authorization": token, "Host": host})
        assert status == 200, body
    status, headers, body = await _get(
        http, base + TOKEN_PATH, {**FLAVOR, "Host": "localhost:" + _port(base)}
    )
    assert status == 200, body
    assert json.loads(body)["access_token"] == "ya29.test"
    assert headers["Metadata-Flavor"] == "Google"


@pytest.mark.anyio
async def test_a_request_without_host_is_refused(endpoints: SdkEndpoints) -> None:
    _, base = await _gcp_grant(endpoints)
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {TOKEN_PATH} HTTP/1.0\r\nMetadata-Flavor: Google\r\n\r\n".encode())
    await writer.drain()
    answer = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    assert answer.split(" ", 2)[1] == "403", answer
    assert "Metadata-Flavor: Google" in answer
    assert "Host header" in answer


@pytest.mark.anyio
async def test_errors_are_one_line_never_a_traceback(
    endpoints: SdkEndpoints, http: aiohttp.ClientSession, service: FakeService
) -> None:
    _, url, token = await _aws_grant(endpoints)
    _, base = await _gcp_grant(endpoints)
    service.error = RuntimeError("boom with a secret inside")
    status, _, body = await _get(http, url, {"Authorization": token})
    assert (status, json.loads(body)) == (500, {"error": "internal error", "code": "internal"})
    status, headers, body = await _get(http, base + TOKEN_PATH, FLAVOR)
    assert status == 500 and "Traceback" not in body and "boom" not in body
    assert headers["Metadata-Flavor"] == "Google"
    status, headers, _ = await _get(http, base + "/computeMetadata/v1/nothing-here", FLAVOR)
    assert status == 404
    assert headers["Metadata-Flavor"] == "Google"


# --------------------------------------------------------------------------- owner re-checked


@pytest.mark.anyio
async def test_the_owner_loses_access_and_both_endpoints_answer_403(
    endpoints: SdkEndpoints, http: aiohttp.ClientSession, service: FakeService
) -> None:
    _, url, token = await _aws_grant(endpoints, ALICE)
    status, _, _ = await _get(http, url, {"Authorization": token})
    assert status == 200
    issued = service.audit_lines("credential_issued")[-1]
    assert issued["via"].startswith("aws-container-endpoint grant=")
    assert issued["uid"] == ALICE.uid

    service.gate.replace(build_policy(os.getuid(), []))  # a policy reload drops Alice's rule
    status, _, body = await _get(http, url, {"Authorization": token})
    assert status == 403
    assert "may not get" in json.loads(body)["error"]
    denied = service.audit_lines("access_denied")[-1]
    assert denied["uid"] == ALICE.uid and denied["connector"] == "aws1"


@pytest.mark.anyio
async def test_a_revoked_owner_gets_403_from_the_metadata_endpoint(
    endpoints: SdkEndpoints, http: aiohttp.ClientSession, service: FakeService
) -> None:
    service.gate.replace(build_policy(os.getuid(), [Rule("consumer", (f"uid:{os.getuid()}",))]))
    me = unix_principal(os.getuid(), os.getgid(), os.getpid(), via="test")
    _, base = await _gcp_grant(endpoints, me)
    status, _, _ = await _get(http, base + TOKEN_PATH, FLAVOR)
    assert status == 200
    service.gate.replace(AccessPolicy([]))
    status, headers, body = await _get(http, base + TOKEN_PATH, FLAVOR)
    assert status == 403
    assert headers["Metadata-Flavor"] == "Google"
    assert "permission denied" in json.loads(body)["error"]


@pytest.mark.anyio
async def test_create_needs_get_on_the_connector(endpoints: SdkEndpoints) -> None:
    stranger = unix_principal(50_099, 50_099, 9, via="test")
    with pytest.raises(PermissionDenied):
        await endpoints.create("aws", "aws1", None, None, principal=stranger)
    assert endpoints.list(ROOT) == []


# --------------------------------------------------------------------------- TTL


@pytest.mark.anyio
async def test_ttl_default_and_bounds(endpoints: SdkEndpoints, clock: FakeClock) -> None:
    grant, _, _ = await _aws_grant(endpoints)
    assert grant.expires_at - grant.created_at == timedelta(hours=12)
    assert grant.created_at == clock.now()
    grant, _, _ = await _aws_grant(endpoints, ttl_seconds=60)
    assert grant.expires_at - grant.created_at == timedelta(seconds=60)
    grant, _, _ = await _aws_grant(endpoints, ttl_seconds=7 * 86400)
    assert grant.expires_at - grant.created_at == timedelta(days=7)
    for bad in (59, 7 * 86400 + 1, -5):
        with pytest.raises(InvalidArgument) as info:
            await _aws_grant(endpoints, ttl_seconds=bad)
        assert info.value.field == "ttl_seconds"
        assert "ttl_seconds must be between 60 (1 minute) and 604800 (7 days)" in str(info.value)


@pytest.mark.anyio
async def test_an_expired_aws_grant_is_refused_on_use_and_dropped(
    endpoints: SdkEndpoints,
    http: aiohttp.ClientSession,
    clock: FakeClock,
    service: FakeService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(grant_table, "SWEEP_INTERVAL_SECONDS", 86400.0)  # only the lazy check here
    grant, url, token = await _aws_grant(endpoints, ttl_seconds=60)
    status, _, _ = await _get(http, url, {"Authorization": token})
    assert status == 200
    await clock.advance(59)
    assert (await _get(http, url, {"Authorization": token}))[0] == 200
    await clock.advance(1)
    for _ in range(2):  # dropped at the first refusal, still named "expired" after
        status, _, body = await _get(http, url, {"Authorization": token})
        assert status == 401
        assert json.loads(body)["error"].startswith("authorization token expired at 2030-01-01T")
    assert endpoints.list(ROOT) == []
    assert service.audit_lines("sdk_endpoint_expired")[-1]["id"] == grant.id
    status, _, body = await _get(http, url, {"Authorization": "never-issued"})
    assert status == 401 and "unknown or revoked" in body


@pytest.mark.anyio
async def test_an_expired_metadata_grant_answers_403_and_closes_its_listener(
    endpoints: SdkEndpoints,
    http: aiohttp.ClientSession,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(grant_table, "SWEEP_INTERVAL_SECONDS", 86400.0)
    grant, base = await _gcp_grant(endpoints, ttl_seconds=120)
    assert (await _get(http, base + TOKEN_PATH, FLAVOR))[0] == 200
    await clock.advance(120)
    status, headers, body = await _get(http, base + TOKEN_PATH, FLAVOR)
    assert status == 403
    assert headers["Metadata-Flavor"] == "Google"
    assert "this metadata endpoint expired at" in json.loads(body)["error"]
    assert await _refused(base)
    assert grant.id not in {g.id for g in endpoints.list(ROOT)}


@pytest.mark.anyio
async def test_the_sweep_drops_expired_grants_nobody_uses(
    endpoints: SdkEndpoints, clock: FakeClock, service: FakeService
) -> None:
    short, base = await _gcp_grant(endpoints, ttl_seconds=60)
    long, _ = await _gcp_grant(endpoints, ttl_seconds=3600)
    aws, _, _ = await _aws_grant(endpoints, ttl_seconds=60)
    await clock.advance(grant_table.SWEEP_INTERVAL_SECONDS)
    assert endpoints.grants.ids() == {short.id, long.id, aws.id}
    await clock.advance(60 - grant_table.SWEEP_INTERVAL_SECONDS)
    await asyncio.sleep(0)  # the sweep closes listeners: real I/O
    assert await _refused(base)
    assert endpoints.grants.ids() == {long.id}
    expired = {line["id"] for line in service.audit_lines("sdk_endpoint_expired")}
    assert expired == {short.id, aws.id}
    assert clock.sleepers == 1  # the sweeper waits for its next round


# --------------------------------------------------------------------------- uid binding


@pytest.mark.anyio
async def test_binding_rules(endpoints: SdkEndpoints, service: FakeService) -> None:
    grant, _ = await _gcp_grant(endpoints, ALICE)
    assert grant.bound_uid == ALICE.uid
    grant, _ = await _gcp_grant(endpoints, ALICE, bind_uid=ALICE.uid)
    assert grant.bound_uid == ALICE.uid
    for other in (BOB.uid, -1):
        with pytest.raises(PermissionDenied) as info:
            await _gcp_grant(endpoints, ALICE, bind_uid=other)
        assert "may bind an SDK endpoint only to its own uid" in str(info.value)
        assert "needs 'admin'" in str(info.value)
    assert service.audit_lines("access_denied")[-1]["uid"] == ALICE.uid
    grant, _ = await _gcp_grant(endpoints, ROOT, bind_uid=BOB.uid)
    assert grant.bound_uid == BOB.uid
    grant, _ = await _gcp_grant(endpoints, ROOT, bind_uid=-1)
    assert grant.bound_uid is None
    with pytest.raises(InvalidArgument) as bad:
        await _gcp_grant(endpoints, ROOT, bind_uid=-7)
    assert bad.value.field == "bind_uid"
    with pytest.raises(InvalidArgument) as aws:
        await _aws_grant(endpoints, ROOT, bind_uid=0)
    assert aws.value.field == "bind_uid"
    granted = service.audit_lines("sdk_endpoint_granted")
    assert [line["bound_uid"] for line in granted] == [ALICE.uid, ALICE.uid, BOB.uid, None]


@pytest.mark.anyio
async def test_a_bound_metadata_endpoint_serves_only_its_uid(
    endpoints: SdkEndpoints, http: aiohttp.ClientSession, service: FakeService
) -> None:
    _, base = await _gcp_grant(endpoints, ROOT, bind_uid=os.getuid())
    assert (await _get(http, base + TOKEN_PATH, FLAVOR))[0] == 200
    other_uid = os.getuid() + 4242
    _, other = await _gcp_grant(endpoints, ROOT, bind_uid=other_uid)
    for path in ("/", TOKEN_PATH):
        status, headers, body = await _get(http, other + path, FLAVOR)
        assert status == 403
        assert headers["Metadata-Flavor"] == "Google"
        assert f"the connection comes from uid {os.getuid()}" in json.loads(body)["error"]
    refused = service.audit_lines("sdk_endpoint_refused")[-1]
    assert refused["peer_uid"] == os.getuid()


@pytest.mark.anyio
async def test_a_peer_that_cannot_be_found_is_refused(
    endpoints: SdkEndpoints, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdk, "peer_uid", lambda peer, listener: None)
    _, base = await _gcp_grant(endpoints, ROOT, bind_uid=os.getuid())
    status, _, body = await _get(http, base + TOKEN_PATH, FLAVOR)
    assert status == 403
    assert "whose owner could not be found" in body


# --------------------------------------------------------------------------- ownership


@pytest.mark.anyio
async def test_list_and_revoke_are_per_owner_unless_admin(endpoints: SdkEndpoints) -> None:
    alices, _, _ = await _aws_grant(endpoints, ALICE)
    bobs, _ = await _gcp_grant(endpoints, BOB)
    roots, _, _ = await _aws_grant(endpoints, ROOT)
    assert [g.id for g in endpoints.list(ALICE)] == [alices.id]
    assert [g.id for g in endpoints.list(BOB)] == [bobs.id]
    assert {g.id for g in endpoints.list(ROOT)} == {alices.id, bobs.id, roots.id}
    # Another pid of the same uid is the same owner.
    assert [g.id for g in endpoints.list(unix_principal(50_001, 50_001, 77, via="x"))] == [
        alices.id
    ]
    with pytest.raises(NotFound) as info:
        await endpoints.revoke(bobs.id, ALICE)
    assert str(info.value) == f"no SDK endpoint '{bobs.id}' of yours"
    with pytest.raises(NotFound):
        await endpoints.revoke("no-such-grant", ALICE)
    await endpoints.revoke(alices.id, ALICE)
    await endpoints.revoke(bobs.id, ROOT)
    assert [g.id for g in endpoints.list(ROOT)] == [roots.id]


# --------------------------------------------------------------------------- socket table


def test_peer_uid_reads_the_kernel_socket_table() -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as server:
            server.bind((host, 0))
            server.listen()
            with socket.create_connection(server.getsockname()[:2]) as client:
                accepted, _ = server.accept()
                with accepted:
                    peer = accepted.getpeername()[:2]
                    own = accepted.getsockname()[:2]
                    assert tcp_owner.peer_uid(peer, own) == os.getuid()
                    assert client.getsockname()[:2] == peer
    assert tcp_owner.peer_uid(("127.0.0.1", 1), ("127.0.0.1", 2)) is None


def test_kernel_address_format_and_time_wait() -> None:
    little = tcp_owner.kernel_address("127.0.0.1", 8080, v6=False)
    assert little in ("0100007F:1F90", "7F000001:1F90")  # native word order
    mapped = tcp_owner.kernel_address("127.0.0.1", 80, v6=True)
    assert mapped.endswith(":0050") and len(mapped) == 32 + 5
    local, remote = little, tcp_owner.kernel_address("127.0.0.1", 9, v6=False)
    row = "   0: {l} {r} {st} 00000000:00000000 00:00000000 00000000  {uid}        0 12345 1"
    established = [row.format(l=local, r=remote, st="01", uid=1001)]
    assert tcp_owner.find_owner(established, local, remote) == 1001
    assert tcp_owner.find_owner(established, remote, local) is None
    time_wait = [row.format(l=local, r=remote, st="06", uid=0)]
    assert tcp_owner.find_owner(time_wait, local, remote) is None


# --------------------------------------------------------------------------- the CLI's --ttl


def test_cli_ttl_parsing() -> None:
    from broker.cli.env import parse_ttl

    assert parse_ttl(None) == 0  # the daemon's default
    cases = {"60": 60, "90s": 90, "30m": 1800, "12h": 43200, "7d": 604800, "1h30m": 5400}
    for text, seconds in cases.items():
        assert parse_ttl(text) == seconds
    for bad in ("", "0", "2x", "1.5h", "-5", "1h 30m", "9" * 30):
        with pytest.raises(InvalidArgument) as info:
            parse_ttl(bad)
        assert info.value.field == "ttl_seconds"
        assert "--ttl" in str(info.value)
