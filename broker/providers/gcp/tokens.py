"""Getting Google access tokens: from key files, the metadata server, and by impersonation.

Key files and the metadata server go through gcloud-aio-auth's ``Token``,
but through ``Token.refresh`` directly: its ``get()`` retries five times
with up to a minute of backoff, while the broker's cache owns retries and
backoff, so one call here is one upstream attempt bounded by the request
timeout. A new ``Token`` per call is cheap (the cache single-flights mints).

Impersonation calls the IAM Credentials ``generateAccessToken`` API itself,
because the library takes the expiry from the *source* token and sends a
fixed lifetime; the broker sends the connector's lifetime and reads the real
``expireTime`` back. User accounts use the refresh grant directly too: its
answer's ``id_token`` names the user (the library drops it).

Each token says whose it is when the credentials or the upstream tell
(``account``: a service account key's ``client_email``, an impersonated
target, the email of a user's ``id_token``, the metadata server's account);
the GCE metadata endpoint reports it as the service account email.

ID tokens (OpenID Connect, for a chosen audience) come from the token
endpoint for service account keys (a JWT-bearer grant with
``target_audience``, as google-auth's ``IDTokenCredentials`` do), from IAM
Credentials ``generateIdToken`` for impersonated accounts, or from the
metadata server's ``identity`` path.

No token, refresh token, client secret or assertion ever reaches a message.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import jwt
from gcloud.aio.auth import Token

from broker.errors import BrokerError, CredentialsRejected, PermissionDenied, UpstreamError
from broker.providers.gcp.api import api_error, google_message
from broker.providers.gcp.keys import AUTHORIZED_USER, SERVICE_ACCOUNT, KeyFile
from broker.providers.http import TRANSPORT_ERRORS, transport_error
from broker.variants import DEFAULT_SCOPES

_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: What the JWT-bearer assertion for an ID token asks for (Google's maximum).
ASSERTION_LIFETIME = 3600
_METADATA_HEADERS = {"Metadata-Flavor": "Google"}


@dataclass(frozen=True)
class AccessToken:
    """A bearer token, when it dies, and whose it is (for messages, never secret)."""

    value: str = field(repr=False)
    expires_at: datetime
    principal: str
    #: The email of the identity the token acts as, where known (None: nobody said).
    account: str | None = None


@dataclass(frozen=True)
class IdToken:
    """An OpenID Connect ID token (a JWT), when it dies, and whose email it carries."""

    value: str = field(repr=False)
    expires_at: datetime
    account: str | None = None
    #: ``exp - iat`` as the token declares it (None: no ``iat``).
    lifetime: timedelta | None = None


def _token_data(key: KeyFile) -> dict[str, Any]:
    data = dict(key.data)
    # The broker impersonates itself (to send the lifetime and read expireTime).
    data.pop("service_account_impersonation_url", None)
    return data


async def key_token(
    session: aiohttp.ClientSession,
    key: KeyFile,
    *,
    now: datetime,
    request_timeout: float,
    scopes: Sequence[str] = DEFAULT_SCOPES,
) -> AccessToken:
    """One access token for a service account, authorized_user or external_account file."""
    if key.type == AUTHORIZED_USER:
        return await user_token(
            session, key, now=now, request_timeout=request_timeout, scopes=scopes
        )
    token = Token(
        service_file=io.StringIO(json.dumps(_token_data(key))),
        session=session,  # type: ignore[arg-type]  # typed as requests' Session
        scopes=list(scopes),
    )
    if token.token_type.value != key.type:  # the library fell back to something else
        raise UpstreamError(f"cannot use the {key.type} file of attribute '{key.field}'")
    if key.private_key is not None:
        # PyJWT signs with a key object as well as PEM; the loaded one spares a ~70 ms
        # re-parse on the event loop for every token.
        token.service_data["private_key"] = key.private_key
    got = await _refresh(
        token, key.token_uri, key.principal, now=now, request_timeout=request_timeout
    )
    if key.type == SERVICE_ACCOUNT:
        return replace(got, account=str(key.data["client_email"]))
    return got


async def user_token(
    session: aiohttp.ClientSession,
    key: KeyFile,
    *,
    now: datetime,
    request_timeout: float,
    scopes: Sequence[str] = DEFAULT_SCOPES,
) -> AccessToken:
    """An authorized_user's access token by the refresh grant.

    The plain token asks for no scope (it gets what the login granted, as
    gcloud-aio-auth does); other ``scopes`` narrow it. Logins with the
    openid/email scopes (gcloud's) get an ``id_token`` too, whose email is
    the token's account.
    """
    form = {
        "grant_type": "refresh_token",
        "client_id": str(key.data["client_id"]),
        "client_secret": str(key.data["client_secret"]),
        "refresh_token": str(key.data["refresh_token"]),
    }
    if tuple(scopes) != DEFAULT_SCOPES:
        form["scope"] = " ".join(scopes)
    uri = key.token_uri
    doc = await _post_form(session, uri, form, key.principal, request_timeout)
    value, expires_in = doc.get("access_token"), _seconds(doc.get("expires_in"))
    if not isinstance(value, str) or not value or expires_in is None:
        raise UpstreamError(
            f"token endpoint {uri} answered without a usable access token for {key.principal}",
            retryable=False,
        )
    account = _email(doc.get("id_token"))
    return AccessToken(value, now + timedelta(seconds=expires_in), key.principal, account)


async def key_id_token(
    session: aiohttp.ClientSession,
    key: KeyFile,
    audience: str,
    *,
    now: datetime,
    request_timeout: float,
) -> IdToken:
    """A service account key's ID token for ``audience``: the token endpoint's
    ``id_token`` for a JWT-bearer assertion carrying ``target_audience``."""
    assert key.type == SERVICE_ACCOUNT and key.private_key is not None
    email = str(key.data["client_email"])
    issued = int(time.time())  # the upstream checks the assertion against real time
    claims = {
        "iss": email,
        "sub": email,
        "aud": key.token_uri,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
        "target_audience": audience,
    }
    kid = key.data.get("private_key_id")
    headers = {"kid": str(kid)} if kid else None
    assertion = jwt.encode(claims, key.private_key, algorithm="RS256", headers=headers)
    form = {"grant_type": JWT_BEARER, "assertion": assertion}
    doc = await _post_form(session, key.token_uri, form, key.principal, request_timeout)
    where = f"token endpoint {key.token_uri}"
    return _id_token(doc.get("id_token"), now, where, key.principal, fallback_account=email)


async def metadata_token(
    session: aiohttp.ClientSession,
    host: str,
    *,
    now: datetime,
    request_timeout: float,
    scopes: Sequence[str] = DEFAULT_SCOPES,
) -> AccessToken:
    """The default service account's token from the GCE metadata server at ``host``,
    with its email (a second, local request)."""
    token = Token(
        service_file=io.StringIO("{}"),
        session=session,  # type: ignore[arg-type]  # typed as requests' Session
        scopes=list(scopes),
    )
    uri = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
    if tuple(scopes) != DEFAULT_SCOPES:
        uri += "?" + urlencode({"scopes": ",".join(scopes)})
    token.token_uri = uri
    got = await _refresh(
        token,
        uri,
        _METADATA_ACCOUNT,
        now=now,
        request_timeout=request_timeout,
    )
    email = await _metadata_get(session, host, "email", {}, request_timeout)
    return replace(got, account=email.strip() or None)


async def metadata_id_token(
    session: aiohttp.ClientSession,
    host: str,
    audience: str,
    *,
    include_email: bool,
    now: datetime,
    request_timeout: float,
) -> IdToken:
    """The metadata server's ID token for ``audience`` (``format=full`` with the email)."""
    params = {"audience": audience, "format": "full" if include_email else "standard"}
    value = await _metadata_get(session, host, "identity", params, request_timeout)
    return _id_token(value.strip(), now, f"metadata server {host}", _METADATA_ACCOUNT)


_METADATA_ACCOUNT = "the metadata server's service account"


async def _metadata_get(
    session: aiohttp.ClientSession,
    host: str,
    leaf: str,
    params: Mapping[str, str],
    request_timeout: float,
) -> str:
    url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/{leaf}"
    try:
        async with session.get(url, params=params, headers=_METADATA_HEADERS) as resp:
            status, body = resp.status, await resp.read()
    except TRANSPORT_ERRORS as exc:
        raise transport_error(
            exc, service="GCE metadata server", url=url, timeout=request_timeout
        ) from None
    if status >= 400:
        raise _token_status_error(status, body, url, _METADATA_ACCOUNT)
    return body.decode(errors="replace")


async def _post_form(
    session: aiohttp.ClientSession,
    uri: str,
    form: Mapping[str, str],
    principal: str,
    request_timeout: float,
) -> dict[str, Any]:
    """POST an OAuth2 token request; the JSON answer, or a typed error naming ``principal``."""
    try:
        async with session.post(uri, data=dict(form)) as resp:
            status, body = resp.status, await resp.read()
    except TRANSPORT_ERRORS as exc:
        raise transport_error(
            exc, service="Google token endpoint", url=uri, timeout=request_timeout
        ) from None
    if status >= 400:
        raise _token_status_error(status, body, uri, principal)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise UpstreamError(
            f"token endpoint {uri} answered without JSON for {principal}", retryable=True
        )
    return doc


def _seconds(value: object) -> int | None:
    """A positive ``expires_in`` (Google sends a number; some servers send it as text)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = int(value)
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified: it came straight from Google over the connection
    that authenticated the request (OpenID Connect Core 3.1.3.7), and only its expiry
    and email are read. ValueError if it is no JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("not a JWT") from None
    if not isinstance(claims, dict):
        raise ValueError("not a JWT")
    return claims


def _email(id_token: object) -> str | None:
    """The ``email`` claim of an ID token, if it is one and has it."""
    if not isinstance(id_token, str):
        return None
    try:
        email = jwt_claims(id_token).get("email")
    except ValueError:
        return None
    return email if isinstance(email, str) and "@" in email else None


def _id_token(
    value: object, now: datetime, where: str, principal: str, *, fallback_account: str | None = None
) -> IdToken:
    """Check an ID token and place its expiry on the daemon's clock (``exp`` is wall time)."""
    try:
        if not isinstance(value, str) or not value:
            raise ValueError("missing")
        claims = jwt_claims(value)
        remaining = float(claims["exp"]) - time.time()
    except (KeyError, TypeError, ValueError):
        raise UpstreamError(
            f"{where} answered without a usable ID token for {principal}", retryable=False
        ) from None
    if remaining <= 0:
        raise UpstreamError(f"{where} returned an expired ID token for {principal}")
    email = claims.get("email")
    account = email if isinstance(email, str) and "@" in email else fallback_account
    lifetime = None
    issued = claims.get("iat")
    if isinstance(issued, int | float) and not isinstance(issued, bool):
        declared = float(claims["exp"]) - issued
        lifetime = timedelta(seconds=declared) if declared > 0 else None
    return IdToken(value, now + timedelta(seconds=remaining), account, lifetime)


async def _refresh(
    token: Token, uri: str, principal: str, *, now: datetime, request_timeout: float
) -> AccessToken:
    try:
        resp = await token.refresh(timeout=max(1, math.ceil(request_timeout)))
    except aiohttp.ContentTypeError:
        raise UpstreamError(
            f"token endpoint {uri} answered without JSON for {principal}", retryable=True
        ) from None
    except aiohttp.ClientResponseError as exc:
        raise _token_error(exc, uri, principal) from None
    except TRANSPORT_ERRORS as exc:
        raise transport_error(
            exc, service="Google token endpoint", url=uri, timeout=request_timeout
        ) from None
    except (KeyError, TypeError, ValueError):
        # No access_token / expires_in in the answer; the library's text may quote it.
        raise UpstreamError(
            f"token endpoint {uri} answered without a usable access token for {principal}",
            retryable=False,
        ) from None
    if not resp.value or resp.expires_in <= 0:
        raise UpstreamError(f"token endpoint {uri} returned an empty token for {principal}")
    return AccessToken(resp.value, now + timedelta(seconds=resp.expires_in), principal)


def _token_error(exc: aiohttp.ClientResponseError, uri: str, principal: str) -> BrokerError:
    # gcloud-aio-auth puts "<reason>: <body>" in the message.
    return _token_status_error(exc.status, exc.message.partition(": ")[2].encode(), uri, principal)


def _token_status_error(status: int, body: bytes, uri: str, principal: str) -> BrokerError:
    message, _, _ = google_message(body)
    said = f": {message}" if message else ""
    if status in (400, 401, 403):
        return CredentialsRejected(
            f"token endpoint {uri} rejected the credentials of {principal} (HTTP {status}){said}"
        )
    return UpstreamError(
        f"token endpoint {uri} failed for {principal} (HTTP {status}){said}",
        retryable=status == 429 or status >= 500,
    )


async def impersonate(
    session: aiohttp.ClientSession,
    base_url: str,
    source: AccessToken,
    target: str,
    lifetime: int,
    *,
    request_timeout: float,
    scopes: Sequence[str] = DEFAULT_SCOPES,
) -> AccessToken:
    """A token of ``target`` for ``lifetime`` seconds via IAM Credentials generateAccessToken."""
    payload = {"scope": list(scopes), "lifetime": f"{lifetime}s"}
    url, body = await _iam_call(
        session,
        base_url,
        source,
        target,
        "generateAccessToken",
        payload,
        role="roles/iam.serviceAccountTokenCreator",
        request_timeout=request_timeout,
    )
    try:
        doc = json.loads(body)
        value = str(doc["accessToken"])
        expires_at = parse_rfc3339(str(doc["expireTime"]))
    except (ValueError, KeyError, TypeError):
        raise UpstreamError(
            f"IAM Credentials API at {url} answered without accessToken/expireTime",
            retryable=False,
        ) from None
    return AccessToken(value, expires_at, target, target if "@" in target else None)


async def generate_id_token(
    session: aiohttp.ClientSession,
    base_url: str,
    source: AccessToken,
    target: str,
    audience: str,
    *,
    include_email: bool,
    now: datetime,
    request_timeout: float,
) -> IdToken:
    """An ID token of ``target`` for ``audience`` via IAM Credentials generateIdToken."""
    payload = {"audience": audience, "includeEmail": include_email}
    url, body = await _iam_call(
        session,
        base_url,
        source,
        target,
        "generateIdToken",
        payload,
        role="roles/iam.serviceAccountOpenIdTokenCreator",
        request_timeout=request_timeout,
    )
    try:
        value = json.loads(body)["token"]
    except (ValueError, KeyError, TypeError):
        value = None
    fallback = target if "@" in target else None
    return _id_token(value, now, f"IAM Credentials API at {url}", target, fallback_account=fallback)


async def _iam_call(
    session: aiohttp.ClientSession,
    base_url: str,
    source: AccessToken,
    target: str,
    method: str,
    payload: Mapping[str, Any],
    *,
    role: str,
    request_timeout: float,
) -> tuple[str, bytes]:
    """POST ``serviceAccounts/TARGET:METHOD`` as ``source``; the URL and the body of a 2xx."""
    url = f"{base_url}/v1/projects/-/serviceAccounts/{quote(target, safe='@')}:{method}"
    headers = {"Authorization": f"Bearer {source.value}"}
    try:
        async with session.post(url, json=dict(payload), headers=headers) as resp:
            status, body = resp.status, await resp.read()
    except TRANSPORT_ERRORS as exc:
        raise transport_error(
            exc, service="IAM Credentials API", url=url, timeout=request_timeout
        ) from None
    resource = f"service account '{target}'"
    if status >= 400:
        error = api_error(
            status, body, action=f"impersonate {target} as {source.principal}", resource=resource
        )
        if isinstance(error, PermissionDenied) and "lack permission" in error.message:
            error = PermissionDenied(
                f"{source.principal} may not impersonate {target}: {error.message} "
                f"(grant it {role} on the target)"
            )
        raise error
    return url, body


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 time as Google writes it (``Z`` or offset, up to nanoseconds)."""
    match = _RFC3339.match(text.strip())
    if not match:
        raise ValueError("not an RFC 3339 time")
    base, fraction, zone = match.groups()
    micros = (fraction or "").ljust(6, "0")[:6]
    parsed = datetime.fromisoformat(f"{base}.{micros}{'+00:00' if zone == 'Z' else zone}")
    return parsed.astimezone(UTC)
