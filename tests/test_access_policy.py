"""The access policy as data: roles, selectors, scopes, defaults and config validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import load_settings
from broker.errors import InvalidArgument
from broker.identity.principal import anonymous_tcp, cert_principal, unix_principal
from broker.policy import AccessPolicy, Action, Target, build_policy, parse_policy

ALICE = unix_principal(1001, 1001, 42, frozenset({1500}))
ROOT = unix_principal(0, 0, 1)
DAEMON = unix_principal(999, 999, 7)


def policy(*rules: dict[str, object]) -> AccessPolicy:
    return build_policy(999, parse_policy({"rules": list(rules)}, "test.toml"))


def test_root_and_the_daemon_user_are_admin_everyone_else_gets_nothing() -> None:
    p = build_policy(999, [])
    for who in (ROOT, DAEMON):
        assert p.decide(who, Action.SHOW_SECRETS, Target("any")).allowed
        assert p.decide(who, Action.ADMIN, Target()).allowed
    for action in Action:
        decision = p.decide(ALICE, action, Target("prod"))
        assert not decision.allowed
        assert "uid=1001" in decision.reason and f"'{action}'" in decision.reason
    assert not p.decide(anonymous_tcp("ipv4:127.0.0.1:5"), Action.VIEW, Target()).allowed


def test_roles_bundle_actions() -> None:
    p = policy(
        {"selector": "uid:1001", "role": "viewer"},
    )
    assert p.decide(ALICE, Action.VIEW, Target("x")).allowed
    assert not p.decide(ALICE, Action.GET, Target("x", resource_type="s3-bucket")).allowed
    p = policy(
        {"selector": "group:nonexistent-xyz", "role": "admin"},
        {"selector": "gid:1500", "role": "consumer"},
    )
    assert p.decide(ALICE, Action.GET, Target("x", resource_type="s3-bucket")).allowed
    assert p.decide(ALICE, Action.WATCH, Target("x")).allowed
    assert not p.decide(ALICE, Action.GET_LONG_LIVED, Target("x")).allowed
    assert not p.decide(ALICE, Action.SHOW_SECRETS, Target("x")).allowed
    assert not p.decide(ALICE, Action.MANAGE, Target("x")).allowed


def test_scopes_limit_connectors_labels_types_and_ids() -> None:
    p = policy(
        {
            "selector": "uid:1001",
            "role": "consumer",
            "connectors": ["ci-*"],
            "labels": {"team": "ci"},
            "resource_types": ["s3-bucket"],
            "resource_ids": ["s3://ci-*", "re:s3://build-[0-9]+"],
        }
    )
    ci = {"team": "ci"}
    assert p.decide(ALICE, Action.GET, Target("ci-aws", ci, "s3-bucket", "s3://ci-cache")).allowed
    assert p.decide(ALICE, Action.GET, Target("ci-aws", ci, "s3-bucket", "s3://build-12")).allowed
    assert not p.decide(
        ALICE, Action.GET, Target("ci-aws", ci, "s3-bucket", "s3://build-x")
    ).allowed
    assert not p.decide(ALICE, Action.GET, Target("ci-aws", ci, "s3-bucket", "s3://prod")).allowed
    assert not p.decide(ALICE, Action.GET, Target("ci-aws", ci, "aws-generic", "eu-west-1")).allowed
    assert not p.decide(ALICE, Action.GET, Target("prod-aws", ci, "s3-bucket", "s3://ci-x")).allowed
    assert not p.decide(ALICE, Action.GET, Target("ci-aws", {"team": "x"})).allowed
    # Connector level (no resource yet): some resource may be allowed.
    assert p.decide(ALICE, Action.GET, Target("ci-aws", ci)).allowed
    # Daemon-wide views need any rule giving VIEW; admin actions need an unscoped rule.
    assert p.decide(ALICE, Action.VIEW, Target()).allowed
    scoped_admin = policy({"selector": "uid:1001", "role": "admin", "connectors": ["ci-*"]})
    assert scoped_admin.decide(ALICE, Action.MANAGE, Target("ci-1")).allowed
    assert not scoped_admin.decide(ALICE, Action.ADMIN, Target()).allowed


def test_long_lived_secrets_need_an_explicit_rule() -> None:
    p = policy({"selector": "user:nobody", "role": "consumer", "long_lived_secrets": True})
    nobody = unix_principal(65534, 65534, 3)
    assert p.decide(nobody, Action.GET_LONG_LIVED, Target("reg")).allowed
    assert not p.decide(ALICE, Action.GET_LONG_LIVED, Target("reg")).allowed


def test_certificate_selectors_match_globs_and_all_selectors_must_match() -> None:
    p = policy(
        {"selector": "cert:spiffe://example.org/ci/*", "role": "consumer"},
        {"selectors": ["uid:1001", "gid:4242"], "role": "admin"},
    )
    runner = cert_principal("spiffe://example.org/ci/runner-1")
    other = cert_principal("spiffe://example.org/ops/x")
    assert p.decide(runner, Action.GET, Target("x")).allowed
    assert not p.decide(other, Action.GET, Target("x")).allowed
    assert not p.decide(ALICE, Action.MANAGE, Target("x")).allowed  # gid 4242 missing


@pytest.mark.parametrize(
    ("rule", "named"),
    [
        ({"selector": "uid:1001", "role": "owner"}, "policy.rules[0].role"),
        ({"selector": "uid:abc", "role": "viewer"}, "policy.rules[0].selector"),
        ({"selector": "host:x", "role": "viewer"}, "policy.rules[0].selector"),
        ({"role": "viewer"}, "policy.rules[0].selector"),
        ({"selector": "uid:1", "role": "viewer", "colour": "red"}, "policy.rules[0].colour"),
        (
            {"selector": "uid:1", "role": "viewer", "connectors": ["a[b"]},
            "policy.rules[0].connectors[0]",
        ),
        (
            {"selector": "uid:1", "role": "viewer", "resource_ids": ["re:("]},
            "policy.rules[0].resource_ids[0]",
        ),
        (
            {"selector": "uid:1", "role": "viewer", "long_lived_secrets": True},
            "policy.rules[0].long_lived_secrets",
        ),
        ({"selector": "uid:1", "role": "viewer", "labels": {"a": 1}}, "policy.rules[0].labels"),
    ],
)
def test_bad_rules_are_refused_naming_the_key(rule: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_policy({"rules": [rule]}, "test.toml")
    assert info.value.field == named
    assert named.split(".")[-1].split("[")[0] in info.value.message


def test_policy_section_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        'log_level = "debug"\n[[policy.rules]]\nselector = "user:alice"\nrole = "consumer"\n'
    )
    settings = load_settings(config, env={})
    assert [r.selectors for r in settings.policy_rules] == [("user:alice",)]
    assert settings.config_file == config
    config.write_text("[policy]\nrule = []\n")
    with pytest.raises(InvalidArgument, match=r"policy\.rule"):
        load_settings(config, env={})
    config.write_text("[other]\nx = 1\n")
    with pytest.raises(InvalidArgument, match=r"\[other\]"):
        load_settings(config, env={})


def test_tls_without_client_ca_is_refused_off_loopback(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    overrides = {"tcp": "0.0.0.0:7443", "tls_cert": cert, "tls_key": key}
    with pytest.raises(InvalidArgument) as info:
        load_settings(None, env={}, overrides=overrides)
    assert info.value.field == "tls_client_ca"
    assert "client certificates" in info.value.message
    loopback = load_settings(None, env={}, overrides={**overrides, "tcp": "127.0.0.1:7443"})
    assert loopback.tls_client_ca is None
