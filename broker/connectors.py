"""Building a valid Connector from a request, and resolving a request's scope.

All checks happen here, before anything is stored: unknown or missing
attributes, the wrong auth method for the type, expiration out of bounds,
scope rules (multi-type, multi-instance, single-instance). Errors name the
field at fault and never echo a secret value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from broker.attributes import parse_value
from broker.cache import policy
from broker.clock import Clock
from broker.errors import ConnectorExpired, ConnectorTampered, InvalidArgument
from broker.model import AuthMethodSpec, ClientCredential, Connector, ConnectorTypeSpec, Value
from broker.providers.base import Provider

#: Connector names are used in file names, CLI arguments and session names.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
MAX_LABEL_VALUE = 256
MAX_LABELS = 64


@dataclass(frozen=True)
class ConnectorDraft:
    """What a register or update request asks for, before validation."""

    name: str
    connector_type: str
    auth_method: str | None
    resource_type: str | None
    resource_id: str | None
    config: Mapping[str, Value]
    labels: Mapping[str, str]
    expiration_seconds: int | None
    expires_at: datetime | None
    description: str = ""


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise InvalidArgument(
            f"connector name '{name}' is invalid: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            field="name",
        )
    return name


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels are allowed", field="labels")
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(key):
            raise InvalidArgument(f"label key '{key}' is invalid", field="labels")
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(
                f"label '{key}' is longer than {MAX_LABEL_VALUE} characters", field="labels"
            )
    return dict(labels)


def pick_auth_method(spec: ConnectorTypeSpec, requested: str | None) -> AuthMethodSpec:
    choices = ", ".join(m.auth_method for m in spec.auth_methods)
    if not requested:
        if len(spec.auth_methods) == 1:
            return spec.auth_methods[0]
        raise InvalidArgument(
            f"auth_method is required for connector type '{spec.connector_type}' "
            f"(one of: {choices})",
            field="auth_method",
        )
    method = spec.auth_method(requested)
    if method is None:
        raise InvalidArgument(
            f"auth method '{requested}' is not offered by connector type "
            f"'{spec.connector_type}' (one of: {choices})",
            field="auth_method",
        )
    return method


def parse_config(method: AuthMethodSpec, raw: Mapping[str, Value]) -> dict[str, Value]:
    """Check every attribute against the method's schema; fill defaults."""
    config: dict[str, Value] = {}
    for key, value in raw.items():
        attr = method.attribute(key)
        if attr is None:
            known = ", ".join(a.name for a in method.attributes)
            raise InvalidArgument(
                f"unknown attribute '{key}' for auth method '{method.auth_method}' "
                f"(known: {known})",
                field=key,
            )
        config[key] = parse_value(attr, value)
    for attr in method.attributes:
        if attr.name in config:
            continue
        if attr.required:
            raise InvalidArgument(
                f"attribute '{attr.name}' is required for auth method '{method.auth_method}'",
                field=attr.name,
            )
        if attr.default is not None:
            config[attr.name] = attr.default
    return config


def check_expiration(method: AuthMethodSpec, seconds: int | None) -> int | None:
    if seconds is None:
        return None
    if not method.mints_tokens:
        raise InvalidArgument(
            f"auth method '{method.auth_method}' mints no tokens: expiration_seconds "
            "does not apply",
            field="expiration_seconds",
        )
    low = method.min_expiration_seconds or 1
    high = method.max_expiration_seconds
    if seconds < low or (high is not None and seconds > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise InvalidArgument(
            f"expiration_seconds {seconds} is outside {bound} for auth method "
            f"'{method.auth_method}'",
            field="expiration_seconds",
        )
    return seconds


def build_connector(
    provider: Provider, draft: ConnectorDraft, clock: Clock, base: Connector | None = None
) -> Connector:
    """Validate a draft into a Connector (not stored). ``base`` carries identity on update."""
    spec = provider.spec
    check_name(draft.name)
    method = pick_auth_method(spec, draft.auth_method)
    if base is not None and base.tampered:
        check_secrets_resupplied(base, method, draft.config)
    config = parse_config(method, draft.config)
    expiration = check_expiration(method, draft.expiration_seconds)
    now = clock.now()
    if method.requires_expires_at and draft.expires_at is None:
        raise InvalidArgument(
            f"auth method '{method.auth_method}' stores a credential that expires: "
            "expires_at is required",
            field="expires_at",
        )
    if draft.expires_at is not None and draft.expires_at <= now and base is None:
        raise InvalidArgument(
            f"expires_at {draft.expires_at.isoformat()} is in the past", field="expires_at"
        )
    resource_type = draft.resource_type or None
    if resource_type is None and draft.resource_id and len(spec.resource_type_names) == 1:
        # One resource type (docker): the resource ID can only be one of those.
        resource_type = spec.resource_type_names[0]
    if resource_type is not None and spec.resource_type(resource_type) is None:
        raise InvalidArgument(
            f"resource type '{resource_type}' is not offered by connector type "
            f"'{spec.connector_type}' (one of: {', '.join(spec.resource_type_names)})",
            field="resource_type",
        )
    if draft.resource_id and resource_type is None:
        raise InvalidArgument(
            "resource_id needs resource_type: a multi-type connector serves every resource",
            field="resource_id",
        )
    connector = Connector(
        id=base.id if base else "",
        name=draft.name,
        connector_type=spec.connector_type,
        auth_method=method.auth_method,
        resource_type=resource_type,
        resource_id=None,
        config=config,
        labels=check_labels(draft.labels),
        expiration_seconds=expiration,
        expires_at=draft.expires_at,
        created_at=base.created_at if base else now,
        updated_at=now,
        revision=base.revision if base else 0,
        description=draft.description,
    )
    provider.implicit_allowed(connector)
    provider.validate(connector)
    if resource_type is not None and draft.resource_id:
        rid = provider.canonical_resource_id(connector, resource_type, draft.resource_id)
        connector = replace(connector, resource_id=rid)
    return connector


def served_types(provider: Provider, connector: Connector) -> tuple[str, ...]:
    """The resource types a connector serves: one, or all of its type's (multi-type)."""
    if connector.resource_type:
        return (connector.resource_type,)
    return provider.spec.resource_type_names


def scope_of(provider: Provider, connector: Connector) -> str:
    if connector.resource_type is None:
        return "multi-type"
    rt = provider.spec.resource_type(connector.resource_type)
    if rt is not None and rt.supports_instances and connector.resource_id is None:
        return "multi-instance"
    return "single-instance"


#: What ``broker connector update`` needs to renew a connector's stored credential.
_RENEWED_ATTRIBUTES: dict[tuple[str, str], str] = {
    ("aws", "sts-token"): "aws_access_key_id=... aws_secret_access_key=... aws_session_token=...",
    ("gcp", "oauth2-token"): "token=...",
    ("kubernetes", "token"): "token=...",
    ("kubernetes", "password"): "password=...",
    ("docker", "password"): "password=...",
}


def connector_margin(
    connector: Connector, resource_type: str | None = None
) -> tuple[timedelta, str]:
    """How long before its ``expires_at`` a connector stops issuing credentials.

    The margin of its own credential's kind (the connector type's), or of the
    client credential's kind for ``resource_type`` when that is larger (a gcp
    token handed to docker as a registry password gets docker's 5 minutes).
    The lifetime of a stored credential is unknown, so the whole margin applies.
    Returns the margin and the kind it belongs to.
    """
    kinds = [connector.connector_type]
    if resource_type is not None:
        kinds.append(policy.client_kind(connector.connector_type, resource_type))
    return max((policy.margin_of_kind(kind), kind) for kind in kinds)


def rfc3339(when: datetime) -> str:
    """UTC, to the second, with ``Z``: what ``--expires-at`` accepts back."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds_text(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def check_not_expired(
    connector: Connector, now: datetime, resource_type: str | None = None
) -> None:
    """Refuse a connector whose own credential is expired or inside its safety margin.

    A connector with ``expires_at`` (a stored STS or OAuth2 token, a docker or
    kubernetes credential known to expire) issues nothing from
    ``expires_at - margin`` on (:func:`connector_margin`); the error says when it
    expires and how to renew it.
    """
    expires = connector.expires_at
    if expires is None:
        return
    margin, kind = connector_margin(connector, resource_type)
    if now < expires - margin:
        return
    if expires <= now:
        state = f"credentials expired at {rfc3339(expires)}"
    else:
        state = (
            f"credentials expire at {rfc3339(expires)}, within the {_seconds_text(margin)} "
            f"safety margin in which {kind} credentials are no longer handed out"
        )
    attributes = _RENEWED_ATTRIBUTES.get(
        (connector.connector_type, connector.auth_method), "KEY=VALUE..."
    )
    raise ConnectorExpired(
        f"connector '{connector.name}' {state}; renew them with "
        f"`broker connector update {connector.name} {attributes} --expires-at TIME` "
        "(TIME: RFC 3339 or +DURATION, e.g. +12h)"
    )


def as_declared(connector: Connector, credential: ClientCredential) -> ClientCredential:
    """A credential that dies exactly when the connector's own credential does is that
    credential handed through (a stored STS or OAuth2 token, a registry password), or
    lives only as long as it: nobody declared when it was issued, whatever the
    provider stamped, so its margin is its kind's whole margin."""
    expires = connector.expires_at
    if expires is None or credential.expires_at != expires or credential.issued_at is None:
        return credential
    return replace(credential, issued_at=None)


def check_not_tampered(connector: Connector) -> None:
    """Refuse a connector whose stored row failed its integrity check: it must not be used."""
    if connector.tampered:
        raise ConnectorTampered.of(connector.name)


def check_secrets_resupplied(
    base: Connector, method: AuthMethodSpec, config: Mapping[str, Value]
) -> None:
    """Updating a tampered connector re-seals it, so its secrets must come from the caller.

    Its stored secrets were withheld (``base.config`` has none), so every secret
    attribute in ``config`` was given by this request. Each required secret
    attribute of the method must be there, and at least one secret attribute
    when the method has any; otherwise the update is refused naming them.
    """
    secret = [a for a in method.attributes if a.secret]
    if not secret:
        return
    missing = [a.name for a in secret if a.required and a.name not in config]
    if missing or not any(a.name in config for a in secret):
        names = ", ".join(missing or [a.name for a in secret])
        wanted = names if missing else f"at least one of: {names}"
        raise ConnectorTampered(
            f"connector '{base.name}' is tampered: it failed its integrity check, its stored "
            "record was changed outside the broker and its secrets were withheld; update it "
            f"with its secrets again ({wanted}) after checking its other attributes, or "
            "re-register it",
            field=(missing or [secret[0].name])[0],
        )


async def resolve_resource(
    provider: Provider, connector: Connector, resource_type: str | None, resource_id: str | None
) -> tuple[str, str]:
    """Pick the (resource type, canonical resource ID) a request means, inside the scope."""
    types = served_types(provider, connector)
    if not resource_type:
        if len(types) != 1:
            raise InvalidArgument(
                f"connector '{connector.name}' is multi-type: resource_type is required "
                f"(one of: {', '.join(types)})",
                field="resource_type",
            )
        resource_type = types[0]
    if resource_type not in types:
        raise InvalidArgument(
            f"connector '{connector.name}' does not serve resource type '{resource_type}' "
            f"(it serves: {', '.join(types)})",
            field="resource_type",
        )
    rt_spec = provider.spec.resource_type(resource_type)
    assert rt_spec is not None
    if resource_id:
        canonical = provider.canonical_resource_id(connector, resource_type, resource_id)
        if connector.resource_id is not None and canonical != connector.resource_id:
            raise InvalidArgument(
                f"connector '{connector.name}' only serves {resource_type} "
                f"'{connector.resource_id}', not '{canonical}'",
                field="resource_id",
            )
        return resource_type, canonical
    if connector.resource_id is not None:
        return resource_type, connector.resource_id
    default = await provider.resolve_default_resource_id(connector, resource_type)
    if default is None:
        raise InvalidArgument(
            f"resource_id is required: connector '{connector.name}' serves many "
            f"{resource_type} resources",
            field="resource_id",
        )
    return resource_type, default
