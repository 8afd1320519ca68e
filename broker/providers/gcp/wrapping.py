"""How a Google token or key becomes the client credential a consumer gets.

gcp-generic and gcs-bucket get a ``gcp`` credential (a token, or the key file
itself where ``generate_temporary_tokens=false``); registries get a docker
login (``oauth2accesstoken`` + token, or ``_json_key`` + key file).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from broker.errors import ConnectorExpired, FailedPrecondition
from broker.model import ClientCredential, Connector, Value
from broker.providers import credentials
from broker.providers.gcp import ids, tokens
from broker.providers.gcp.keys import SERVICE_ACCOUNT
from broker.providers.gcp.settings import KEY_ATTRIBUTES, GcpSettings
from broker.providers.gcp.spec import AUTH_TOKEN, CONNECTOR_TYPE, RT_GCS, RT_GENERIC, RT_REGISTRY

#: The docker user name Google registries take with an access token as password.
REGISTRY_TOKEN_USER = "oauth2accesstoken"
#: The docker user name Google registries take with a service account key as password.
REGISTRY_KEY_USER = "_json_key"


def token_credential(
    resource_type: str,
    canonical: str,
    token: tokens.AccessToken,
    settings: GcpSettings,
    issued: datetime | None,
    scopes: Sequence[str] | None = None,
) -> ClientCredential:
    """A ``gcp`` ``oauth2-token`` credential: the token, the project, and whose it is."""
    config: dict[str, Value] = {"token": token.value, "project_id": settings.project}
    if token.account:
        config["account"] = token.account
    if scopes is not None and settings.auth_method != AUTH_TOKEN:
        config["scopes"] = " ".join(scopes)
    return ClientCredential(
        connector_type=CONNECTOR_TYPE,
        auth_method=AUTH_TOKEN,
        resource_type=resource_type,
        resource_id=canonical,
        config=config,
        secret_names=frozenset({"token"}),
        expires_at=token.expires_at,
        issued_at=issued,
    )


def stored_token(connector: Connector, settings: GcpSettings, now: datetime) -> tokens.AccessToken:
    expires_at = connector.expires_at
    if expires_at is None:
        raise FailedPrecondition(
            f"connector '{connector.name}' stores an OAuth2 token without expires_at"
        )
    if expires_at <= now:
        raise ConnectorExpired(
            f"connector '{connector.name}' OAuth2 token expired at {expires_at.isoformat()}; "
            "update it with a fresh token"
        )
    assert settings.token is not None
    return tokens.AccessToken(settings.token, expires_at, f"connector '{connector.name}' token")


def docker_credential(
    canonical: str,
    host: str,
    username: str,
    password: str,
    expires_at: datetime | None,
    issued: datetime | None,
) -> ClientCredential:
    return credentials.docker_login(
        RT_REGISTRY,
        canonical,
        registry=host,
        username=username,
        password=password,
        expires_at=expires_at,
        issued_at=issued,
    )


def key_credential(
    connector: Connector,
    settings: GcpSettings,
    resource_type: str,
    canonical: str,
    issued: datetime,
) -> ClientCredential | None:
    """The key file itself as client credential, where a consumer can use one."""
    key = settings.key
    if key is None or connector.auth_method not in KEY_ATTRIBUTES:
        return None
    field = KEY_ATTRIBUTES[connector.auth_method][0]
    text = json.dumps(dict(key.data))
    if resource_type in (RT_GENERIC, RT_GCS):
        config: dict[str, Value] = {field: text, "project_id": settings.project}
        return ClientCredential(
            connector_type=CONNECTOR_TYPE,
            auth_method=connector.auth_method,
            resource_type=resource_type,
            resource_id=canonical,
            config=config,
            secret_names=frozenset({field}),
            expires_at=None,
            issued_at=issued,
        )
    if resource_type == RT_REGISTRY and key.type == SERVICE_ACCOUNT:
        host = ids.parse_registry(canonical, settings.project).host
        return docker_credential(canonical, host, REGISTRY_KEY_USER, text, None, issued)
    return None
