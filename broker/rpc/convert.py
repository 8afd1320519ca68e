"""Model <-> protobuf conversion, in one place so the wire shape stays consistent."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from broker.api.v1 import broker_pb2 as pb
from broker.attributes import render_value
from broker.errors import InvalidArgument
from broker.grants import Grant
from broker.identity.principal import (
    Principal,
    cert_principal,
    local_user,
    selector_principal,
    with_selectors,
)
from broker.model import (
    HIDDEN,
    AuthMethodSpec,
    ClientCredential,
    Connector,
    ConnectorTypeSpec,
    TypeResources,
    Value,
)
from broker.outputs.manager import OutputState
from broker.policy import ROLES, AccessPolicy, Action, validate_selector


def ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def from_ts(message: object, name: str) -> datetime | None:
    """A Timestamp field as an aware datetime; None when unset."""
    if not message.HasField(name):  # type: ignore[attr-defined]
        return None
    stamp: Timestamp = getattr(message, name)
    if not (0 <= stamp.seconds <= 253402300799 and 0 <= stamp.nanos <= 999_999_999):
        raise InvalidArgument(f"'{name}' is out of range", field=name)
    return stamp.ToDatetime(tzinfo=UTC)


def render_config(
    config: Mapping[str, Value], secret_names: frozenset[str], show_secrets: bool
) -> dict[str, str]:
    return {
        key: (HIDDEN if key in secret_names and not show_secrets else render_value(value))
        for key, value in sorted(config.items())
    }


def auth_method(spec: AuthMethodSpec) -> pb.AuthMethod:
    attrs = [
        pb.AttributeSpec(
            name=a.name,
            description=a.description,
            kind=a.kind.value,
            required=a.required,
            secret=a.secret,
            default_value=None if a.default is None else render_value(a.default),
        )
        for a in spec.attributes
    ]
    return pb.AuthMethod(
        auth_method=spec.auth_method,
        name=spec.name,
        description=spec.description,
        attributes=attrs,
        min_expiration_seconds=spec.min_expiration_seconds,
        max_expiration_seconds=spec.max_expiration_seconds,
        default_expiration_seconds=spec.default_expiration_seconds,
        implicit=spec.implicit,
        requires_expires_at=spec.requires_expires_at,
    )


def connector_type(spec: ConnectorTypeSpec) -> pb.ConnectorType:
    return pb.ConnectorType(
        connector_type=spec.connector_type,
        name=spec.name,
        description=spec.description,
        resource_types=[
            pb.ResourceType(
                resource_type=rt.resource_type,
                name=rt.name,
                description=rt.description,
                supports_instances=rt.supports_instances,
                id_formats=list(rt.id_formats),
            )
            for rt in spec.resource_types
        ],
        auth_methods=[auth_method(m) for m in spec.auth_methods],
        supports_auto_configuration=spec.supports_auto_configuration,
    )


def connector(
    c: Connector,
    *,
    resource_types: tuple[str, ...],
    scope: str,
    secret_names: frozenset[str],
    show_secrets: bool = False,
) -> pb.Connector:
    return pb.Connector(
        id=c.id,
        name=c.name,
        connector_type=c.connector_type,
        auth_method=c.auth_method,
        resource_types=list(resource_types),
        resource_id=c.resource_id,
        scope=scope,
        expiration_seconds=c.expiration_seconds,
        expires_at=ts(c.expires_at),
        labels=dict(c.labels),
        config=render_config(c.config, secret_names, show_secrets),
        secret_attributes=sorted(secret_names & set(c.config)),
        created_at=ts(c.created_at),
        updated_at=ts(c.updated_at),
        revision=c.revision,
        description=c.description,
    )


#: Messages built for recently served credentials: a cache hit hands out the same
#: credential object again, so its message is built once (cleared when full).
_MESSAGES: dict[tuple[int, str, int, bool], tuple[ClientCredential, pb.Credential]] = {}
MESSAGE_MEMO_SIZE = 8192


def credential(
    connector_name: str, revision: int, cred: ClientCredential, *, hide_secrets: bool = False
) -> pb.Credential:
    """The message for a credential; callers must not modify it (it may be shared)."""
    memo = (id(cred), connector_name, revision, hide_secrets)
    known = _MESSAGES.get(memo)
    if known is not None and known[0] is cred:
        return known[1]
    message = _build_credential(connector_name, revision, cred, hide_secrets)
    if len(_MESSAGES) >= MESSAGE_MEMO_SIZE:
        _MESSAGES.clear()
    _MESSAGES[memo] = (cred, message)
    return message


def _build_credential(
    connector_name: str, revision: int, cred: ClientCredential, hide_secrets: bool
) -> pb.Credential:
    return pb.Credential(
        connector=connector_name,
        connector_type=cred.connector_type,
        auth_method=cred.auth_method,
        resource_type=cred.resource_type,
        resource_id=cred.resource_id,
        config=render_config(cred.config, cred.secret_names, not hide_secrets),
        secret_attributes=sorted(cred.secret_names & set(cred.config)),
        expires_at=ts(cred.expires_at),
        session_policy=cred.session_policy,
        issued_at=ts(cred.issued_at),
        connector_revision=revision,
    )


def resource_result(
    connector_name: str, connector_type_name: str, r: TypeResources
) -> pb.ResourceResult:
    return pb.ResourceResult(
        connector=connector_name,
        connector_type=connector_type_name,
        resource_type=r.resource_type,
        resource_ids=list(r.resource_ids),
        error=r.error,
    )


def sdk_grant(grant: Grant, env: Mapping[str, str] | None = None) -> pb.SdkEndpoint:
    message = pb.SdkEndpoint(
        id=grant.id,
        env=dict(env or {}),
        kind=grant.kind,
        connector=grant.connector,
        resource_type=grant.resource_type or "",
        resource_id=grant.resource_id or "",
        owner=grant.owner.describe(),
        bound_uid=-1 if grant.bound_uid is None else grant.bound_uid,
        bound_pid=grant.bound_pid or 0,
    )
    message.expires_at.FromDatetime(grant.expires_at.astimezone(UTC))
    message.created_at.FromDatetime(grant.created_at.astimezone(UTC))
    return message


def policy(access: AccessPolicy) -> pb.Policy:
    rules = [
        pb.PolicyRule(
            role=rule.role,
            selectors=list(rule.selectors),
            connectors=[p.text for p in rule.connectors],
            labels=dict(rule.labels),
            resource_types=list(rule.resource_types),
            resource_ids=[p.text for p in rule.resource_ids],
            long_lived_secrets=rule.long_lived_secrets,
            source=rule.source,
            description=rule.description,
        )
        for rule in access.rules
    ]
    actions = {
        action.value: ", ".join(role for role, acts in ROLES.items() if action in acts)
        + (" (consumer with long_lived_secrets)" if action is Action.GET_LONG_LIVED else "")
        for action in Action
    }
    return pb.Policy(rules=rules, actions=actions)


def output(state: OutputState) -> pb.Output:
    """One file output's state (``broker outputs list``): nothing secret in it."""
    spec = state.spec
    return pb.Output(
        index=spec.index,
        connector=spec.connector,
        resource_type=spec.resource_type or "",
        resource_id=spec.resource_id or "",
        format=spec.format,
        path=str(spec.path),
        mode=spec.mode,
        last_write=ts(state.last_write),
        next_renewal=ts(state.next_renewal),
        margin_at=ts(state.margin_at),
        expires_at=ts(state.expires_at),
        last_error=state.last_error,
        last_error_at=ts(state.last_error_at),
        writes=state.writes,
        write_failures=state.write_failures,
        hook_runs=state.hook_runs,
        hook_failures=state.hook_failures,
        on_change=spec.on_change[0] if spec.on_change else "",
        signal=spec.signal.name if spec.signal is not None else "",
    )


def policy_subject(request: pb.CheckPolicyRequest) -> Principal:
    """Whom a CheckPolicy request asks about: a uid, user or certificate, plus selectors."""
    given = [request.HasField("uid"), bool(request.user), bool(request.cert_id)]
    extra = frozenset(validate_selector(s, "selectors") for s in request.selectors)
    if sum(given) > 1 or (sum(given) == 0 and not extra):
        raise InvalidArgument("give one of uid, user or cert_id, and/or selectors", field="uid")
    if sum(given) == 0:
        return selector_principal(extra)
    if request.cert_id:
        return with_selectors(cert_principal(request.cert_id), extra)
    try:
        if request.user:
            return with_selectors(local_user(name=request.user), extra)
        return with_selectors(local_user(uid=request.uid), extra)
    except LookupError as exc:
        raise InvalidArgument(str(exc), field="user" if request.user else "uid") from None
    except ValueError:  # a NUL in the name: no such user can exist
        raise InvalidArgument(f"no local user {request.user!r}", field="user") from None
