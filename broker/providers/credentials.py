"""Client credentials of another connector type that cloud providers hand out.

A cloud connector serves its container registries as a ``docker`` login and its managed
clusters as a ``kubernetes`` bearer token; every provider must shape these the same way,
because the docker and kubectl helpers and the file outputs read them by those keys.
"""

from __future__ import annotations

from datetime import datetime

from broker.model import ClientCredential


def docker_login(
    resource_type: str,
    resource_id: str,
    *,
    registry: str,
    username: str,
    password: str,
    expires_at: datetime | None,
    issued_at: datetime | None,
    session_policy: str | None = None,
) -> ClientCredential:
    """A ``docker`` ``password`` credential: what ``docker login`` takes for ``registry``."""
    return ClientCredential(
        connector_type="docker",
        auth_method="password",
        resource_type=resource_type,
        resource_id=resource_id,
        config={"username": username, "password": password, "registry": registry},
        secret_names=frozenset({"password"}),
        expires_at=expires_at,
        session_policy=session_policy,
        issued_at=issued_at,
    )


def kubernetes_token(
    resource_type: str,
    resource_id: str,
    *,
    server: str,
    certificate_authority: str,
    cluster_name: str,
    token: str,
    expires_at: datetime | None,
    issued_at: datetime | None,
    session_policy: str | None = None,
) -> ClientCredential:
    """A ``kubernetes`` ``token`` credential: the API server, its CA and a bearer token."""
    return ClientCredential(
        connector_type="kubernetes",
        auth_method="token",
        resource_type=resource_type,
        resource_id=resource_id,
        config={
            "server": server,
            "certificate_authority": certificate_authority,
            "cluster_name": cluster_name,
            "token": token,
        },
        secret_names=frozenset({"token"}),
        expires_at=expires_at,
        session_policy=session_policy,
        issued_at=issued_at,
    )
