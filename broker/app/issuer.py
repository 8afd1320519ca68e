"""Issuing credentials: resolve a request once per connector revision, mint through
the cache, check the caller at every step, and audit what was handed out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from broker.access import Gatekeeper
from broker.app.values import CredentialCache, Issued, IssuedEvent, Mint
from broker.audit import AuditLog, Line
from broker.cache.cache import CacheKey
from broker.clock import Clock
from broker.connectors import as_declared, check_not_expired, check_not_tampered, resolve_resource
from broker.errors import BrokerError, NotFound
from broker.identity.principal import Principal
from broker.model import HIDDEN, ClientCredential, Connector
from broker.policy import AccessPolicy, Action
from broker.providers.base import Provider
from broker.served import ServedMargins
from broker.upstream_stats import UpstreamStats

#: Resolved requests remembered for the hot path (cleared wholesale when full).
RESOLVED_MEMO_SIZE = 8192

#: The connector named, if the caller may do the action to it (PermissionDenied / NotFound).
Lookup = Callable[[str, Principal, Action], Awaitable[Connector]]


class _Grant:
    """One caller's request as resolved and allowed for one connector object and policy.

    Valid while all three are the very objects it holds (a connector update, a
    policy reload or another connection makes new ones); holding them keeps
    their ids from being reused meanwhile.
    """

    __slots__ = ("connector", "credential", "key", "line", "mint", "policy", "principal")

    def __init__(
        self,
        principal: Principal,
        connector: Connector,
        policy: AccessPolicy,
        key: CacheKey,
        mint: Mint,
    ) -> None:
        self.principal = principal
        self.connector = connector
        self.policy = policy
        self.key = key
        self.mint = mint
        #: The credential last handed out under this grant, and its audit line.
        self.credential: ClientCredential | None = None
        self.line: Line | None = None


class CredentialIssuer:
    """Hands out client credentials: ``get`` and ``watch``, each checked and audited."""

    def __init__(
        self,
        lookup: Lookup,
        provider: Callable[[Connector], Provider],
        secret_names: Callable[[Connector], frozenset[str]],
        cache: CredentialCache,
        clock: Clock,
        gate: Gatekeeper,
        audit: AuditLog,
        upstream: UpstreamStats,
        margins: ServedMargins,
    ) -> None:
        self.authorized = lookup
        self.provider = provider
        self.secret_names = secret_names
        self._cache = cache
        self._clock = clock
        self.gate = gate
        self.audit = audit
        self.upstream = upstream
        self.margins = margins
        #: Cache key -> whether its credential is the connector's stored secret itself.
        self._stored_secret: dict[CacheKey, bool] = {}
        #: (connector id, revision, requested type, requested ID, variant) -> key and mint:
        #: scope checks and ID parsing run once per connector revision, not per call.
        self._resolved: dict[
            tuple[str, int, str | None, str | None, str], tuple[CacheKey, Mint]
        ] = {}
        #: (id(caller), connector id, requested type, requested ID, variant, via) -> what a
        #: get worked out for that caller, connector object and policy (see get_credentials).
        self._grants: dict[tuple[int, str, str | None, str | None, str, str], _Grant] = {}

    async def _key_and_mint(
        self,
        name: str,
        resource_type: str | None,
        resource_id: str | None,
        principal: Principal,
        action: Action,
        variant: str = "",
    ) -> tuple[Connector, CacheKey, Mint]:
        """Checks the caller may ``action`` the connector, then the resolved resource."""
        connector = await self.authorized(name, principal, action)
        check_not_tampered(connector)
        check_not_expired(connector, self._clock.now())
        key, mint = await self._resolve(connector, resource_type, resource_id, variant)
        self.gate.require_connector(
            principal, action, connector, key.resource_type, key.resource_id
        )
        return connector, key, mint

    async def _resolve(
        self,
        connector: Connector,
        resource_type: str | None,
        resource_id: str | None,
        variant: str = "",
    ) -> tuple[CacheKey, Mint]:
        memo = (connector.id, connector.revision, resource_type, resource_id, variant)
        known = self._resolved.get(memo)
        if known is not None:
            return known
        provider = self.provider(connector)
        rt, rid = await resolve_resource(provider, connector, resource_type, resource_id)
        # A variant the plain credential already satisfies shares its entry ("").
        variant = provider.variant_for(connector, rt, variant)
        key = CacheKey(
            connector.id, connector.revision, rt, rid, variant, connector_name=connector.name
        )

        async def mint() -> ClientCredential:
            check_not_tampered(connector)
            check_not_expired(connector, self._clock.now(), rt)
            started = self._clock.monotonic()
            ok = False
            try:
                credential = await (
                    provider.mint_variant(connector, rt, rid, variant)
                    if variant
                    else provider.mint(connector, rt, rid)
                )
                credential = as_declared(connector, credential)
                ok = True
                self.audit.record(
                    "credential_minted",
                    connector=connector.name,
                    connector_type=connector.connector_type,
                    resource_type=rt,
                    resource_id=rid,
                    expires_at=credential.expires_at.isoformat() if credential.expires_at else None,
                )
                return credential
            finally:
                self.upstream.observe(
                    connector.connector_type, self._clock.monotonic() - started, ok
                )

        if len(self._resolved) >= RESOLVED_MEMO_SIZE:
            self._resolved.clear()
            self._stored_secret.clear()
        self._resolved[memo] = (key, mint)
        return key, mint

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
        """``variant``: a front end's own form of the credential (see
        :meth:`broker.providers.base.Provider.variant_for`), cached and renewed apart.

        Every call checks the caller's permission on the connector as it is now, the
        connector's own expiry, the credential's freshness (the cache) and its margin,
        and writes its audit line. What depends only on the caller, the connector
        object, the policy and the credential object (resolution, the scoped
        permission, the long-lived check, the audit line's text) is worked out once
        for them and reused (:class:`_Grant`)."""
        connector = await self.authorized(name, principal, Action.GET)
        check_not_tampered(connector)
        if connector.expires_at is not None:
            check_not_expired(connector, self._clock.now())
        memo = (id(principal), connector.id, resource_type, resource_id, variant, via)
        grant = self._grants.get(memo)
        if (
            grant is None
            or grant.connector is not connector
            or grant.principal is not principal
            or grant.policy is not self.gate.policy
        ):
            grant = await self._grant(connector, resource_type, resource_id, principal, variant)
            if len(self._grants) >= RESOLVED_MEMO_SIZE:
                self._grants.clear()
            self._grants[memo] = grant
        credential = await self._cache.get(grant.key, grant.mint)
        self.margins.observe(credential)
        if credential is not grant.credential:
            self._check_long_lived(principal, connector, grant.key, credential)
            # Kept only once allowed: a refused credential is checked (and audited) each call.
            grant.credential = credential
            grant.line = self._line(connector, credential, principal, via)
        assert grant.line is not None
        self.audit.write(grant.line)
        return Issued(connector, credential)

    async def _grant(
        self,
        connector: Connector,
        resource_type: str | None,
        resource_id: str | None,
        principal: Principal,
        variant: str,
    ) -> _Grant:
        key, mint = await self._resolve(connector, resource_type, resource_id, variant)
        self.gate.require_connector(
            principal, Action.GET, connector, key.resource_type, key.resource_id
        )
        return _Grant(principal, connector, self.gate.policy, key, mint)

    def _check_long_lived(
        self,
        principal: Principal,
        connector: Connector,
        key: CacheKey,
        credential: ClientCredential,
    ) -> None:
        """A credential that *is* a stored secret (secret-key, password, static token)
        needs a rule allowing long-lived secrets: consumers get scoped, short-lived ones."""
        stored = self._stored_secret.get(key)
        if stored is None:
            secrets = {
                str(connector.config[n])
                for n in self.secret_names(connector)
                if n in connector.config and connector.config[n] not in ("", HIDDEN)
            }
            stored = any(str(v) in secrets for v in credential.config.values())
            self._stored_secret[key] = stored
        if stored:
            self.gate.require_connector(
                principal, Action.GET_LONG_LIVED, connector, key.resource_type, key.resource_id
            )

    def _line(
        self, connector: Connector, credential: ClientCredential, principal: Principal, via: str
    ) -> Line:
        return self.audit.encode(
            "credential_issued",
            connector=connector.name,
            connector_type=connector.connector_type,
            resource_type=credential.resource_type,
            resource_id=credential.resource_id,
            expires_at=credential.expires_at.isoformat() if credential.expires_at else None,
            via=via,
            **principal.audit_fields(),
        )

    def _audit(
        self, connector: Connector, credential: ClientCredential, principal: Principal, via: str
    ) -> None:
        self.audit.write(self._line(connector, credential, principal, via))

    async def rotate_credentials(
        self,
        name: str,
        resource_type: str | None = None,
        resource_id: str | None = None,
        *,
        principal: Principal,
    ) -> Issued:
        """Admin: mint the resource's credential now, fresh or not (watchers get
        ``renewed``); the old one is served until then, and still after a failure."""
        connector, key, mint = await self._key_and_mint(
            name, resource_type, resource_id, principal, Action.ADMIN
        )
        fields = {
            "connector": connector.name,
            "resource_type": key.resource_type,
            "resource_id": key.resource_id,
            **principal.audit_fields(),
        }
        try:
            credential, old = await self._cache.rotate(key, mint)
        except BrokerError as exc:
            self.audit.record("credential_rotation_failed", error=exc.message, **fields)
            raise
        self.audit.record(
            "credential_rotated",
            expires_at=credential.expires_at.isoformat() if credential.expires_at else None,
            replaced_expires_at=old.expires_at.isoformat() if old and old.expires_at else None,
            **fields,
        )
        self.margins.observe(credential)
        return Issued(connector, credential)

    async def restore(
        self, connector: Connector, key: CacheKey, credential: ClientCredential
    ) -> bool:
        """Put a credential persisted before a restart back in the cache, if its key is
        still what this connector revision resolves to and it is outside its margin."""
        try:
            check_not_tampered(connector)
            check_not_expired(connector, self._clock.now(), key.resource_type)
            resolved, mint = await self._resolve(
                connector, key.resource_type, key.resource_id, key.variant
            )
        except BrokerError:
            return False
        return resolved == key and self._cache.restore(resolved, mint, credential)

    async def watch_credentials(
        self,
        name: str,
        resource_type: str | None = None,
        resource_id: str | None = None,
        *,
        principal: Principal,
    ) -> AsyncIterator[IssuedEvent]:
        """The current credential, each renewal, and update/delete events (then the end)."""
        connector, key, mint = await self._key_and_mint(
            name, resource_type, resource_id, principal, Action.WATCH
        )
        updated = False
        while True:
            async for event in self._cache.watch(key, mint):
                if event.kind in ("issued", "renewed") and event.credential is not None:
                    if event.kind == "issued":
                        self._check_long_lived(principal, connector, key, event.credential)
                        # Renewals reach every watcher of a key at once: they are audited
                        # once per mint ("credential_minted"), not once per watcher.
                        self._audit(connector, event.credential, principal, "watch")
                    kind: Literal["issued", "renewed", "updated"] = event.kind
                    if updated and event.kind == "issued":
                        kind, updated = "updated", False
                    self.margins.observe(event.credential)
                    yield IssuedEvent(kind, Issued(connector, event.credential))
                elif event.kind == "error":
                    yield IssuedEvent("error", error=event.error)
                elif event.kind == "deleted":
                    yield IssuedEvent("deleted")
                    return
                elif event.kind == "updated":
                    break
            else:
                return
            try:
                connector, key, mint = await self._key_and_mint(
                    connector.name, key.resource_type, key.resource_id, principal, Action.WATCH
                )
            except NotFound:
                yield IssuedEvent("deleted")
                return
            except BrokerError as exc:  # e.g. the update moved it out of the caller's scope
                yield IssuedEvent("error", error=exc.message)
                return
            updated = True
