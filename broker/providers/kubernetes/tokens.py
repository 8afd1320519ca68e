"""Minting bound service account tokens with the TokenRequest API.

``POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`` with the connector's
bootstrap credential returns a fresh token signed by the cluster, for the
requested audiences and (at most) the requested lifetime. The expiry handed
out is the one the answer's ``status.expirationTimestamp`` states: a cluster
may cap the lifetime (``--service-account-max-token-expiration``), and the
token dies when the server says, not when we asked.

The request goes through :func:`broker.providers.kubernetes.client.send`
(aiohttp), like verification; see that module for TLS, proxies and retries.
A 403 becomes :class:`MissingRbacPermission`, which names the RBAC rule the
bootstrap identity lacks, so callers act on the type, never on text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.errors import (
    BrokerError,
    CredentialsRejected,
    NotFound,
    PermissionDenied,
    UpstreamError,
)
from broker.providers.http import NETWORK, Transport
from broker.providers.kubernetes.client import quoted_message, send, status_error
from broker.providers.kubernetes.settings import ClusterSettings

#: The RBAC rule TokenRequest needs (core API group).
VERB = "create"
RESOURCE = "serviceaccounts/token"
#: Bound on a token: a JWT of a few claims is < 2 KiB; anything bigger is not one.
_MAX_TOKEN = 16 * 1024


class MissingRbacPermission(PermissionDenied):
    """The bootstrap identity may not ``create`` ``serviceaccounts/token`` on the account."""

    def __init__(
        self, message: str, *, namespace: str, name: str, verb: str = VERB, resource: str = RESOURCE
    ) -> None:
        super().__init__(message, field="service_account", retryable=False)
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        self.name = name


@dataclass(frozen=True)
class MintedToken:
    """A token the cluster minted, with the expiry its TokenRequest status states."""

    token: str = field(repr=False)
    expires_at: datetime
    #: The audiences the cluster bound it to (its answer's spec.audiences).
    audiences: tuple[str, ...] = ()


def token_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"


def request_body(seconds: int, audiences: tuple[str, ...]) -> dict[str, Any]:
    """The TokenRequest object; no audiences: the API server's own (Kubernetes' default)."""
    spec: dict[str, Any] = {"expirationSeconds": seconds}
    if audiences:
        spec["audiences"] = list(audiences)
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}


def _account(settings: ClusterSettings) -> tuple[str, str]:
    assert settings.service_account is not None, "service-account-token settings only"
    return settings.service_account


def _refusal(
    status: int, reason: str | None, body: bytes, settings: ClusterSettings
) -> BrokerError:
    """A typed error for a refused TokenRequest."""
    namespace, name = _account(settings)
    where = f"cluster '{settings.cluster_name}' at {settings.server}"
    said = quoted_message(body, settings)
    said = f" The server said: {said}" if said else ""
    if status == 403:
        return MissingRbacPermission(
            f"{where} refused to mint a token for service account {namespace}/{name} "
            f"(HTTP 403): the connector's bootstrap identity lacks the RBAC permission "
            f"'{VERB}' on '{RESOURCE}' for {namespace}/{name}. Grant it with a Role in "
            f"namespace '{namespace}' (apiGroups: [\"\"], resources: [{RESOURCE}], "
            f"verbs: [{VERB}], resourceNames: [{name}]) bound to that identity.{said}",
            namespace=namespace,
            name=name,
        )
    if status == 401:
        return CredentialsRejected(
            f"{where} refused the connector's bootstrap credential (HTTP 401) when minting a "
            f"token for service account {namespace}/{name}.{said}"
        )
    if status == 404:
        return NotFound(
            f"{where} has no service account {namespace}/{name} (HTTP 404 to TokenRequest): "
            f"check attribute 'service_account'.{said}",
            field="service_account",
        )
    return status_error(status, reason, body, settings, token_path(namespace, name), "POST")


def _stamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else None


def parse_answer(body: bytes, settings: ClusterSettings) -> MintedToken:
    """The token and expiry of a TokenRequest answer, or UpstreamError (never quoting it:
    a half-valid answer may still carry a token)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    status = doc.get("status") if isinstance(doc, dict) else None
    token = status.get("token") if isinstance(status, dict) else None
    expires_at = _stamp(status.get("expirationTimestamp")) if isinstance(status, dict) else None
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN or expires_at is None:
        raise UpstreamError(
            f"cluster '{settings.cluster_name}' at {settings.server} answered the TokenRequest "
            "without a token and an RFC 3339 status.expirationTimestamp",
            retryable=False,
        )
    spec = doc.get("spec") if isinstance(doc, dict) else None
    granted = spec.get("audiences") if isinstance(spec, dict) else None
    audiences = tuple(a for a in granted if isinstance(a, str)) if isinstance(granted, list) else ()
    return MintedToken(token=token, expires_at=expires_at.astimezone(UTC), audiences=audiences)


async def request_token(
    settings: ClusterSettings,
    seconds: int,
    request_timeout: float,
    *,
    now: datetime,
    transport: Transport = NETWORK,
    env: Mapping[str, str] | None = None,
) -> MintedToken:
    """Mint one token for the settings' service account, valid for at most ``seconds``."""
    namespace, name = _account(settings)
    status, reason, body = await send(
        settings,
        "POST",
        token_path(namespace, name),
        request_timeout,
        body=request_body(seconds, settings.audiences),
        transport=transport,
        env=env,
    )
    if status >= 400:
        raise _refusal(status, reason, body, settings)
    minted = parse_answer(body, settings)
    if minted.expires_at <= now:
        raise UpstreamError(
            f"cluster '{settings.cluster_name}' at {settings.server} minted a token for "
            f"{namespace}/{name} that expired already ({minted.expires_at.isoformat()}); is "
            "the daemon's clock or the cluster's wrong?",
            retryable=True,
        )
    return minted
