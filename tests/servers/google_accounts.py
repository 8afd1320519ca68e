"""Test Google identities: service account keys, authorized_user and external_account files.

Each object renders the JSON file Google tools write, with the token endpoint
pointing at the local test server (:mod:`tests.servers.google`), which keeps
the public halves and secrets to check what clients send.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

#: 2048 bits: PyJWT warns about shorter RSA keys (and warnings are errors here).
RSA_BITS = 2048


def new_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh key: ~0.4 s here, so only for tests that need a key nobody else has."""
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


@cache
def shared_rsa_key() -> rsa.RSAPrivateKey:
    """One key reused by test accounts (the server tells them apart by email)."""
    return new_rsa_key()


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class ServiceAccountKey:
    """A service account and one RSA key of it."""

    email: str
    project_id: str
    token_uri: str
    key: rsa.RSAPrivateKey = field(repr=False)
    key_id: str = field(default_factory=lambda: secrets.token_hex(20))

    @cached_property
    def private_key_pem(self) -> str:
        return private_pem(self.key)

    def info(self) -> dict[str, str]:
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.key_id,
            "private_key": self.private_key_pem,
            "client_email": self.email,
            "client_id": str(int(self.key_id[:12], 16)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        }

    def json(self) -> str:
        return json.dumps(self.info())

    def write(self, path: Path) -> Path:
        return _write(path, self.info())


@dataclass(frozen=True)
class UserAccount:
    """A gcloud ``authorized_user`` login: OAuth client plus refresh token."""

    email: str
    token_uri: str
    client_id: str = field(default_factory=lambda: f"{secrets.token_hex(6)}.apps.test")
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    refresh_token: str = field(
        default_factory=lambda: "1//" + secrets.token_urlsafe(32), repr=False
    )
    quota_project_id: str | None = None
    #: Logged in with the openid scope (as gcloud does): refreshes carry an id_token.
    openid: bool = True

    def info(self) -> dict[str, str]:
        doc = {
            "type": "authorized_user",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "refresh_token": self.refresh_token,
            "token_uri": self.token_uri,
            "account": "",
            "universe_domain": "googleapis.com",
        }
        if self.quota_project_id:
            doc["quota_project_id"] = self.quota_project_id
        return doc

    def json(self) -> str:
        return json.dumps(self.info())

    def write(self, path: Path) -> Path:
        return _write(path, self.info())


@dataclass(frozen=True)
class ExternalAccount:
    """A workload identity pool subject: its subject token is exchanged at the test STS."""

    principal: str
    audience: str
    sts_url: str
    subject_token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    impersonation_url: str | None = None

    def info(self, subject_token_file: Path) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": "external_account",
            "audience": self.audience,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": self.sts_url,
            "credential_source": {"file": str(subject_token_file)},
        }
        if self.impersonation_url:
            doc["service_account_impersonation_url"] = self.impersonation_url
        return doc

    def json(self, subject_token_file: Path) -> str:
        subject_token_file.write_text(self.subject_token)
        return json.dumps(self.info(subject_token_file))
