"""The ``aws`` connector type: six auth methods, four resource types, down-scoped STS sessions.

Two kinds of credentials are in play for every connector. The *working*
credentials are the connector's own reach (its keys, or the role it assumes
with no session policy): discovery and lookups such as DescribeCluster use
them. The *client* credentials are what a consumer receives: minted per
resource, as short-lived and as narrowly scoped as the auth method allows.

The provider keeps no credentials between calls: a working role session is
assumed for the call that needs it (discovery, an EKS mint's DescribeCluster)
and dropped. When a credential is minted again is the cache's decision alone
(:mod:`broker.cache.policy`), so there is no second clock with its own margin
here. What is remembered is not secret: which account a key ID or role works in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from broker.errors import FailedPrecondition, InvalidArgument, NotFound
from broker.model import AutoConfigured, AutoConfigureOptions, ClientCredential, Connector, Value
from broker.providers import credentials
from broker.providers.aws import ids, resources, sts
from broker.providers.aws.autoconfig import auto_configure
from broker.providers.aws.eks_token import eks_token
from broker.providers.aws.failures import Call, aws_call
from broker.providers.aws.policy import (
    SessionPolicy,
    check_policy,
    configured_arns,
    needs_account,
    session_policy,
)
from broker.providers.aws.session import AwsClients, AwsCredentials, ImplicitChain
from broker.providers.aws.settings import (
    default_duration,
    optional,
    region_of,
    required,
    where_of,
)
from broker.providers.aws.spec import (
    AUTH_FEDERATION_TOKEN,
    AUTH_IMPLICIT,
    AUTH_SECRET_KEY,
    AUTH_SESSION_TOKEN,
    AUTH_STS_TOKEN,
    RT_ECR,
    RT_EKS,
    RT_GENERIC,
    RT_S3,
    SPEC,
)
from broker.providers.base import VARIANT_SDK_SESSION, Provider, ProviderContext

_ACCESS_KEY_RE = re.compile(r"^\w{16,128}$")
#: Bound on the remembered accounts (key ID or profile -> account).
_CACHE_LIMIT = 512
#: The user name of every ECR login.
ECR_USER = "AWS"


class AwsProvider(Provider):
    """Amazon Web Services: generic access, S3 buckets, EKS clusters and ECR registries."""

    spec = SPEC

    def __init__(self, context: ProviderContext | None = None, *, page_size: int = 0) -> None:
        super().__init__(context)
        self._clients = AwsClients(
            self.context.request_timeout,
            transport=self.context.transport,
            factory=self.context.aws_clients,
        )
        self._implicit = ImplicitChain(self.context.env, self.context.request_timeout)
        self._page_size = page_size or resources.DEFAULT_PAGE_SIZE
        #: Who works in which account: :func:`_account_key` -> account ID (never secret).
        self._accounts: dict[tuple[str, ...], str] = {}

    # -- validation -------------------------------------------------------
    def validate(self, connector: Connector) -> None:
        config = connector.config
        ids.check_region(region_of(connector))
        key_id = optional(connector, "aws_access_key_id")
        if key_id is not None and not _ACCESS_KEY_RE.match(key_id):
            raise InvalidArgument(
                "attribute 'aws_access_key_id' is not an AWS access key ID "
                "(16-128 letters and digits)",
                field="aws_access_key_id",
            )
        role_arn = optional(connector, "role_arn")
        if role_arn is not None:
            ids.check_role_arn(role_arn)
        policy = optional(connector, "policy")
        if policy is not None:
            check_policy(policy)
        configured_arns(config)
        if connector.auth_method == AUTH_IMPLICIT and role_arn is None:
            for name in ("policy", "policy_arns"):
                if config.get(name):
                    raise InvalidArgument(
                        f"attribute '{name}' applies only with role_arn: without a role, "
                        "implicit auth mints with GetSessionToken, which takes no session "
                        "policy",
                        field=name,
                    )

    def canonical_resource_id(self, connector: Connector, resource_type: str, raw: str) -> str:
        self.check_resource_type(resource_type)
        region = region_of(connector)
        if resource_type == RT_GENERIC:
            return ids.canonical_region(raw, region, connector.name)
        if resource_type == RT_S3:
            return ids.canonical_bucket(raw)
        if resource_type == RT_EKS:
            return ids.canonical_cluster(raw, region, connector.name)
        return ids.canonical_registry(raw, region, connector.name)

    def default_resource_id(self, connector: Connector, resource_type: str) -> str | None:
        self.check_resource_type(resource_type)
        if resource_type == RT_GENERIC:
            return region_of(connector)
        if resource_type == RT_ECR:
            account = self._known_account(connector)
            return ids.ecr_host(account, region_of(connector)) if account else None
        return None

    async def resolve_default_resource_id(
        self, connector: Connector, resource_type: str
    ) -> str | None:
        """docker-registry's ID holds the account, which only GetCallerIdentity knows."""
        if resource_type == RT_ECR:
            self.implicit_allowed(connector)
            account = await self._account(connector, await self._base(connector))
            return ids.ecr_host(account, region_of(connector))
        return self.default_resource_id(connector, resource_type)

    async def registry_hosts(self, connector: Connector) -> dict[str, str]:
        return {host: ECR_USER for host in await super().registry_hosts(connector)}

    # -- discovery --------------------------------------------------------
    async def discover(
        self, connector: Connector, resource_type: str, resource_id: str | None
    ) -> list[str]:
        self.implicit_allowed(connector)
        self.check_resource_type(resource_type)
        rid = (
            self.canonical_resource_id(connector, resource_type, resource_id)
            if resource_id
            else None
        )
        where = where_of(connector)
        base = await self._base(connector)
        identity = await sts.caller_identity(self._clients, where, base)
        working = await self._working_credentials(connector, base)
        if resource_type == RT_GENERIC:
            return [where.region]
        if resource_type == RT_S3:
            if rid:
                await resources.head_bucket(self._clients, where, working, rid)
                return [rid]
            return await resources.list_buckets(self._clients, where, working)
        if resource_type == RT_EKS:
            if rid:
                account = await self._account(connector, base, identity.account)
                await resources.describe_cluster(self._clients, where, working, account, rid)
                return [rid]
            return await resources.list_clusters(self._clients, where, working, self._page_size)
        registry = await resources.registry_id(self._clients, where, working)
        host = ids.ecr_host(registry, where.region)
        if rid and ids.registry_account(rid) != registry:
            raise NotFound(
                f"connector '{connector.name}' reaches ECR registry {host}, not {rid}",
                field="resource_id",
            )
        await resources.count_repositories(self._clients, where, working, registry, self._page_size)
        return [rid or host]

    # -- minting ----------------------------------------------------------
    async def mint(
        self, connector: Connector, resource_type: str, resource_id: str
    ) -> ClientCredential:
        self.implicit_allowed(connector)
        rid = self.canonical_resource_id(connector, resource_type, resource_id)
        where = where_of(connector)
        base = await self._base(connector)
        if resource_type in (RT_GENERIC, RT_S3):
            session, policy = await self._client_session(connector, resource_type, rid, base)
            now = self.context.clock.now()
            return _aws_credential(connector, resource_type, rid, session, policy, now)
        # Look the resource up before minting: no session is issued for a missing one.
        account = await self._account(connector, base)
        if resource_type == RT_EKS:
            working = await self._working_credentials(connector, base)
            cluster = await resources.describe_cluster(self._clients, where, working, account, rid)
            ca_pem = cluster.certificate_authority()
            session, policy = await self._client_session(connector, resource_type, rid, base)
            now = self.context.clock.now()
            token, expires_at = eks_token(session, rid, where.region, where.endpoint_url, now)
            return credentials.kubernetes_token(
                resource_type,
                rid,
                server=cluster.endpoint,
                certificate_authority=ca_pem,
                cluster_name=cluster.arn,
                token=token,
                expires_at=expires_at,
                issued_at=_issued_at(expires_at, session, now),
                session_policy=policy.audit_text,
            )
        if ids.registry_account(rid) != account:
            raise InvalidArgument(
                f"connector '{connector.name}' works in AWS account {account}; resource_id "
                f"'{rid}' is another account's registry",
                field="resource_id",
            )
        session, policy = await self._client_session(connector, resource_type, rid, base)
        login = await resources.ecr_login(self._clients, where, session)
        expires = _earliest(login.expires_at, session.expires_at)
        return credentials.docker_login(
            resource_type,
            rid,
            registry=login.registry or rid,
            username=login.username,
            password=login.password,
            expires_at=expires,
            issued_at=_issued_at(expires, session, self.context.clock.now()),
            session_policy=policy.audit_text,
        )

    # -- the container endpoint's sessions ------------------------------------
    def variant_for(self, connector: Connector, resource_type: str, variant: str) -> str:
        """``sdk-session``: SDKs get temporary keys with an expiry. Every method but
        secret-key mints (or holds) those already; secret-key's long-lived key is
        exchanged for a GetSessionToken session, cached and renewed apart from the key."""
        if variant != VARIANT_SDK_SESSION:
            return super().variant_for(connector, resource_type, variant)
        if resource_type not in (RT_GENERIC, RT_S3):
            raise FailedPrecondition(
                f"resource type '{resource_type}' of connector '{connector.name}' yields no "
                f"AWS keys; the container endpoint serves {RT_GENERIC} and {RT_S3}"
            )
        return VARIANT_SDK_SESSION if connector.auth_method == AUTH_SECRET_KEY else ""

    async def mint_variant(
        self, connector: Connector, resource_type: str, resource_id: str, variant: str
    ) -> ClientCredential:
        if self.variant_for(connector, resource_type, variant) != VARIANT_SDK_SESSION:
            return await super().mint_variant(connector, resource_type, resource_id, variant)
        rid = self.canonical_resource_id(connector, resource_type, resource_id)
        duration = connector.expiration_seconds or default_duration(connector.auth_method)
        # GetSessionToken takes no session policy: the session has the key's permissions.
        session = await sts.session_token(
            self._clients, where_of(connector), await self._base(connector), duration
        )
        now = self.context.clock.now()
        return _aws_credential(connector, resource_type, rid, session, SessionPolicy(), now)

    async def _client_session(
        self, connector: Connector, resource_type: str, rid: str, base: AwsCredentials
    ) -> tuple[AwsCredentials, SessionPolicy]:
        """The credentials a client receives, and the session policy they carry."""
        method = connector.auth_method
        where = where_of(connector)
        if method in (AUTH_SECRET_KEY, AUTH_STS_TOKEN):
            return base, SessionPolicy()
        duration = connector.expiration_seconds or default_duration(method)
        role_arn = optional(connector, "role_arn")
        if method == AUTH_SESSION_TOKEN or (method == AUTH_IMPLICIT and role_arn is None):
            if base.session_token is not None:  # implicit: already temporary, hand it through
                return base, SessionPolicy()
            return await sts.session_token(self._clients, where, base, duration), SessionPolicy()
        account = (
            await self._account(connector, base)
            if needs_account(connector.config, resource_type)
            else None
        )
        policy = session_policy(connector.config, resource_type, rid, where.region, account)
        if method == AUTH_FEDERATION_TOKEN:
            if policy.audit_text is None:
                raise InvalidArgument(
                    f"connector '{connector.name}' uses federation-token, whose tokens have "
                    f"no permissions without a session policy; {RT_GENERIC} has no generated "
                    "policy, so set 'policy' or 'policy_arns' on the connector",
                    field="policy",
                )
            token = await sts.federation_token(self._clients, where, base, duration, policy)
            return token, policy
        assert role_arn is not None
        return (
            await sts.assume_role(self._clients, where, base, role_arn, duration, policy),
            policy,
        )

    # -- credentials behind the scenes ----------------------------------------
    async def _base(self, connector: Connector) -> AwsCredentials:
        """The connector's own stored keys, or the daemon's for implicit auth."""
        if connector.auth_method == AUTH_IMPLICIT:
            call = Call(connector.name, "(daemon credentials)", "resolve credentials")
            async with aws_call(call):
                return await self._implicit.credentials(optional(connector, "profile_name"))
        token = optional(connector, "aws_session_token")
        return AwsCredentials(
            access_key_id=required(connector, "aws_access_key_id"),
            secret_access_key=required(connector, "aws_secret_access_key"),
            session_token=token,
            expires_at=connector.expires_at if token else None,
            reusable=True,
        )

    async def _working_credentials(
        self, connector: Connector, base: AwsCredentials
    ) -> AwsCredentials:
        """The connector's full reach: its keys, or its role assumed without a session policy.

        A role session is assumed for this call and not kept: it is used for a lookup
        (discovery, DescribeCluster before an EKS token), and the cache already decides
        how often those happen. Keeping it would mean a second renewal clock here.
        """
        role_arn = optional(connector, "role_arn")
        if role_arn is None:
            return base
        return await sts.assume_role(
            self._clients,
            where_of(connector),
            base,
            role_arn,
            default_duration(connector.auth_method),
            SessionPolicy(),
        )

    def _known_account(self, connector: Connector) -> str | None:
        """The connector's account if it can be told without a call."""
        role_arn = optional(connector, "role_arn")
        if role_arn is not None:
            return ids.account_of_role(role_arn)
        return self._accounts.get(_account_key(connector))

    async def _account(
        self, connector: Connector, base: AwsCredentials, known: str | None = None
    ) -> str:
        """The account the connector's resources live in (the role's, when it assumes one)."""
        account = self._known_account(connector)
        if account is None:
            account = (
                known
                or (await sts.caller_identity(self._clients, where_of(connector), base)).account
            )
            key = _account_key(connector)
            self._accounts.pop(key, None)
            self._accounts[key] = account
            while len(self._accounts) > _CACHE_LIMIT:
                self._accounts.pop(next(iter(self._accounts)))
        return account

    # -- local environment --------------------------------------------------
    def auto_configure(
        self, options: AutoConfigureOptions, env: Mapping[str, str]
    ) -> AutoConfigured:
        return auto_configure(options, env, self.context.clock.now())

    async def aclose(self) -> None:
        self._accounts.clear()
        await self._clients.aclose()


def _account_key(connector: Connector) -> tuple[str, ...]:
    """What decides the account of a connector without a role: its access key ID (an
    AWS key belongs to one account), or for implicit auth the daemon's profile. Never
    secret text, and the same whatever else of the connector changes."""
    endpoint = optional(connector, "endpoint_url") or ""
    if connector.auth_method == AUTH_IMPLICIT:
        return ("implicit", endpoint, optional(connector, "profile_name") or "")
    return ("keys", endpoint, optional(connector, "aws_access_key_id") or "")


def _aws_credential(
    connector: Connector,
    resource_type: str,
    rid: str,
    session: AwsCredentials,
    policy: SessionPolicy,
    now: datetime,
) -> ClientCredential:
    config: dict[str, Value] = {
        "region": region_of(connector),
        "aws_access_key_id": session.access_key_id,
        "aws_secret_access_key": session.secret_access_key,
    }
    secrets = {"aws_secret_access_key"}
    if session.session_token is not None:
        config["aws_session_token"] = session.session_token
        secrets.add("aws_session_token")
    endpoint = optional(connector, "endpoint_url")
    if endpoint is not None:
        config["endpoint_url"] = endpoint
    return ClientCredential(
        connector_type="aws",
        auth_method=AUTH_STS_TOKEN if session.session_token is not None else AUTH_SECRET_KEY,
        resource_type=resource_type,
        resource_id=rid,
        config=config,
        secret_names=frozenset(secrets),
        expires_at=session.expires_at,
        session_policy=policy.audit_text,
        # A session's declared issue (None for stored or borrowed keys handed through,
        # whose lifetime nobody declared); long-lived keys: when they were handed out.
        issued_at=session.issued_at if session.expires_at is not None else now,
    )


def _issued_at(
    expires_at: datetime | None, session: AwsCredentials, now: datetime
) -> datetime | None:
    """The declared issue of a credential made now from ``session``: the session's own
    when the session's expiry is the credential's (it then lives as long as the session),
    else now (an EKS token or ECR password minted by this request)."""
    if session.expires_at is not None and expires_at == session.expires_at:
        return session.issued_at
    return now


def _earliest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None
