"""Google credential files (service account keys, authorized_user, external_account), checked.

Key files are secrets: every error here names the attribute and what is wrong
(not JSON, wrong ``type``, missing keys, unusable private key) and never
echoes a value from the document. Checks run at register time, so a bad file
fails there instead of at the first token request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.errors import InvalidArgument
from broker.hosts import is_loopback

SERVICE_ACCOUNT = "service_account"
AUTHORIZED_USER = "authorized_user"
EXTERNAL_ACCOUNT = "external_account"

#: Where tokens are requested when a file names no token endpoint.
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"

#: Which auth method takes which file type (for "use auth method X" hints).
_METHOD_FOR_TYPE = {
    SERVICE_ACCOUNT: "service-account",
    AUTHORIZED_USER: "user-account",
    EXTERNAL_ACCOUNT: "external-account",
}
_REQUIRED = {
    SERVICE_ACCOUNT: ("client_email", "private_key"),
    AUTHORIZED_USER: ("client_id", "client_secret", "refresh_token"),
    EXTERNAL_ACCOUNT: ("audience", "subject_token_type", "token_url"),
}
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}$")
_UNIQUE_ID = re.compile(r"^[0-9]{1,30}$")
_IMPERSONATION_PATH = re.compile(r"/serviceAccounts/([^/:]+):generateAccessToken$")


@dataclass(frozen=True)
class KeyFile:
    """A checked credential file: its ``type``, parsed document and source attribute."""

    type: str
    #: The document; secret (private keys, refresh tokens), so never in ``repr``.
    data: Mapping[str, Any] = dc_field(repr=False)
    field: str
    #: A service account's key, loaded once: loading checks the RSA key (~70 ms of CPU),
    #: far too slow to repeat on every resource ID check or token request.
    private_key: rsa.RSAPrivateKey | None = dc_field(default=None, repr=False, compare=False)

    @property
    def project(self) -> str | None:
        """The project the file names, if any (a user account's quota project counts)."""
        for key in ("project_id", "quota_project_id", "workforce_pool_user_project"):
            value = self.data.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
        return None

    @property
    def principal(self) -> str:
        """Who the file authenticates, fit for messages (never a secret)."""
        if self.type == SERVICE_ACCOUNT:
            return str(self.data["client_email"])
        if self.type == AUTHORIZED_USER:
            return f"user account (client {self.data['client_id']})"
        return f"external account ({self.data['audience']})"

    @property
    def token_uri(self) -> str:
        key = "token_url" if self.type == EXTERNAL_ACCOUNT else "token_uri"
        return str(self.data.get(key) or DEFAULT_TOKEN_URI)

    @property
    def impersonation_target(self) -> str | None:
        """The service account an external_account file impersonates, if it names one."""
        url = self.data.get("service_account_impersonation_url")
        if not url:
            return None
        match = _IMPERSONATION_PATH.search(urlsplit(str(url)).path)
        assert match is not None  # checked by parse_key
        return unquote(match.group(1))


def parse_key(text: str, field: str, expected: str | None, *, label: str | None = None) -> KeyFile:
    """Parse and check one credential file of type ``expected`` (None: any supported type).

    Raise InvalidArgument naming the file; never echo a value from it.
    ``label`` names the file in messages (default: the attribute ``field``).
    Nothing is cached here (a cache keyed by the text would hold secrets for the
    life of the process): the provider remembers settings per connector object.
    """
    shown_as = label or f"attribute '{field}'"

    def bad(problem: str) -> InvalidArgument:
        return InvalidArgument(f"{shown_as} {problem}", field=field)

    try:
        data = json.loads(text)
    except (ValueError, TypeError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line is not None else ""
        raise bad(f"is not valid JSON{where}; is the key file truncated?") from None
    if not isinstance(data, dict):
        raise bad("is not a JSON object (a Google credential file is one)")
    kind = data.get("type")
    wanted = f"'{expected}'" if expected else ", ".join(_METHOD_FOR_TYPE)
    if not isinstance(kind, str) or not kind:
        raise bad(f"has no 'type' key; expected type {wanted}")
    if kind != expected and (expected is not None or kind not in _METHOD_FOR_TYPE):
        hint = _METHOD_FOR_TYPE.get(kind) if expected else None
        use = f" (use auth method '{hint}' for it)" if hint else ""
        shown = kind if len(kind) <= 40 else kind[:37] + "..."
        raise bad(f"has type '{shown}', expected {wanted}{use}")
    missing = [k for k in _REQUIRED[kind] if not (isinstance(data.get(k), str) and data[k])]
    if missing:
        raise bad(f"lacks required key(s) {', '.join(missing)} (each must be non-empty text)")
    private_key = None
    if kind == SERVICE_ACCOUNT:
        private_key = _check_service_account(data, bad)
    elif kind == EXTERNAL_ACCOUNT:
        _check_external_account(data, bad)
    uri_key = "token_url" if kind == EXTERNAL_ACCOUNT else "token_uri"
    if data.get(uri_key) is not None:
        check_endpoint(data[uri_key], f"{uri_key}", bad)
    return KeyFile(kind, MappingProxyType(data), field, private_key)


def _check_service_account(data: Mapping[str, Any], bad: Any) -> rsa.RSAPrivateKey:
    if not _EMAIL.match(data["client_email"]):
        raise bad("has a client_email that is not an email address")
    try:
        key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise bad("has a private_key that is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise bad("has a private_key that is not an RSA key (Google keys are RSA)")
    return key


def _check_external_account(data: Mapping[str, Any], bad: Any) -> None:
    source = data.get("credential_source")
    if not isinstance(source, dict):
        raise bad("lacks a credential_source object")
    if "executable" in source or str(source.get("environment_id", "")).startswith("aws"):
        raise bad("uses an executable or AWS credential_source, which is not supported")
    if not isinstance(source.get("file") or source.get("url"), str):
        raise bad("needs a credential_source with 'file' or 'url'")
    if isinstance(source.get("url"), str):
        check_endpoint(source["url"], "credential_source.url", bad)
    url = data.get("service_account_impersonation_url")
    if url is not None:
        if not isinstance(url, str):
            raise bad("has a service_account_impersonation_url that is not text")
        check_endpoint(url, "service_account_impersonation_url", bad)
        match = _IMPERSONATION_PATH.search(urlsplit(url).path)
        if not match or not is_principal(unquote(match.group(1))):
            raise bad(
                "has a service_account_impersonation_url that names no "
                "serviceAccounts/EMAIL:generateAccessToken"
            )


def check_endpoint(url: object, name: str, bad: Any) -> str:
    """An endpoint URL from a key file: https, or plain http on loopback only.

    Assertions and refresh tokens are bearer grants; they never cross a network in clear text.
    """
    if not isinstance(url, str):
        raise bad(f"has a {name} that is not text")
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host and is_loopback(host):
        return url
    raise bad(f"has a {name} that is not an https:// URL (plain http only on loopback)")


def is_principal(text: str) -> bool:
    """Whether ``text`` names a service account: an email or a numeric unique ID."""
    return bool(_EMAIL.match(text) or _UNIQUE_ID.match(text))


def check_principal(text: str, field: str = "target_principal") -> str:
    """A service account to impersonate, or InvalidArgument naming ``field``."""
    value = text.strip()
    if not is_principal(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidArgument(
            f"attribute '{field}' must be a service account email "
            f"(NAME@PROJECT.iam.gserviceaccount.com) or unique ID, got '{shown}'",
            field=field,
        )
    return value
