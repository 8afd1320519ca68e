"""Azure Resource Manager and ACR token calls over the provider's aiohttp session.

Why plain REST (not azure-mgmt-containerservice / -containerregistry /
-storage): the four listings and one POST the broker needs are a few lines
each here, while the three management packages weigh 13 MB and import in
~0.16 + 0.12 + 0.20 s (``python -X importtime``, on top of azure-identity),
and each would wrap the same session in another pipeline. Paging follows
``nextLink`` (bounded); ARM errors become typed ones that name the call.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml

from broker.attributes import normalize_pem
from broker.errors import (
    BrokerError,
    CredentialsRejected,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    UpstreamError,
)
from broker.providers.http import TRANSPORT_ERRORS, transport_error

#: Bound on pages followed in one listing (a server repeating links must not loop forever).
MAX_PAGES = 200
_MESSAGE_LIMIT = 300

API_SUBSCRIPTIONS = "2022-12-01"
API_STORAGE = "2023-05-01"
API_AKS = "2024-05-01"
API_ACR = "2023-07-01"


class Arm:
    """ARM calls with one bearer token."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, token: str, timeout: float
    ) -> None:
        self._session = session
        self._base = base
        self._token = token
        self._timeout = timeout

    async def _call(self, method: str, url: str, action: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        try:
            async with self._session.request(method, url, headers=headers) as response:
                body = await response.text()
                status = response.status
        except TRANSPORT_ERRORS as exc:
            raise transport_error(
                exc, service="Azure Resource Manager", url=_where(url), timeout=self._timeout
            ) from None
        if status >= 400:
            raise arm_error(status, body, action)
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            raise UpstreamError(f"ARM answered {action} with non-JSON", retryable=True) from None
        if not isinstance(doc, dict):
            raise UpstreamError(f"ARM answered {action} with a non-object", retryable=True)
        return doc

    async def pages(self, path: str, api: str, action: str) -> AsyncIterator[dict[str, Any]]:
        url: str | None = f"{self._base}{path}?api-version={api}"
        for _ in range(MAX_PAGES):
            if url is None:
                return
            doc = await self._call("GET", url, action)
            for item in doc.get("value") or ():
                if isinstance(item, dict):
                    yield item
            link = doc.get("nextLink")
            url = link if isinstance(link, str) and link else None
        raise UpstreamError(f"ARM kept paging {action} past {MAX_PAGES} pages", retryable=False)

    async def post(self, path: str, api: str, action: str, query: str = "") -> dict[str, Any]:
        return await self._call("POST", f"{self._base}{path}?api-version={api}{query}", action)


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def arm_error(status: int, body: str, action: str) -> BrokerError:
    """ARM's ``{"error": {"code", "message"}}`` as a typed error naming the call."""
    code, message = "", body[:_MESSAGE_LIMIT]
    try:
        doc = json.loads(body)
        error = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code") or "")
            message = str(error.get("message") or "")[:_MESSAGE_LIMIT]
    except ValueError:
        pass
    text = f"cannot {action}: ARM answered {status}" + (f" {code}" if code else "")
    text += f": {message}" if message else ""
    if status in (409, 400):
        return FailedPrecondition(text)
    return _by_status(status, text)


def _by_status(status: int, text: str) -> BrokerError:
    """The error type an HTTP failure status means, for ARM and ACR alike: the credential
    refused, not allowed, not there, or an upstream failure (retryable if 5xx or 429)."""
    if status == 401:
        return CredentialsRejected(text)
    if status == 403:
        return PermissionDenied(text)
    if status == 404:
        return NotFound(text)
    return UpstreamError(text, retryable=status >= 500 or status == 429)


async def list_subscriptions(arm: Arm) -> list[str]:
    found = [
        str(s["subscriptionId"]).lower()
        async for s in arm.pages("/subscriptions", API_SUBSCRIPTIONS, "list subscriptions")
        if isinstance(s.get("subscriptionId"), str)
    ]
    return sorted(found)


async def enabled_subscriptions(arm: Arm) -> list[str]:
    """The subscriptions the principal sees whose ``state`` is ``Enabled``, as ``az account
    list`` shows by default (Disabled, Warned, PastDue and Deleted ones are left out)."""
    found = {
        str(s["subscriptionId"]).lower()
        async for s in arm.pages("/subscriptions", API_SUBSCRIPTIONS, "list subscriptions")
        if isinstance(s.get("subscriptionId"), str) and s.get("state") == "Enabled"
    }
    return sorted(found)


async def list_storage_accounts(arm: Arm, subscription: str) -> list[str]:
    found = [
        str(a["name"])
        async for a in arm.pages(
            f"/subscriptions/{subscription}/providers/Microsoft.Storage/storageAccounts",
            API_STORAGE,
            f"list storage accounts of subscription '{subscription}'",
        )
        if isinstance(a.get("name"), str)
    ]
    return sorted(found)


async def list_clusters(arm: Arm, subscription: str) -> list[tuple[str, str]]:
    """(resource group lower-cased, name) of every AKS cluster of the subscription."""
    found = []
    async for cluster in arm.pages(
        f"/subscriptions/{subscription}/providers/Microsoft.ContainerService/managedClusters",
        API_AKS,
        f"list AKS clusters of subscription '{subscription}'",
    ):
        parts = str(cluster.get("id", "")).split("/")
        if len(parts) > 4 and isinstance(cluster.get("name"), str):
            found.append((parts[4].lower(), str(cluster["name"])))
    return sorted(found)


async def cluster_access(arm: Arm, subscription: str, group: str, name: str) -> tuple[str, str]:
    """(server URL, CA PEM) from the cluster's user kubeconfig (listClusterUserCredential)."""
    what = f"AKS cluster '{group}/{name}'"
    doc = await arm.post(
        f"/subscriptions/{subscription}/resourceGroups/{group}/providers/"
        f"Microsoft.ContainerService/managedClusters/{name}/listClusterUserCredential",
        API_AKS,
        f"get the user credentials of {what}",
        "&format=exec",
    )
    try:
        encoded = doc["kubeconfigs"][0]["value"]
        config = yaml.safe_load(base64.b64decode(encoded))
        cluster = config["clusters"][0]["cluster"]
        server = str(cluster["server"])
        ca = normalize_pem(
            "certificate_authority",
            base64.b64decode(cluster["certificate-authority-data"]).decode("ascii"),
        )
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error, yaml.YAMLError):
        raise UpstreamError(f"{what} answered with no usable kubeconfig", retryable=False) from None
    except BrokerError:
        raise UpstreamError(f"{what} reports a CA that is not PEM", retryable=False) from None
    if not server.startswith("https://"):
        raise UpstreamError(f"{what} reports server '{server[:80]}', not https", retryable=False)
    return server, ca


async def list_registries(arm: Arm, subscription: str) -> list[str]:
    """Login servers (lower case) of every ACR registry of the subscription."""
    found = [
        str(r["properties"]["loginServer"]).lower()
        async for r in arm.pages(
            f"/subscriptions/{subscription}/providers/Microsoft.ContainerRegistry/registries",
            API_ACR,
            f"list ACR registries of subscription '{subscription}'",
        )
        if isinstance(r.get("properties"), dict)
        and isinstance(r["properties"].get("loginServer"), str)
    ]
    return sorted(found)


async def acr_refresh_token(
    session: aiohttp.ClientSession,
    base: str,
    login_server: str,
    tenant: str | None,
    access_token: str,
    request_timeout: float,
) -> str:
    """An ACR refresh token for ``login_server`` from an Entra token (/oauth2/exchange)."""
    form = {"grant_type": "access_token", "service": login_server, "access_token": access_token}
    if tenant:
        form["tenant"] = tenant
    url = f"{base}/oauth2/exchange"
    try:
        async with session.post(url, data=form) as response:
            body = await response.text()
            status = response.status
    except TRANSPORT_ERRORS as exc:
        raise transport_error(
            exc, service=f"ACR {login_server}", url=url, timeout=request_timeout
        ) from None
    action = f"exchange an Entra token at ACR '{login_server}'"
    if status >= 400:
        raise _acr_error(status, body, action)
    try:
        token = json.loads(body).get("refresh_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise UpstreamError(f"ACR '{login_server}' answered the exchange with no refresh_token")
    return token


def _acr_error(status: int, body: str, action: str) -> BrokerError:
    try:
        errors = json.loads(body).get("errors") or []
        detail = "; ".join(str(e.get("message") or e.get("code")) for e in errors)[:_MESSAGE_LIMIT]
    except (ValueError, AttributeError):
        detail = body[:_MESSAGE_LIMIT]
    text = f"cannot {action}: {status}" + (f" {detail}" if detail else "")
    return _by_status(status, text)


def jwt_expiry(token: str) -> datetime | None:
    """The ``exp`` a JWT declares (not verified: the issuer's word on its own token's
    lifetime), or None when the token is not a JWT."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return datetime.fromtimestamp(int(claims["exp"]), UTC)
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error, OverflowError):
        return None
