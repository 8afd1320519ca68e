"""The ``gcp`` connector type: Google credentials in, short-lived access tokens out.

Every resource type is reached with an OAuth2 access token (cloud-platform
scope) minted from the stored credential; what differs is the wrapping:

* gcp-generic, gcs-bucket -> a ``gcp`` ``oauth2-token`` credential (token, project_id);
* kubernetes-cluster -> a ``kubernetes`` ``token`` credential (server, CA and
  cluster name from the GKE API, the token as bearer);
* docker-registry -> a ``docker`` ``password`` credential (``oauth2accesstoken``
  and the token, for the registry host).

``generate_temporary_tokens=false`` (user and service accounts) hands out the
key file itself where a consumer can use one: gcp-generic and gcs-bucket get a
``gcp`` credential of the connector's own method, registries get docker's
``_json_key`` login for a service account key. GKE clusters always get a
token: kubectl cannot use a key file.

Tokens carry ``account`` (the identity's email) where it is known. For the
GCE metadata endpoint, gcp-generic and gcs-bucket also issue variants
(:mod:`broker.providers.gcp.variants`): access tokens for other scopes, and
ID tokens for an audience; :meth:`GcpProvider.project_number` answers its
``numeric-project-id``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aiohttp

from broker import variants
from broker.errors import (
    BrokerError,
    FailedPrecondition,
    UpstreamError,
)
from broker.model import AutoConfigured, AutoConfigureOptions, ClientCredential, Connector, Value
from broker.providers import credentials
from broker.providers.base import Provider, ProviderContext
from broker.providers.gcp import adc, autoconfig, discovery, ids, tokens, wrapping
from broker.providers.gcp.api import Endpoints, GoogleApi
from broker.providers.gcp.keys import AUTHORIZED_USER, SERVICE_ACCOUNT
from broker.providers.gcp.settings import KEY_ATTRIBUTES, GcpSettings
from broker.providers.gcp.spec import (
    AUTH_EXTERNAL,
    AUTH_IMPERSONATION,
    AUTH_IMPLICIT,
    AUTH_TOKEN,
    CONNECTOR_TYPE,
    RT_GCS,
    RT_GENERIC,
    RT_GKE,
    RT_REGISTRY,
    SPEC,
    TOKEN_LIFETIME,
)
from broker.providers.http import client_session
from broker.providers.memo import PerObject

#: The client credential ``auth_method`` of an ID token variant.
ID_TOKEN_METHOD = "id-token"
#: Resource types whose credential is a plain token for the project (variants apply).
_TOKEN_TYPES = (RT_GENERIC, RT_GCS)


class GcpProvider(Provider):
    """Service accounts, user accounts, tokens, impersonation and federation for Google Cloud."""

    spec = SPEC

    _session: aiohttp.ClientSession | None = None
    _endpoints: Endpoints | None = None
    #: Project ID -> number, as Resource Manager said (numbers never change).
    _project_numbers: dict[str, str] | None = None

    def __init__(self, context: ProviderContext | None = None) -> None:
        super().__init__(context)
        #: Settings per connector object (parsing a key loads its RSA key, ~70 ms), with
        #: the ADC file's signature for implicit auth; dropped with the connector.
        self._settings: PerObject[tuple[object, GcpSettings]] = PerObject()

    # -- configuration ------------------------------------------------------
    def settings(self, connector: Connector) -> GcpSettings:
        """The connector's checked settings, parsed once per connector object (and again
        for implicit auth when the daemon's ADC file changed)."""
        env = self.context.env
        source = adc.adc_signature(env) if connector.auth_method == AUTH_IMPLICIT else None
        known = self._settings.get(connector)
        if known is not None and known[0] == source:
            return known[1]
        settings = GcpSettings.from_connector(connector, env)
        self._settings.put(connector, (source, settings))
        return settings

    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            self._endpoints = Endpoints.from_env(self.context.env)
        return self._endpoints

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = client_session(
                timeout=self.context.request_timeout, transport=self.context.transport
            )
        return self._session

    async def aclose(self) -> None:
        self._settings.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- validation -------------------------------------------------------
    def validate(self, connector: Connector) -> None:
        self.settings(connector)

    def canonical_resource_id(self, connector: Connector, resource_type: str, raw: str) -> str:
        self.check_resource_type(resource_type)
        project = self.settings(connector).project
        if resource_type == RT_GENERIC:
            return ids.canonical_project(raw, project)
        if resource_type == RT_GCS:
            return ids.canonical_bucket(raw)
        if resource_type == RT_GKE:
            return ids.parse_cluster(raw, project).canonical
        return ids.parse_registry(raw, project).canonical

    def default_resource_id(self, connector: Connector, resource_type: str) -> str | None:
        self.check_resource_type(resource_type)
        return self.settings(connector).project if resource_type == RT_GENERIC else None

    def registry_resource_id(self, connector: Connector, host: str) -> str | None:
        """docker asks by host alone; Google registry IDs also carry the project (gcr.io)
        and the repository (Artifact Registry), so the host is mapped here: a gcr.io host
        to the connector's project on it; an Artifact Registry host only for a connector
        fixed on a repository there (docker does not say which repository it wants)."""
        if connector.resource_type not in (None, RT_REGISTRY):
            return None
        try:
            project = self.settings(connector).project
            if connector.resource_id is not None:
                fixed = ids.parse_registry(connector.resource_id, project)
                return connector.resource_id if fixed.host == host.lower() else None
            if host.lower() in ids.GCR_HOSTS:
                return ids.parse_registry(f"{host.lower()}/{project}", project).canonical
        except BrokerError:
            return None
        return None

    async def registry_hosts(self, connector: Connector) -> dict[str, str]:
        """docker ``list``: the hosts :meth:`registry_resource_id` answers for (every gcr.io
        host, or the one Artifact Registry host of a fixed repository)."""
        if connector.resource_type not in (None, RT_REGISTRY):
            return {}
        try:
            settings = self.settings(connector)
            hosts = (
                [ids.parse_registry(connector.resource_id, settings.project).host]
                if connector.resource_id is not None
                else list(ids.GCR_HOSTS)
            )
        except BrokerError:
            return {}
        key = settings.key
        hands_key = (
            not settings.generate_tokens
            and key is not None
            and connector.auth_method in KEY_ATTRIBUTES
            and key.type == SERVICE_ACCOUNT
        )
        user = wrapping.REGISTRY_KEY_USER if hands_key else wrapping.REGISTRY_TOKEN_USER
        return {host: user for host in hosts if self.registry_resource_id(connector, host)}

    # -- tokens -------------------------------------------------------------
    async def access_token(
        self, connector: Connector, scopes: Sequence[str] = variants.DEFAULT_SCOPES
    ) -> tokens.AccessToken:
        """One fresh access token for the connector's identity (one upstream attempt).

        ``scopes``: what the token is for; a stored token (oauth2-token) is handed
        through whatever was asked, as it is the only one there is.
        """
        self.implicit_allowed(connector)
        settings = self.settings(connector)
        now = self.context.clock.now()
        timeout = self.context.request_timeout
        session = self._http()
        if settings.auth_method == AUTH_TOKEN:
            return wrapping.stored_token(connector, settings, now)
        if settings.key is None:  # implicit without an ADC file: the metadata server
            return await tokens.metadata_token(
                session,
                self.endpoints().metadata_host,
                now=now,
                request_timeout=timeout,
                scopes=scopes,
            )
        target = _target(settings)
        # An impersonating source needs cloud-platform (to call IAM), not the target's scopes.
        token = await tokens.key_token(
            session,
            settings.key,
            now=now,
            request_timeout=timeout,
            scopes=variants.DEFAULT_SCOPES if target else scopes,
        )
        if target is None:
            return token
        lifetime = TOKEN_LIFETIME
        if settings.auth_method == AUTH_IMPERSONATION:
            lifetime = connector.expiration_seconds or TOKEN_LIFETIME
        return await tokens.impersonate(
            session,
            self.endpoints().iamcredentials,
            token,
            target,
            lifetime,
            request_timeout=timeout,
            scopes=scopes,
        )

    async def id_token(
        self, connector: Connector, audience: str, *, include_email: bool
    ) -> tokens.IdToken:
        """One fresh ID token of the connector's service account for ``audience``."""
        self.implicit_allowed(connector)
        settings = self.settings(connector)
        self._check_id_tokens(connector, settings)
        now = self.context.clock.now()
        timeout = self.context.request_timeout
        session = self._http()
        key = settings.key
        if key is None:
            return await tokens.metadata_id_token(
                session,
                self.endpoints().metadata_host,
                audience,
                include_email=include_email,
                now=now,
                request_timeout=timeout,
            )
        target = _target(settings)
        if target is None:
            return await tokens.key_id_token(
                session, key, audience, now=now, request_timeout=timeout
            )
        source = await tokens.key_token(session, key, now=now, request_timeout=timeout)
        return await tokens.generate_id_token(
            session,
            self.endpoints().iamcredentials,
            source,
            target,
            audience,
            include_email=include_email,
            now=now,
            request_timeout=timeout,
        )

    def _check_id_tokens(self, connector: Connector, settings: GcpSettings) -> None:
        """Google issues ID tokens for a chosen audience to service accounts only."""
        key = settings.key
        if settings.auth_method == AUTH_TOKEN:
            what = "a stored OAuth2 access token"
        elif key is None or key.type == SERVICE_ACCOUNT or _target(settings) is not None:
            return
        elif key.type == AUTHORIZED_USER:
            what = "a user account"
        else:
            what = "an external account that impersonates no service account"
        raise FailedPrecondition(
            f"connector '{connector.name}' authenticates with {what}: Google issues ID "
            "tokens for an audience to service accounts only (use a service account key, "
            "impersonation, or an external account with service_account_impersonation_url)"
        )

    # -- variants (the GCE metadata endpoint) ----------------------------------
    def variant_for(self, connector: Connector, resource_type: str, variant: str) -> str:
        if not variant:
            return ""
        wanted = variants.parse(variant)
        if resource_type not in _TOKEN_TYPES:
            raise FailedPrecondition(
                f"resource type '{resource_type}' has no token variants (other scopes, ID "
                f"tokens): they exist for {' and '.join(_TOKEN_TYPES)}"
            )
        if wanted.is_id_token:
            self.implicit_allowed(connector)
            self._check_id_tokens(connector, self.settings(connector))
            return variant
        return variants.scopes_variant(wanted.scopes)

    async def mint_variant(
        self, connector: Connector, resource_type: str, resource_id: str, variant: str
    ) -> ClientCredential:
        self.check_resource_type(resource_type)
        wanted = variants.parse(variant)
        if resource_type not in _TOKEN_TYPES:
            raise FailedPrecondition(f"resource type '{resource_type}' has no token variants")
        settings = self.settings(connector)
        canonical = self.canonical_resource_id(connector, resource_type, resource_id)
        issued = self.context.clock.now()
        config: dict[str, Value] = {"project_id": settings.project}
        if wanted.audience is not None:
            id_token = await self.id_token(
                connector, wanted.audience, include_email=wanted.include_email
            )
            config.update(id_token=id_token.value, audience=wanted.audience)
            if id_token.account:
                config["account"] = id_token.account
            # Its lifetime is what the JWT declares (iat to exp), not this mint's duration.
            if id_token.lifetime is not None:
                issued = min(issued, id_token.expires_at - id_token.lifetime)
            return ClientCredential(
                connector_type=CONNECTOR_TYPE,
                auth_method=ID_TOKEN_METHOD,
                resource_type=resource_type,
                resource_id=canonical,
                config=config,
                secret_names=frozenset({"id_token"}),
                expires_at=id_token.expires_at,
                issued_at=issued,
            )
        token = await self.access_token(connector, wanted.scopes)
        issued_at = issued if _issues_fresh_tokens(settings) else None
        return wrapping.token_credential(
            resource_type, canonical, token, settings, issued_at, wanted.scopes
        )

    async def project_number(self, connector: Connector, token: str) -> str:
        """The connector project's number: the ``project_number`` attribute, else Resource
        Manager's answer (asked once per project with ``token``, then remembered)."""
        settings = self.settings(connector)
        if settings.project_number is not None:
            return settings.project_number
        known = self._project_numbers
        if known is None:
            known = self._project_numbers = {}
        if settings.project in known:
            return known[settings.project]
        api = GoogleApi(self._http(), token, self.context.request_timeout)
        try:
            doc = await api.get(
                f"{self.endpoints().resourcemanager}/v3/projects/{settings.project}",
                action="read the project's number",
                resource=f"project '{settings.project}'",
            )
        except BrokerError as exc:
            raise type(exc)(
                f"{exc.message} (or set the connector's project_number attribute)",
                field=exc.field,
                retryable=exc.retryable,
            ) from None
        name = str(doc.get("name") or "")
        number = name.removeprefix("projects/")
        if not name.startswith("projects/") or not number.isdigit():
            raise UpstreamError(
                f"Resource Manager named project '{settings.project}' '{name[:80]}', "
                "not projects/NUMBER",
                retryable=False,
            )
        known[settings.project] = number
        return number

    # -- upstream ---------------------------------------------------------
    async def discover(
        self, connector: Connector, resource_type: str, resource_id: str | None
    ) -> list[str]:
        self.check_resource_type(resource_type)
        settings = self.settings(connector)
        project = settings.project
        canonical = (
            self.canonical_resource_id(connector, resource_type, resource_id)
            if resource_id
            else None
        )
        token = await self.access_token(connector)  # proves the credentials work
        if resource_type == RT_GENERIC:
            return [project]
        api = GoogleApi(self._http(), token.value, self.context.request_timeout)
        urls = self.endpoints()
        if resource_type == RT_GCS:
            if canonical:
                return [await discovery.get_bucket(api, urls, canonical)]
            return await discovery.list_buckets(api, urls, project)
        if resource_type == RT_GKE:
            clusters = await discovery.list_clusters(api, urls, project)
            if canonical:
                ref = ids.parse_cluster(canonical, project)
                discovery.find_cluster(clusters, ref, project)
                return [canonical]
            return discovery.cluster_ids(clusters)
        if canonical:
            ref_r = ids.parse_registry(canonical, project)
            return [await discovery.check_registry(api, urls, ref_r)]
        return await discovery.list_registries(api, urls, project)

    async def mint(
        self, connector: Connector, resource_type: str, resource_id: str
    ) -> ClientCredential:
        self.check_resource_type(resource_type)
        self.implicit_allowed(connector)
        settings = self.settings(connector)
        canonical = self.canonical_resource_id(connector, resource_type, resource_id)
        issued = self.context.clock.now()
        if not settings.generate_tokens:
            handed = wrapping.key_credential(connector, settings, resource_type, canonical, issued)
            if handed is not None:
                return handed
        token = await self.access_token(connector)
        issued_at = issued if _issues_fresh_tokens(settings) else None
        if resource_type in _TOKEN_TYPES:
            return wrapping.token_credential(resource_type, canonical, token, settings, issued_at)
        if resource_type == RT_GKE:
            ref = ids.parse_cluster(canonical, settings.project)
            api = GoogleApi(self._http(), token.value, self.context.request_timeout)
            clusters = await discovery.list_clusters(api, self.endpoints(), settings.project)
            cluster = discovery.find_cluster(clusters, ref, settings.project)
            server, ca, location = discovery.cluster_access(cluster, ref)
            return credentials.kubernetes_token(
                resource_type,
                canonical,
                server=server,
                certificate_authority=ca,
                cluster_name=f"gke_{settings.project}_{location}_{ref.name}",
                token=token.value,
                expires_at=token.expires_at,
                issued_at=issued_at,
            )
        registry = ids.parse_registry(canonical, settings.project)
        return wrapping.docker_credential(
            canonical,
            registry.host,
            wrapping.REGISTRY_TOKEN_USER,
            token.value,
            token.expires_at,
            issued_at,
        )

    # -- local environment --------------------------------------------------
    def auto_configure(
        self, options: AutoConfigureOptions, env: Mapping[str, str]
    ) -> AutoConfigured:
        return autoconfig.auto_configure(options, env)


def _target(settings: GcpSettings) -> str | None:
    """The service account the connector's tokens are minted for by impersonation."""
    if settings.auth_method == AUTH_EXTERNAL and settings.key is not None:
        return settings.key.impersonation_target
    return settings.target


def _issues_fresh_tokens(settings: GcpSettings) -> bool:
    """Whether each access token was issued for this request, so its lifetime is declared.

    A token endpoint and IAM Credentials answer with a fresh token (issued when it
    was asked for). A stored OAuth2 token is handed through, and the metadata server
    answers with the token it caches until 5 minutes before its expiry: nobody
    declared when those were issued, so they keep Google's whole margin.
    """
    return settings.auth_method != AUTH_TOKEN and settings.key is not None
