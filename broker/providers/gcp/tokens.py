"""Getting Google access tokens: from key files, the metadata server, and by impersonation.

Key files and the metadata server go through gcloud-aio-auth's ``Token``,
but through ``Token.refresh`` directly: its ``get()`` retries five times
with up to a minute of backoff, while the broker's cache owns retries and
backoff, so one call here is one upstream attempt bounded by the request
timeout. A new ``Token`` per call is cheap (the cache single-flights mints).

Impersonation calls the IAM Credentials ``generateAccessToken`` API itself,
because the library takes the expiry from the *source* token and sends a
fixed lifetime; the broker sends the connector's lifetime and reads the real
``expireTime`` back.

No token, refresh token, client secret or assertion ever reaches a message.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
from gcloud.aio.auth import Token

from broker.errors import BrokerError, CredentialsRejected, PermissionDenied, UpstreamError
from broker.providers.gcp.api import api_error, google_message
from broker.providers.gcp.keys import KeyFile
from broker.providers.gcp.spec import CLOUD_PLATFORM_SCOPE
from broker.providers.http import TRANSPORT_ERRORS, transport_error

_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


@dataclass(frozen=True)
class AccessToken:
    """A bearer token, when it dies, and whose it is (for messages, never secret)."""

    value: str
    expires_at: datetime
    principal: str


def _token_data(key: KeyFile) -> dict[str, Any]:
    data = dict(key.data)
    # The broker impersonates itself (to send the lifetime and read expireTime).
    data.pop("service_account_impersonation_url", None)
    return data


async def key_token(
    session: aiohttp.ClientSession, key: KeyFile, *, now: datetime, request_timeout: float
) -> AccessToken:
    """One access token for a service account, authorized_user or external_account file."""
    token = Token(
        service_file=io.StringIO(json.dumps(_token_data(key))),
        session=session,  # type: ignore[arg-type]  # typed as requests' Session
        scopes=[CLOUD_PLATFORM_SCOPE],
    )
    if token.token_type.value != key.type:  # the library fell back to something else
        raise UpstreamError(f"cannot use the {key.type} file of attribute '{key.field}'")
    if key.private_key is not None:
        # PyJWT signs with a key object as well as PEM; the loaded one spares a ~70 ms
        # re-parse on the event loop for every token.
        token.service_data["private_key"] = key.private_key
    return await _refresh(
        token, key.token_uri, key.principal, now=now, request_timeout=request_timeout
    )


async def metadata_token(
    session: aiohttp.ClientSession, host: str, *, now: datetime, request_timeout: float
) -> AccessToken:
    """The default service account's token from the GCE metadata server at ``host``."""
    token = Token(
        service_file=io.StringIO("{}"),
        session=session,  # type: ignore[arg-type]  # typed as requests' Session
        scopes=[CLOUD_PLATFORM_SCOPE],
    )
    uri = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
    token.token_uri = uri
    return await _refresh(
        token,
        uri,
        "the metadata server's service account",
        now=now,
        request_timeout=request_timeout,
    )


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
    body = exc.message.partition(": ")[2].encode()
    message, _, _ = google_message(body)
    said = f": {message}" if message else ""
    status = exc.status
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
) -> AccessToken:
    """A token of ``target`` for ``lifetime`` seconds via IAM Credentials generateAccessToken."""
    url = f"{base_url}/v1/projects/-/serviceAccounts/{quote(target, safe='@')}:generateAccessToken"
    payload = {"scope": [CLOUD_PLATFORM_SCOPE], "lifetime": f"{lifetime}s"}
    headers = {"Authorization": f"Bearer {source.value}"}
    try:
        async with session.post(url, json=payload, headers=headers) as resp:
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
                "(grant it roles/iam.serviceAccountTokenCreator on the target)"
            )
        raise error
    try:
        doc = json.loads(body)
        value = str(doc["accessToken"])
        expires_at = parse_rfc3339(str(doc["expireTime"]))
    except (ValueError, KeyError, TypeError):
        raise UpstreamError(
            f"IAM Credentials API at {url} answered without accessToken/expireTime",
            retryable=False,
        ) from None
    return AccessToken(value, expires_at, target)


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 time as Google writes it (``Z`` or offset, up to nanoseconds)."""
    match = _RFC3339.match(text.strip())
    if not match:
        raise ValueError("not an RFC 3339 time")
    base, fraction, zone = match.groups()
    micros = (fraction or "").ljust(6, "0")[:6]
    parsed = datetime.fromisoformat(f"{base}.{micros}{'+00:00' if zone == 'Z' else zone}")
    return parsed.astimezone(UTC)
