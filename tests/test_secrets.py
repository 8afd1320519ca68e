"""Secrets stay out of reprs, configurations are read-only, and nothing keyed by secret text
outlives its connector; the code that must send, seal or serialize a secret still gets its text."""

from __future__ import annotations

import gc
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.clock import FakeClock
from broker.connectors import ConnectorDraft, build_connector
from broker.model import HIDDEN, ClientCredential, Connector, Secret
from broker.providers.base import ProviderContext
from broker.providers.docker import DockerProvider
from broker.providers.gcp import GcpProvider
from broker.providers.gcp.keys import parse_key
from broker.providers.memo import PerObject
from broker.rpc import convert
from broker.store.crypto import SecretBox, generate_key
from broker.store.sqlite import SqliteStore
from tests.servers.google_accounts import ServiceAccountKey, shared_rsa_key

PASSWORD = "hunter2-but-much-longer"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
EMAIL = "sa@broker-test.iam.gserviceaccount.com"


def credential(**config: str) -> ClientCredential:
    return ClientCredential(
        connector_type="docker",
        auth_method="password",
        resource_type="docker-registry",
        resource_id="registry.example.test",
        config=config,
        secret_names=frozenset({"password"}),
    )


def docker_connector() -> Connector:
    draft = ConnectorDraft(
        name="reg",
        connector_type="docker",
        auth_method="password",
        resource_type=None,
        resource_id=None,
        config={"registry": "registry.example.test", "username": "alice", "password": PASSWORD},
        labels={},
        expiration_seconds=None,
        expires_at=None,
    )
    return build_connector(DockerProvider(ProviderContext()), draft, FakeClock(T0))


def test_a_secret_is_text_everywhere_but_in_its_repr() -> None:
    secret = Secret(PASSWORD)
    assert repr(secret) == repr(HIDDEN) and PASSWORD not in f"{secret!r} {[secret]}"
    assert secret == PASSWORD and f"{secret}" == str(secret) == PASSWORD
    assert type(secret.reveal()) is str and secret.reveal() == PASSWORD
    assert json.dumps({"p": secret}) == json.dumps({"p": PASSWORD})
    assert secret.encode() == PASSWORD.encode()


def test_a_credential_hides_its_secret_values_and_cannot_be_changed() -> None:
    source = {"username": "alice", "password": PASSWORD, "registry": "registry.example.test"}
    cred = credential(**source)
    assert PASSWORD not in repr(cred) and "alice" in repr(cred)
    assert isinstance(cred.config["password"], Secret)
    assert not isinstance(cred.config["username"], Secret)
    with pytest.raises(TypeError):
        cred.config["password"] = "changed"  # type: ignore[index]
    source["password"] = "changed-in-the-callers-dict"
    assert cred.config["password"] == PASSWORD
    assert dict(cred.config) == {**source, "password": PASSWORD}


def test_grpc_messages_carry_the_text_unless_hidden() -> None:
    cred = credential(username="alice", password=PASSWORD)
    shown = convert.credential("reg", 1, cred)
    assert shown.config["password"] == PASSWORD and type(shown.config["password"]) is str
    assert convert.credential("reg", 1, cred, hide_secrets=True).config["password"] == HIDDEN


def test_a_built_connector_holds_its_secret_attributes_as_secrets_read_only() -> None:
    connector = docker_connector()
    assert isinstance(connector.config["password"], Secret)
    assert PASSWORD not in repr(connector) and "alice" in repr(connector)
    with pytest.raises(TypeError):
        connector.config["password"] = "x"  # type: ignore[index]


@pytest.mark.anyio
async def test_the_store_seals_the_text_and_reads_secrets_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "broker.db", SecretBox(generate_key()), FakeClock(T0))
    await store.open()
    try:
        created = await store.create(docker_connector(), frozenset({"password"}))
        read = await store.get(created.id)
    finally:
        await store.close()
    assert read.config["password"] == PASSWORD and isinstance(read.config["password"], Secret)
    assert PASSWORD not in repr(read)
    assert PASSWORD.encode() not in (tmp_path / "broker.db").read_bytes()  # sealed


def test_parsed_key_files_are_not_cached_by_their_text() -> None:
    key = ServiceAccountKey(EMAIL, "broker-test", "https://t.test", shared_rsa_key())
    first = parse_key(key.json(), "service_account_json", "service_account")
    again = parse_key(key.json(), "service_account_json", "service_account")
    assert first is not again  # no cache keyed by the key file's text
    assert key.private_key_pem.splitlines()[2] not in repr(first)


def test_gcp_settings_live_as_long_as_their_connector_object() -> None:
    key = ServiceAccountKey(EMAIL, "broker-test", "https://t.test", shared_rsa_key())
    gcp = GcpProvider(ProviderContext())
    connector = Connector(
        id="id",
        name="g",
        connector_type="gcp",
        auth_method="service-account",
        resource_type=None,
        resource_id=None,
        config={"service_account_json": Secret(key.json())},
        labels={},
        expiration_seconds=None,
        expires_at=None,
        created_at=T0,
        updated_at=T0,
        revision=1,
    )
    assert gcp.settings(connector) is gcp.settings(connector)  # the RSA key is loaded once
    assert len(gcp._settings) == 1
    del connector
    gc.collect()
    assert len(gcp._settings) == 0  # gone with the connector


def test_per_object_memo_goes_by_identity_not_equality() -> None:
    class Box:
        pass

    memo: PerObject[str] = PerObject()
    a, b = Box(), Box()
    memo.put(a, "a")
    assert memo.get(a) == "a" and memo.get(b) is None
    del a
    gc.collect()
    assert len(memo) == 0
