"""The application's door: every service call asks here before touching anything.

Holds the current access policy (swapped whole on SIGHUP), remembers recent
decisions for the hot path (cleared on every swap), and audits each denial
with the principal. Filtering (list, list-resources) asks quietly; a refused
request is audited once.
"""

from __future__ import annotations

from broker.audit import AuditLog
from broker.errors import PermissionDenied
from broker.identity.principal import Principal
from broker.model import Connector
from broker.policy import AccessPolicy, Action, Decision, Target

#: Decisions remembered (cleared wholesale when full, and on reload).
DECISION_MEMO_SIZE = 16_384

_MemoKey = tuple[frozenset[str], Action, str, int, str | None, str | None]


def connector_target(
    connector: Connector, resource_type: str | None = None, resource_id: str | None = None
) -> Target:
    return Target(connector.name, connector.labels, resource_type, resource_id)


class Gatekeeper:
    def __init__(self, policy: AccessPolicy, audit: AuditLog) -> None:
        self._policy = policy
        self._audit = audit
        self._memo: dict[_MemoKey, bool] = {}

    @property
    def policy(self) -> AccessPolicy:
        return self._policy

    def replace(self, policy: AccessPolicy) -> None:
        self._policy = policy
        self._memo = {}

    def decide(self, principal: Principal, action: Action, target: Target) -> Decision:
        return self._policy.decide(principal, action, target)

    def allowed(self, principal: Principal, action: Action, target: Target) -> bool:
        return self._policy.decide(principal, action, target).allowed

    def require(self, principal: Principal, action: Action, target: Target) -> None:
        decision = self._policy.decide(principal, action, target)
        if not decision.allowed:
            self.deny(principal, action, target, decision.reason)

    def require_connector(
        self,
        principal: Principal,
        action: Action,
        connector: Connector,
        resource_type: str | None = None,
        resource_id: str | None = None,
    ) -> None:
        """The hot-path check: memoised per caller, connector revision and resource."""
        key = (
            principal.selectors,
            action,
            connector.id,
            connector.revision,
            resource_type,
            resource_id,
        )
        allowed = self._memo.get(key)
        if allowed is None:
            allowed = self.allowed(
                principal, action, connector_target(connector, resource_type, resource_id)
            )
            if len(self._memo) >= DECISION_MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = allowed
        if not allowed:
            self.require(principal, action, connector_target(connector, resource_type, resource_id))

    def deny(self, principal: Principal, action: Action, target: Target, reason: str) -> None:
        self._audit.record(
            "access_denied",
            action=str(action),
            connector=target.connector,
            resource_type=target.resource_type,
            resource_id=target.resource_id,
            **principal.audit_fields(),
        )
        raise PermissionDenied(reason)

    def roles(self, principal: Principal) -> list[str]:
        return self._policy.roles(principal)
