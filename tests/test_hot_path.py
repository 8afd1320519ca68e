"""The cache-hit path works things out once per caller, connector and policy: these tests
pin down that nothing it reuses outlives what it was worked out from.

In-process: the real service on a real SQLite store, docker connectors (long-lived
passwords: consumers need ``long_lived_secrets``), a fake clock.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from broker.audit import AuditLog
from broker.cache.cache import CredentialCache
from broker.clock import FakeClock
from broker.connectors import ConnectorDraft
from broker.discovery import Discovery, DiscoveryLimits
from broker.errors import PermissionDenied
from broker.identity.principal import Principal, unix_principal
from broker.model import ClientCredential
from broker.policy import build_policy, parse_policy
from broker.providers.base import ProviderContext
from broker.providers.registry import ProviderRegistry
from broker.rpc import limits
from broker.served import ServedMargins
from broker.service import BrokerService, ConnectorUpdate
from broker.store.crypto import SecretBox, generate_key
from broker.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

DAEMON_UID = 999
ALICE = unix_principal(1001, 1001, 42)
ADMIN = unix_principal(DAEMON_UID, DAEMON_UID, 7)


def _policy(*rules: dict[str, object]) -> object:
    return build_policy(DAEMON_UID, parse_policy({"rules": list(rules)}, "test.toml"))


ALICE_MAY = {"selector": "uid:1001", "role": "consumer", "long_lived_secrets": True}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[BrokerService]:
    clock = FakeClock()
    store = SqliteStore(tmp_path / "broker.db", SecretBox(generate_key()), clock)
    await store.open()
    registry = ProviderRegistry.discover(ProviderContext(clock=clock), plugins=False)
    cache = CredentialCache(clock)
    svc = BrokerService(
        store,
        registry,
        cache,
        Discovery(registry, clock, DiscoveryLimits()),
        clock,
        _policy(ALICE_MAY),  # type: ignore[arg-type]
    )
    svc.audit = svc.issuer.audit = svc.gate._audit = AuditLog(io.StringIO())
    try:
        async with cache.running():
            await svc.register(
                ConnectorDraft(
                    name="reg",
                    connector_type="docker",
                    auth_method="password",
                    resource_type=None,
                    resource_id=None,
                    config={"username": "u", "password": "p", "registry": "reg.example:5000"},
                    labels={},
                    expiration_seconds=None,
                    expires_at=None,
                ),
                ADMIN,
                verify=False,
            )
            yield svc
    finally:
        await store.close()


def _issued(service: BrokerService) -> list[dict[str, object]]:
    stream = service.issuer.audit._stream
    assert isinstance(stream, io.StringIO)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["event"] == "credential_issued"]


async def _get(service: BrokerService, who: Principal) -> ClientCredential:
    return (await service.get_credentials("reg", principal=who)).credential


async def test_every_call_is_audited_with_its_own_time(service: BrokerService) -> None:
    for _ in range(3):
        await _get(service, ALICE)
    lines = _issued(service)
    assert len(lines) == 3
    assert all(line["uid"] == 1001 and line["connector"] == "reg" for line in lines)
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", str(line["timestamp"]))


async def test_a_policy_reload_is_seen_by_the_next_call(service: BrokerService) -> None:
    await _get(service, ALICE)
    service.gate.replace(_policy())  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied):
        await _get(service, ALICE)
    # Back, but without long-lived secrets: the stored password is refused each time.
    service.gate.replace(_policy({"selector": "uid:1001", "role": "consumer"}))  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(PermissionDenied, match="long"):
            await _get(service, ALICE)
    assert len(_issued(service)) == 1


async def test_an_update_is_seen_by_the_next_call(service: BrokerService) -> None:
    first = await _get(service, ALICE)
    await service.update("reg", ConnectorUpdate(config={"password": "q"}), ADMIN, verify=False)
    second = await _get(service, ALICE)
    assert first.config["password"] != second.config["password"]
    assert str(second.config["password"]) == "q"


async def test_callers_do_not_share_what_was_allowed(service: BrokerService) -> None:
    await _get(service, ALICE)
    bob = unix_principal(1002, 1002, 43)
    with pytest.raises(PermissionDenied):
        await _get(service, bob)


async def test_the_served_margin_check_counts_every_serve() -> None:
    clock = FakeClock()
    margins = ServedMargins(clock)
    credential = ClientCredential(
        connector_type="aws",
        auth_method="x",
        resource_type="aws-generic",
        resource_id="r",
        config={},
        expires_at=clock.now() + timedelta(minutes=20),
        issued_at=clock.now(),
    )
    margins.observe(credential)
    assert margins.inside_margin == 0
    clock._now += timedelta(minutes=6)  # 14 min left: inside AWS's 15
    margins.observe(credential)
    margins.observe(credential)
    assert (margins.served, margins.inside_margin) == (3, 2)


def test_small_requests_skip_the_size_check_only_when_nothing_can_be_over() -> None:
    """A request no longer than its smallest limit cannot hold a field over any limit."""
    for cls, floor in limits._FLOORS.items():
        for name, shape, limit in limits._PLANS[cls]:
            assert floor <= limit.value_bytes, (cls, name)
            if shape != "str":
                assert floor <= 2 * limit.items and (shape != "map" or floor <= limit.key_bytes)
