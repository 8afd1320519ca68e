"""Identifiers of the azure connector type: tenants, clients, subscriptions, resource IDs.

Every accepted spelling becomes one canonical form:

* azure-generic: the subscription GUID (lower case); without a subscription, the tenant,
  or any subscription GUID (the connector then serves every subscription it sees).
* blob-container: ``az://ACCOUNT/CONTAINER``; also the blob URL
  ``https://ACCOUNT.blob.SUFFIX/CONTAINER`` and the ARM container ID.
* kubernetes-cluster: ``RESOURCE_GROUP/NAME`` (resource group lower-cased: ARM
  treats it case-insensitively) or a bare ``NAME`` (resolved by listing); the
  ARM ID becomes ``RESOURCE_GROUP/NAME``. A connector without a subscription
  spans several, where ``RG/NAME`` may exist twice: there the ARM ID and
  ``SUBSCRIPTION_ID/RESOURCE_GROUP/NAME`` become the latter (listings use it).
* docker-registry: ``NAME.SUFFIX`` (lower case); ``https://``, an image path
  and the ARM registry ID are accepted.

A subscription named in an ID must be the connector's own, if it has one. Storage
account and registry names are unique across Azure, so those IDs need no subscription.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from broker.errors import InvalidArgument
from broker.providers.values import clip

FIELD = "resource_id"

_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(
    r"^(?=.{4,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER = re.compile(r"^(?:[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]|\$root|\$web|\$logs)$")
_RESOURCE_GROUP = re.compile(r"^[-\w.()]{0,89}[-\w()]$")
_AKS = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")
_ACR = re.compile(r"^[A-Za-z0-9]{5,50}$")
_SUFFIX = re.compile(r"^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[0-9]{1,5})?$")


def _bad(what: str, raw: str, reason: str, expected: str) -> InvalidArgument:
    return InvalidArgument(
        f"{FIELD} '{clip(raw.strip())}' is not {what} ({reason}); expected {expected}",
        field=FIELD,
    )


def check_guid(raw: str, field: str, what: str) -> str:
    """A GUID (client ID, subscription ID), lower-cased."""
    value = raw.strip()
    if not _GUID.match(value):
        raise InvalidArgument(
            f"{field} '{clip(value)}' is not {what}: expected a GUID such as "
            "00000000-0000-0000-0000-000000000000",
            field=field,
        )
    return value.lower()


def check_tenant(raw: str, field: str = "tenant_id") -> str:
    """A tenant: its GUID or one of its domains (contoso.onmicrosoft.com)."""
    value = raw.strip()
    if _GUID.match(value):
        return value.lower()
    if _DOMAIN.match(value):
        return value.lower()
    raise InvalidArgument(
        f"{field} '{clip(value)}' is not an Entra tenant: expected its GUID or a domain "
        "such as contoso.onmicrosoft.com",
        field=field,
    )


def check_suffix(raw: str, field: str) -> str:
    """A DNS suffix (``core.windows.net``, ``azurecr.io``), optionally with a port."""
    value = raw.strip().lower().strip(".")
    if not _SUFFIX.match(value) or ".." in value:
        raise InvalidArgument(
            f"attribute '{field}' '{clip(value)}' is not a DNS suffix such as core.windows.net",
            field=field,
        )
    return value


@dataclass(frozen=True)
class ArmId:
    """The parts of an ARM resource ID this type reads."""

    subscription: str
    resource_group: str
    provider: str
    kind: str
    name: str
    rest: tuple[str, ...]


def parse_arm_id(raw: str, what: str, expected: str) -> ArmId:
    """``/subscriptions/S/resourceGroups/RG/providers/NS/TYPE/NAME[/...]`` (keys any case)."""
    parts = raw.strip().strip("/").split("/")
    if (
        len(parts) < 8
        or parts[0].lower() != "subscriptions"
        or parts[2].lower() != "resourcegroups"
        or parts[4].lower() != "providers"
    ):
        raise _bad(what, raw, "malformed ARM resource ID", expected)
    if not _GUID.match(parts[1]):
        raise _bad(what, raw, f"'{clip(parts[1])}' is not a subscription ID", expected)
    if not _RESOURCE_GROUP.match(parts[3]):
        raise _bad(what, raw, f"'{clip(parts[3])}' is not a resource group name", expected)
    return ArmId(
        parts[1].lower(),
        parts[3].lower(),
        parts[5].lower(),
        parts[6].lower(),
        parts[7],
        tuple(parts[8:]),
    )


def _same_subscription(named: str, subscription: str | None, raw: str) -> None:
    if subscription is not None and named != subscription:
        raise InvalidArgument(
            f"{FIELD} '{clip(raw.strip())}' is in subscription '{named}', but the "
            f"connector serves subscription '{subscription}'",
            field=FIELD,
        )


def canonical_generic(raw: str, default: str, any_subscription: bool = False) -> str:
    """azure-generic: the connector's subscription (or tenant), in any accepted spelling;
    with ``any_subscription`` (no subscription configured) also any subscription GUID."""
    text = raw.strip()
    lowered = text.lower().strip("/")
    if lowered.startswith("subscriptions/"):
        lowered = lowered.removeprefix("subscriptions/")
    if any_subscription and _GUID.match(lowered):
        return lowered
    if lowered != default:
        raise InvalidArgument(
            f"{FIELD} '{clip(text)}' is not this connector's subscription or tenant ('{default}')",
            field=FIELD,
        )
    return default


@dataclass(frozen=True)
class BlobRef:
    account: str
    container: str

    @property
    def canonical(self) -> str:
        return f"az://{self.account}/{self.container}"


def parse_blob(raw: str, suffix: str, subscription: str | None) -> BlobRef:
    """Any accepted blob container spelling (see the module docstring)."""
    expected = f"az://ACCOUNT/CONTAINER or https://ACCOUNT.blob.{suffix}/CONTAINER"
    what = "a blob container"
    text = raw.strip()
    lowered = text.lower()
    if lowered.startswith("az://"):
        account, _, container = text[len("az://") :].rstrip("/").partition("/")
    elif lowered.startswith("https://"):
        host, _, path = text[len("https://") :].partition("/")
        host = host.lower()
        tail = f".blob.{suffix}"
        if not host.endswith(tail):
            raise _bad(what, raw, f"the host is not ACCOUNT{tail}", expected)
        account, container = host[: -len(tail)], path.rstrip("/")
    elif text.startswith("/"):
        arm = parse_arm_id(text, what, expected)
        if (
            arm.provider != "microsoft.storage"
            or arm.kind != "storageaccounts"
            or len(arm.rest) != 4
            or [p.lower() for p in arm.rest[:3]] != ["blobservices", "default", "containers"]
        ):
            raise _bad(what, raw, "not a Microsoft.Storage blob container ID", expected)
        _same_subscription(arm.subscription, subscription, raw)
        account, container = arm.name, arm.rest[3]
    else:
        raise _bad(what, raw, "no az:// or https:// prefix", expected)
    if "/" in container:
        raise _bad(what, raw, "it names a blob path; give the container only", expected)
    if not _ACCOUNT.match(account):
        raise _bad(
            what, raw, "storage account names are 3 to 24 lower-case letters or digits", expected
        )
    if not _CONTAINER.match(container):
        raise _bad(
            what,
            raw,
            "container names are 3 to 63 lower-case letters, digits or single hyphens, "
            "starting and ending with a letter or digit",
            expected,
        )
    return BlobRef(account, container)


@dataclass(frozen=True)
class ClusterRef:
    name: str
    resource_group: str | None = None
    #: Set only for connectors without a subscription (several in reach).
    subscription: str | None = None

    @property
    def canonical(self) -> str:
        if self.subscription:
            return f"{self.subscription}/{self.resource_group}/{self.name}"
        return f"{self.resource_group}/{self.name}" if self.resource_group else self.name


def parse_cluster(raw: str, subscription: str | None) -> ClusterRef:
    """``subscription``: the connector's; None keeps the one an ID names (see above)."""
    expected = (
        "RESOURCE_GROUP/NAME, NAME, SUBSCRIPTION_ID/RESOURCE_GROUP/NAME, or the cluster's "
        "ARM resource ID"
    )
    what = "an AKS cluster"
    text = raw.strip()
    group: str | None
    named: str | None = None
    if text.startswith("/"):
        arm = parse_arm_id(text, what, expected)
        if (
            arm.provider != "microsoft.containerservice"
            or arm.kind != "managedclusters"
            or (arm.rest)
        ):
            raise _bad(what, raw, "not a Microsoft.ContainerService managed cluster ID", expected)
        _same_subscription(arm.subscription, subscription, raw)
        group, name, named = arm.resource_group, arm.name, arm.subscription
    else:
        parts = text.split("/")
        if len(parts) == 3 and _GUID.match(parts[0]):
            named = parts[0].lower()
            _same_subscription(named, subscription, raw)
            group, name = parts[1].lower(), parts[2]
        elif len(parts) == 2:
            group, name = parts[0].lower(), parts[1]
        elif len(parts) == 1:
            group, name = None, text
        else:
            raise _bad(what, raw, "too many '/' or not a subscription ID first", expected)
    if group is not None and not _RESOURCE_GROUP.match(group):
        raise _bad(what, raw, f"'{clip(group)}' is not a resource group name", expected)
    if not _AKS.match(name):
        raise _bad(
            what,
            raw,
            "cluster names are 1 to 63 letters, digits, '-' or '_', starting and ending with "
            "a letter or digit",
            expected,
        )
    return ClusterRef(name, group, named if subscription is None else None)


def parse_registry(raw: str, suffix: str, subscription: str | None) -> str:
    """An ACR registry as its canonical login server ``name.SUFFIX``."""
    expected = f"NAME.{suffix} or the registry's ARM resource ID"
    what = "an Azure container registry"
    text = raw.strip()
    if text.startswith("/"):
        arm = parse_arm_id(text, what, expected)
        if arm.provider != "microsoft.containerregistry" or arm.kind != "registries" or arm.rest:
            raise _bad(what, raw, "not a Microsoft.ContainerRegistry registry ID", expected)
        _same_subscription(arm.subscription, subscription, raw)
        name = arm.name
    else:
        if "://" in text:
            scheme, _, text = text.partition("://")
            if scheme.lower() not in ("https", "http"):
                raise _bad(what, raw, "only https:// is accepted", expected)
        host = text.split("/", 1)[0].lower()
        if "@" in host:
            raise InvalidArgument(
                f"{FIELD} must not contain a user name or password; expected {expected}",
                field=FIELD,
            )
        tail = f".{suffix}"
        if not host.endswith(tail):
            raise _bad(what, raw, f"the host is not NAME{tail}", expected)
        name = host[: -len(tail)]
    if not _ACR.match(name):
        raise _bad(what, raw, "registry names are 5 to 50 letters or digits", expected)
    return f"{name.lower()}.{suffix}"
