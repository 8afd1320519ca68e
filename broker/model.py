"""Frozen value types shared by every layer: specs, connectors, credentials.

Specs describe what a connector type offers (resource types, auth methods and
their attribute schemas); a :class:`Connector` is one stored instance; a
:class:`ClientCredential` is what a consumer receives for one resource.

Configurations are read-only (``MappingProxyType``), and secret values are
:class:`Secret`: text whose ``repr`` is redacted, so a connector or credential
printed in a log line, a traceback or a debugger shows no secret.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

#: A configuration value once parsed: text, a number, a flag or a list of text.
Value = str | int | bool | list[str]

#: How secrets are shown when the caller did not ask to see them.
HIDDEN = "[HIDDEN]"


class Secret(str):
    """A secret text value: ``repr`` shows ``'[HIDDEN]'``, everything else sees the text.

    ``repr`` is what gets printed without anyone asking for the value: dataclass and
    mapping reprs, ``%r`` and ``!r``, tracebacks, debuggers, log renderers that repr
    their values. The value is still a ``str``, so the code that must send, seal or
    serialize it (HTTP headers, the store's sealed blob, JSON, protobuf) gets the
    text as before; :meth:`reveal` says so explicitly and returns a plain ``str``.
    Operations on it (``strip``, slicing, ``+``) return plain ``str``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(HIDDEN)

    def reveal(self) -> str:
        """The text itself, as a plain ``str``."""
        return str.__str__(self)


def hide_secrets(config: Mapping[str, Value], secret_names: frozenset[str]) -> dict[str, Value]:
    """A copy of ``config`` whose text values named in ``secret_names`` are :class:`Secret`."""
    return {k: Secret(v) if k in secret_names and type(v) is str else v for k, v in config.items()}


def _read_only(config: Mapping[str, Value]) -> Mapping[str, Value]:
    """A private, read-only copy (callers keep no handle to change it)."""
    return MappingProxyType(dict(config))


class AttrKind(enum.StrEnum):
    """How an attribute's text is parsed and checked."""

    STRING = "string"
    INT = "int"
    BOOL = "bool"
    LIST = "list"  # JSON list or comma-separated text
    JSON = "json"  # a JSON document kept as text (policies, key files)
    PEM = "pem"  # PEM text or base64-encoded PEM; stored as PEM text
    URL = "url"


@dataclass(frozen=True)
class AttributeSpec:
    """One configuration attribute of an auth method."""

    name: str
    description: str
    kind: AttrKind = AttrKind.STRING
    required: bool = False
    secret: bool = False
    default: Value | None = None


@dataclass(frozen=True)
class AuthMethodSpec:
    """One way to authenticate a connector type, with its configuration schema."""

    auth_method: str
    name: str
    description: str
    attributes: tuple[AttributeSpec, ...]
    #: Bounds on the session length of tokens this method mints (None: mints nothing).
    min_expiration_seconds: int | None = None
    max_expiration_seconds: int | None = None
    default_expiration_seconds: int | None = None
    #: Uses the daemon's own environment; refused unless explicitly enabled.
    implicit: bool = False
    #: The stored credential itself expires (STS tokens, OAuth2 tokens).
    requires_expires_at: bool = False

    def attribute(self, name: str) -> AttributeSpec | None:
        for attr in self.attributes:
            if attr.name == name:
                return attr
        return None

    @property
    def secret_names(self) -> frozenset[str]:
        return frozenset(a.name for a in self.attributes if a.secret)

    @property
    def mints_tokens(self) -> bool:
        return self.default_expiration_seconds is not None


@dataclass(frozen=True)
class ResourceTypeSpec:
    """A class of resource reached the same way whoever hosts it."""

    resource_type: str
    name: str
    description: str
    #: True: many named resources (buckets, clusters). False: one per connector.
    supports_instances: bool
    #: Accepted input formats, shown by describe-type.
    id_formats: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConnectorTypeSpec:
    """Everything a connector type declares about itself."""

    connector_type: str
    name: str
    description: str
    resource_types: tuple[ResourceTypeSpec, ...]
    auth_methods: tuple[AuthMethodSpec, ...]
    supports_auto_configuration: bool = False

    def resource_type(self, name: str) -> ResourceTypeSpec | None:
        for rt in self.resource_types:
            if rt.resource_type == name:
                return rt
        return None

    def auth_method(self, name: str) -> AuthMethodSpec | None:
        for am in self.auth_methods:
            if am.auth_method == name:
                return am
        return None

    @property
    def resource_type_names(self) -> tuple[str, ...]:
        return tuple(rt.resource_type for rt in self.resource_types)


@dataclass(frozen=True)
class Connector:
    """A named, stored instance of a connector type.

    ``config`` holds every attribute, secrets included (in memory only: the
    store encrypts the secret ones). ``resource_type`` None means multi-type;
    a type with ``resource_id`` None means multi-instance.

    ``tampered``: the stored row failed its integrity check (its non-secret
    fields were changed without the key, so its sealed secrets do not open).
    Such a connector has no secret values in ``config`` and must never be used
    upstream; it can be listed, described, deleted, or updated with its
    secrets supplied again.

    ``config`` is a read-only copy of what is passed in. Its secret values are
    :class:`Secret` where the code building it knew the schema (attribute parsing,
    the store opening a row), so they never show in a ``repr``.
    """

    id: str
    name: str
    connector_type: str
    auth_method: str
    resource_type: str | None
    resource_id: str | None
    config: Mapping[str, Value]
    labels: Mapping[str, str]
    expiration_seconds: int | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    revision: int
    description: str = ""
    tampered: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", _read_only(self.config))


@dataclass(frozen=True)
class ClientCredential:
    """What a consumer receives for one resource: possibly of another connector type.

    ``config`` is a read-only copy of what is passed in, with the text values named
    in ``secret_names`` as :class:`Secret` (redacted in any ``repr``).
    """

    connector_type: str
    auth_method: str
    resource_type: str
    resource_id: str
    config: Mapping[str, Value]
    #: Which keys of ``config`` are secret (hidden unless asked for).
    secret_names: frozenset[str] = frozenset()
    #: None: long-lived, valid until the connector changes.
    expires_at: datetime | None = None
    #: The session policy document actually applied, for auditing (JSON text).
    session_policy: str | None = None
    #: When the credential was minted (the cache measures lifetimes from here).
    issued_at: datetime | None = None

    def __post_init__(self) -> None:
        config = MappingProxyType(hide_secrets(self.config, self.secret_names))
        object.__setattr__(self, "config", config)


@dataclass(frozen=True)
class ResourceRef:
    """One resource of one connector, in canonical form: the cache key minus revision."""

    connector: str
    resource_type: str
    resource_id: str


@dataclass(frozen=True)
class TypeResources:
    """What discovery found for one resource type of one connector."""

    resource_type: str
    resource_ids: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class AutoConfigured:
    """What a provider found in the local environment for auto-configuration."""

    auth_method: str
    config: Mapping[str, Value]
    resource_type: str | None = None
    resource_id: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class AutoConfigureOptions:
    """What the user asked auto-configuration for; providers ignore what they do not use."""

    auth_method: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectorFilter:
    """List filters; None means "any". Labels match when every given pair is present."""

    name: str | None = None
    connector_type: str | None = None
    auth_method: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
