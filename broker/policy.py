"""Who may do what: access rules as data, decided without I/O.

A rule grants a role to callers whose selectors all match, optionally only
for some connectors (name patterns, labels) and resources (types, ID
patterns). Roles are fixed bundles of actions. Anything no rule allows is
denied; the daemon's own uid and root are admins by built-in rules, so a
fresh ``make run`` needs no configuration, while every other local user,
socket group members included, gets nothing until a rule names them.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.errors import InvalidArgument
from broker.identity.principal import ANONYMOUS_TCP, Principal


class Action(enum.StrEnum):
    """Every permission a rule can give; each endpoint needs exactly one."""

    VIEW = "view"  # list types, list and describe connectors (secrets hidden), status
    VERIFY = "verify"  # check a connector and list what it reaches
    LIST_RESOURCES = "list-resources"
    GET = "get"  # scoped, short-lived credentials: gRPC, helpers, SDK endpoints
    WATCH = "watch"
    GET_LONG_LIVED = "get-long-lived"  # a credential that is the stored secret itself
    SHOW_SECRETS = "show-secrets"  # describe --show-secrets
    MANAGE = "manage"  # register, update, delete, preferred registry connector
    ADMIN = "admin"  # policy show / check, every SDK grant (not just one's own)


_VIEWER = frozenset({Action.VIEW})
_CONSUMER = _VIEWER | {Action.VERIFY, Action.LIST_RESOURCES, Action.GET, Action.WATCH}
ROLES: Mapping[str, frozenset[Action]] = {
    "viewer": _VIEWER,
    "consumer": _CONSUMER,
    "admin": frozenset(Action),
}
#: Actions about one connector's resources: the rule's resource scope applies.
RESOURCE_ACTIONS = frozenset(
    {Action.GET, Action.WATCH, Action.GET_LONG_LIVED, Action.VERIFY, Action.LIST_RESOURCES}
)
#: Selector prefixes a rule may use: the kernel's, a certificate's, and workload attestation's.
SELECTOR_KINDS = ("uid", "gid", "user", "group", "cert", "container", "docker", "k8s")
#: What follows ``docker:`` / ``k8s:``: the selectors the attestors yield, and how many
#: parts after the name each takes (label selectors are ``KEY:VALUE``).
ATTESTED_SELECTORS: Mapping[str, Mapping[str, int]] = {
    "docker": {"label": 2, "image_id": 1, "image": 1, "env": 1},
    "k8s": {
        "ns": 1,
        "sa": 1,
        "pod-label": 2,
        "pod-name": 1,
        "pod-uid": 1,
        "container-name": 1,
        "node-name": 1,
    },
}
#: Kinds whose rule selectors may hold globs (``*``, ``?``).
GLOB_KINDS = ("cert:", "docker:", "k8s:")

ACTION_WORDS: Mapping[Action, str] = {
    Action.VIEW: "view",
    Action.VERIFY: "verify",
    Action.LIST_RESOURCES: "list resources of",
    Action.GET: "get credentials for",
    Action.WATCH: "watch credentials for",
    Action.GET_LONG_LIVED: "get the long-lived stored secret of",
    Action.SHOW_SECRETS: "show the secrets of",
    Action.MANAGE: "manage",
    Action.ADMIN: "administer",
}


@dataclass(frozen=True)
class Pattern:
    """A glob (``*``, ``?``) or, with a ``re:`` prefix, a full-match regular expression."""

    text: str
    regex: re.Pattern[str]

    def matches(self, value: str) -> bool:
        return self.regex.fullmatch(value) is not None


def compile_pattern(text: object, where: str) -> Pattern:
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument(f"{where} must be a non-empty pattern, got {text!r}", field=where)
    if text.startswith("re:"):
        try:
            return Pattern(text, re.compile(text[3:]))
        except re.error as exc:
            raise InvalidArgument(
                f"{where}: bad regular expression {text[3:]!r}: {exc}", field=where
            ) from None
    if any(ch in text for ch in "[]") or any(ch.isspace() for ch in text):
        raise InvalidArgument(
            f"{where}: bad pattern {text!r} (globs use only * and ?; use 're:' for a regex)",
            field=where,
        )
    return Pattern(text, re.compile(fnmatch.translate(text)))


@dataclass(frozen=True)
class Target:
    """What an action is about: nothing (the daemon), a connector, or one resource.

    With no resource type, a resource action is checked at connector level (may
    the caller do it to *some* resource of this connector?); callers then check
    each resource, or filter results, with the type and ID filled in.
    """

    connector: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    resource_type: str | None = None
    resource_id: str | None = None

    def words(self) -> str:
        if self.connector is None:
            return "this daemon"
        text = f"connector '{self.connector}'"
        if self.resource_type:
            text += f" resource {self.resource_type}"
            if self.resource_id:
                text += f" '{self.resource_id}'"
        return text


@dataclass(frozen=True)
class Rule:
    role: str
    selectors: tuple[str, ...]
    connectors: tuple[Pattern, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    resource_types: tuple[str, ...] = ()
    resource_ids: tuple[Pattern, ...] = ()
    long_lived_secrets: bool = False
    source: str = "built-in"
    description: str = ""
    #: Selector prefixes that keep the rule from selecting a caller (built-in rules only:
    #: with attestation on, root in a container is not the host's root).
    unless: tuple[str, ...] = ()

    @property
    def scoped(self) -> bool:
        return bool(self.connectors or self.labels or self.resource_types or self.resource_ids)

    def actions(self) -> frozenset[Action]:
        actions = ROLES[self.role]
        if self.long_lived_secrets and Action.GET in actions:
            actions = actions | {Action.GET_LONG_LIVED}
        return actions

    def selects(self, principal: Principal) -> bool:
        if self.unless and any(s.startswith(self.unless) for s in principal.selectors):
            return False
        return all(_selector_matches(s, principal.selectors) for s in self.selectors)

    def covers_connector(self, target: Target) -> bool:
        if target.connector is None:
            return True
        if self.connectors and not any(p.matches(target.connector) for p in self.connectors):
            return False
        return all(target.labels.get(k) == v for k, v in self.labels.items())

    def covers_resource(self, resource_type: str | None, resource_id: str | None) -> bool:
        """Whether one resource is in the rule's scope (an ID pattern needs an ID)."""
        if self.resource_types and resource_type not in self.resource_types:
            return False
        if self.resource_ids:
            return resource_id is not None and any(
                p.matches(resource_id) for p in self.resource_ids
            )
        return True

    def as_data(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "selectors": list(self.selectors),
            "connectors": [p.text for p in self.connectors],
            "labels": dict(self.labels),
            "resource_types": list(self.resource_types),
            "resource_ids": [p.text for p in self.resource_ids],
            "long_lived_secrets": self.long_lived_secrets,
            "source": self.source,
            "description": self.description,
        }


def _selector_matches(selector: str, selectors: frozenset[str]) -> bool:
    if selector in selectors:
        return True
    if selector.startswith(GLOB_KINDS) and any(ch in selector for ch in "*?"):
        kind = selector[: selector.index(":") + 1]
        pattern = _glob(selector)
        return any(s.startswith(kind) and pattern.fullmatch(s) for s in selectors)
    return False


@functools.lru_cache(maxsize=1024)
def _glob(selector: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(selector))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    #: Index of the deciding rule in the policy's list, -1 when none allowed it.
    rule: int = -1


class AccessPolicy:
    """An ordered list of rules; the first that allows an action decides."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    def decide(self, principal: Principal, action: Action, target: Target) -> Decision:
        for index, rule in enumerate(self.rules):
            if action not in rule.actions() or not rule.selects(principal):
                continue
            if target.connector is None:
                # Daemon-wide: viewing types/status needs any rule giving VIEW; admin
                # actions need a rule not limited to some connectors.
                if action is not Action.VIEW and rule.scoped:
                    continue
            elif not rule.covers_connector(target):
                continue
            if (
                action in RESOURCE_ACTIONS
                and target.resource_type is not None
                and not rule.covers_resource(target.resource_type, target.resource_id)
            ):
                continue
            return Decision(True, f"allowed by rule {index} ({rule.role})", index)
        return Decision(False, denial(principal, action, target))

    def allows_resource(
        self, principal: Principal, action: Action, target: Target, resource_id: str | None
    ) -> bool:
        """Whether one discovered resource may be shown (list-resources / verify results)."""
        one = Target(target.connector, target.labels, target.resource_type, resource_id)
        return self.decide(principal, action, one).allowed

    def roles(self, principal: Principal) -> list[str]:
        return sorted({r.role for r in self.rules if r.selects(principal)})

    def as_data(self) -> list[dict[str, Any]]:
        return [rule.as_data() for rule in self.rules]


def denial(principal: Principal, action: Action, target: Target) -> str:
    """One line naming the caller and the missing permission, never what exists."""
    return (
        f"permission denied: {principal.describe()} may not {ACTION_WORDS[action]} "
        f"{target.words()} (needs '{action}'; no policy rule allows it)"
    )


def built_in_rules(daemon_uid: int, *, attesting: bool = False) -> list[Rule]:
    """Root and the daemon's own user administer it; nobody else gets anything by default.

    With workload attestation on, only processes outside containers: a pod's root
    (or a pod running as the daemon's uid) gets what rules give its selectors.
    """
    uids = sorted({0, daemon_uid})
    where = " outside containers" if attesting else ""
    return [
        Rule(
            "admin",
            (f"uid:{uid}",),
            description=("root" if uid == 0 else "the daemon's own user") + where,
            unless=("container:",) if attesting else (),
        )
        for uid in uids
    ]


_RULE_KEYS = {
    "role",
    "selector",
    "selectors",
    "connectors",
    "labels",
    "resource_types",
    "resource_ids",
    "long_lived_secrets",
    "description",
}


def _strings(value: object, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise InvalidArgument(f"{where} must be a list of non-empty strings", field=where)
    return list(items)


def validate_selector(text: str, where: str) -> str:
    """``text`` if it is a selector a principal can carry; InvalidArgument naming ``where``."""
    kind, sep, value = text.partition(":")
    if text == ANONYMOUS_TCP:
        return text
    if not sep or not value or kind not in SELECTOR_KINDS:
        raise InvalidArgument(
            f"{where}: bad selector {text!r} (use uid:N, gid:N, user:NAME, group:NAME, "
            f"cert:ID, {ANONYMOUS_TCP}, or an attested docker:… / k8s:… / container:ID)",
            field=where,
        )
    if kind in ("uid", "gid") and not value.isdigit():
        raise InvalidArgument(f"{where}: {kind} must be a number, got {value!r}", field=where)
    if kind in ATTESTED_SELECTORS:
        _attested(kind, value, text, where)
    return text


def _attested(kind: str, value: str, text: str, where: str) -> None:
    names = ATTESTED_SELECTORS[kind]
    name, sep, rest = value.partition(":")
    forms = ", ".join(
        f"{kind}:{n}:KEY:VALUE" if parts == 2 else f"{kind}:{n}:VALUE" for n, parts in names.items()
    )
    if name not in names or not sep:
        raise InvalidArgument(f"{where}: bad selector {text!r} (one of {forms})", field=where)
    if names[name] == 2:
        key, sep, _ = rest.partition(":")
        if not key or not sep:  # the value may be empty (a label set to "")
            raise InvalidArgument(
                f"{where}: bad selector {text!r} (use {kind}:{name}:KEY:VALUE)", field=where
            )
    elif not rest:
        raise InvalidArgument(
            f"{where}: bad selector {text!r} (use {kind}:{name}:VALUE)", field=where
        )
    if kind == "docker" and name == "env" and "=" in rest:
        raise InvalidArgument(
            f"{where}: docker:env selectors name a variable, never its value (got {text!r})",
            field=where,
        )


def parse_rule(data: object, where: str, source: str) -> Rule:
    if not isinstance(data, dict):
        raise InvalidArgument(f"{where} must be a table", field=where)
    unknown = sorted(set(data) - _RULE_KEYS)
    if unknown:
        raise InvalidArgument(f"{where}: unknown key '{unknown[0]}'", field=f"{where}.{unknown[0]}")
    role = data.get("role")
    if role not in ROLES:
        raise InvalidArgument(
            f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", field=f"{where}.role"
        )
    raw: list[str] = []
    if "selector" in data:
        raw += _strings(data["selector"], f"{where}.selector")
    if "selectors" in data:
        raw += _strings(data["selectors"], f"{where}.selectors")
    if not raw:
        raise InvalidArgument(
            f'{where} needs a selector (e.g. selector = "user:alice")', field=f"{where}.selector"
        )
    selectors = tuple(validate_selector(s, f"{where}.selector") for s in raw)
    labels = data.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InvalidArgument(f"{where}.labels must be a table of strings", field=f"{where}.labels")
    long_lived = data.get("long_lived_secrets", False)
    if not isinstance(long_lived, bool):
        raise InvalidArgument(
            f"{where}.long_lived_secrets must be true or false", field=f"{where}.long_lived_secrets"
        )
    if long_lived and role == "viewer":
        raise InvalidArgument(
            f"{where}.long_lived_secrets needs role consumer or admin",
            field=f"{where}.long_lived_secrets",
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise InvalidArgument(f"{where}.description must be text", field=f"{where}.description")

    def patterns(key: str) -> tuple[Pattern, ...]:
        if key not in data:
            return ()
        return tuple(
            compile_pattern(p, f"{where}.{key}[{i}]")
            for i, p in enumerate(_strings(data[key], f"{where}.{key}"))
        )

    return Rule(
        role=str(role),
        selectors=selectors,
        connectors=patterns("connectors"),
        labels=dict(labels),
        resource_types=tuple(_strings(data.get("resource_types", []), f"{where}.resource_types")),
        resource_ids=patterns("resource_ids"),
        long_lived_secrets=long_lived,
        source=source,
        description=description,
    )


def parse_policy(section: object, source: str) -> list[Rule]:
    """The ``[policy]`` table of the config file: ``[[policy.rules]]`` entries."""
    if section is None:
        return []
    if not isinstance(section, dict):
        raise InvalidArgument(f"[policy] in {source} must be a table", field="policy")
    unknown = sorted(set(section) - {"rules"})
    if unknown:
        raise InvalidArgument(
            f"unknown key 'policy.{unknown[0]}' in {source}", field=f"policy.{unknown[0]}"
        )
    rules = section.get("rules", [])
    if not isinstance(rules, list):
        raise InvalidArgument(f"policy.rules in {source} must be [[policy.rules]] tables")
    return [parse_rule(r, f"policy.rules[{i}]", source) for i, r in enumerate(rules)]


def build_policy(
    daemon_uid: int, configured: Iterable[Rule], *, attesting: bool = False
) -> AccessPolicy:
    return AccessPolicy([*built_in_rules(daemon_uid, attesting=attesting), *configured])
