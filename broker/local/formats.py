"""The wire formats unmodified clients expect, built from a client credential.

Pure functions: the helper endpoint renders these so the helper processes
stay thin (they print what the daemon returns).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from broker.errors import FailedPrecondition, InvalidArgument
from broker.model import ClientCredential

#: kubectl applies no skew of its own: tell it the token dies a minute early.
KUBECTL_EXPIRY_MARGIN = timedelta(seconds=60)
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
#: Without KUBERNETES_EXEC_INFO, answer what the reference plugins answer
#: (gke-gcloud-auth-plugin, aws-iam-authenticator): v1beta1, which every kubectl
#: since 1.11 reads.
DEFAULT_EXEC_API_VERSION = "client.authentication.k8s.io/v1beta1"


def rfc3339(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def exec_credential(cred: ClientCredential, api_version: str) -> dict[str, Any]:
    """A kubectl ``ExecCredential`` for a kubernetes client credential."""
    if api_version not in EXEC_API_VERSIONS:
        raise InvalidArgument(
            f"unsupported ExecCredential apiVersion '{api_version}' "
            f"(supported: {', '.join(EXEC_API_VERSIONS)})",
            field="api_version",
        )
    if cred.connector_type != "kubernetes":
        raise InvalidArgument(
            f"resource {cred.resource_type} '{cred.resource_id}' does not yield a Kubernetes "
            "credential",
            field="resource_type",
        )
    status: dict[str, Any] = {}
    config = cred.config
    if config.get("token"):
        status["token"] = str(config["token"])
    if config.get("client_certificate") and config.get("client_key"):
        status["clientCertificateData"] = str(config["client_certificate"])
        status["clientKeyData"] = str(config["client_key"])
    if not status:
        raise InvalidArgument(
            f"the credential for cluster '{cred.resource_id}' is a username/password pair, "
            "which kubectl exec plugins cannot return; use a token or client certificate",
            field="auth_method",
        )
    if cred.expires_at is not None:
        status["expirationTimestamp"] = rfc3339(cred.expires_at - KUBECTL_EXPIRY_MARGIN)
    # `spec` echoed as the reference plugins do: this plugin never prompts.
    return {
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": False},
        "status": status,
    }


def credential_process(cred: ClientCredential) -> dict[str, Any]:
    """The AWS SDK ``credential_process`` (Version 1) document."""
    config = cred.config
    if cred.connector_type != "aws" or "aws_access_key_id" not in config:
        raise InvalidArgument(
            f"resource {cred.resource_type} '{cred.resource_id}' does not yield AWS keys",
            field="resource_type",
        )
    out: dict[str, Any] = {
        "Version": 1,
        "AccessKeyId": config["aws_access_key_id"],
        "SecretAccessKey": config["aws_secret_access_key"],
    }
    if config.get("aws_session_token"):
        out["SessionToken"] = config["aws_session_token"]
    if cred.expires_at is not None:
        out["Expiration"] = rfc3339(cred.expires_at)
    return out


def container_credentials(cred: ClientCredential) -> dict[str, Any]:
    """The container credentials endpoint document (ECS / EKS pod identity shape).

    Every AWS SDK needs all four fields (botocore: ``KeyError: 'Expiration'``), so
    temporary keys without a token or an expiry are refused, never sent half-made.
    """
    doc = credential_process(cred)
    missing = [
        what
        for what, name in (("session token", "SessionToken"), ("expiry", "Expiration"))
        if name not in doc
    ]
    if missing:
        raise FailedPrecondition(
            f"the AWS keys for {cred.resource_type} '{cred.resource_id}' have no "
            f"{' and no '.join(missing)}: the container endpoint hands SDKs only temporary "
            "keys with an expiry (use a method that mints sessions, e.g. secret-key, "
            "session-token or iam-role; implicit auth with the daemon's own temporary keys "
            "needs role_arn)"
        )
    return {
        "AccessKeyId": doc["AccessKeyId"],
        "SecretAccessKey": doc["SecretAccessKey"],
        "Token": doc["SessionToken"],
        "Expiration": doc["Expiration"],
    }


def docker_secret(cred: ClientCredential, server_url: str) -> dict[str, str]:
    """The docker credential helper ``get`` answer."""
    if cred.connector_type != "docker":
        raise InvalidArgument(
            f"resource {cred.resource_type} '{cred.resource_id}' does not yield registry "
            "credentials",
            field="resource_type",
        )
    return {
        "ServerURL": server_url,
        "Username": str(cred.config.get("username", "")),
        "Secret": str(cred.config.get("password", "")),
    }
