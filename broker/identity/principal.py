"""The principal: who a call comes from, as the kernel or a certificate says.

Never built from anything the caller declares about itself. Selectors are
the strings policy rules match on (``uid:1001``, ``user:alice``,
``group:ci``, ``cert:spiffe://example.org/ci``, ``tcp:anonymous``); workload
attestation (:mod:`broker.identity.attestors`) adds ``container:ID``,
``docker:…`` and ``k8s:…`` ones for a local process in a container.
"""

from __future__ import annotations

import grp
import os
import pwd
import time
from dataclasses import dataclass, field, replace
from typing import Literal

Transport = Literal["unix", "tcp", "internal"]

#: The selector of callers on a loopback TCP listener with no client certificate.
ANONYMOUS_TCP = "tcp:anonymous"


@dataclass(frozen=True)
class Principal:
    """One caller. ``key`` identifies it for decision caches and grant ownership."""

    kind: Literal["unix", "cert", "anonymous", "internal"]
    transport: Transport
    uid: int | None = None
    gid: int | None = None
    gids: frozenset[int] = frozenset()
    pid: int | None = None
    #: When the kernel reported ``pid`` (clock ticks after boot, as ``/proc/PID/stat``'s
    #: start time): a process with that pid that started later is another one (reuse).
    seen_ticks: int | None = field(default=None, compare=False)
    user: str | None = None
    #: Name of the primary group (``gid``), when it has one.
    group: str | None = None
    groups: frozenset[str] = frozenset()
    cert_id: str | None = None
    selectors: frozenset[str] = field(default=frozenset())
    label: str = ""
    #: The container the process runs in, when workload attestation is on and found one.
    container_id: str | None = None
    #: The selectors attestation added (``container:…``, ``docker:…``, ``k8s:…``).
    attested: frozenset[str] = frozenset()
    #: What attestation could not find out (an attestor unreachable, an unknown container):
    #: rules needing those selectors cannot match, and denials say why.
    attestation_note: str | None = None

    @property
    def key(self) -> str:
        """Stable across calls of the same caller (pid excluded): owner of grants.

        An attested caller is its uid in its container: another pod running as the
        same uid does not own (list, revoke) its SDK grants."""
        if self.kind == "unix":
            if self.container_id is not None:
                return f"uid:{self.uid}@container:{self.container_id}"
            return f"uid:{self.uid}"
        if self.kind == "cert":
            return f"cert:{self.cert_id}"
        return self.label

    def describe(self) -> str:
        if self.attestation_note:
            return f"{self.label} [attestation: {self.attestation_note}]"
        return self.label

    def audit_fields(self) -> dict[str, object]:
        """What audit lines carry about the caller (never anything secret)."""
        if self.kind == "unix":
            fields: dict[str, object] = {
                "principal": self.label,
                "uid": self.uid,
                "user": self.user,
                "gid": self.gid,
                "group": self.group,
                "pid": self.pid,
            }
            if self.container_id is not None:  # attested: which workload it was
                fields["container"] = self.container_id
                fields["selectors"] = sorted(self.attested)
                if self.attestation_note:
                    fields["attestation"] = self.attestation_note
            return fields
        if self.kind == "cert":
            return {"principal": self.label, "cert_id": self.cert_id}
        return {"principal": self.label}


#: How long a resolved user or group name is reused (lookups read /etc/passwd each time).
NAME_CACHE_SECONDS = 60.0
_names: dict[tuple[str, int], tuple[float, str]] = {}


def _cached_name(kind: str, number: int) -> str | None:
    """Names found are kept a minute; a missing name is looked up again next time."""
    now = time.monotonic()
    hit = _names.get((kind, number))
    if hit is not None and now - hit[0] < NAME_CACHE_SECONDS:
        return hit[1]
    try:
        name = pwd.getpwuid(number).pw_name if kind == "user" else grp.getgrgid(number).gr_name
    except KeyError:
        return None
    if len(_names) > 4096:
        _names.clear()
    _names[(kind, number)] = (now, name)
    return name


def _user_name(uid: int) -> str | None:
    return _cached_name("user", uid)


def _group_name(gid: int) -> str | None:
    return _cached_name("group", gid)


def unix_principal(
    uid: int, gid: int, pid: int | None, gids: frozenset[int] = frozenset(), via: str = "unix"
) -> Principal:
    """A local caller from its peer credentials; names resolved once per call site."""
    all_gids = frozenset({gid, *gids})
    user = _user_name(uid)
    groups = frozenset(n for n in (_group_name(g) for g in all_gids) if n)
    selectors = {f"uid:{uid}", *(f"gid:{g}" for g in all_gids), *(f"group:{n}" for n in groups)}
    if user:
        selectors.add(f"user:{user}")
    primary = _group_name(gid)
    label = f"uid={uid}" + (f"({user})" if user else "") + f" gid={gid}"
    label += f"({primary})" if primary else ""
    if pid:
        label += f" pid={pid}"
    return Principal(
        kind="unix",
        transport="unix",
        uid=uid,
        gid=gid,
        gids=all_gids,
        pid=pid or None,
        user=user,
        group=primary,
        groups=groups,
        selectors=frozenset(selectors),
        label=f"{label} via {via}",
    )


def cert_principal(cert_id: str) -> Principal:
    return Principal(
        kind="cert",
        transport="tcp",
        cert_id=cert_id,
        selectors=frozenset({f"cert:{cert_id}"}),
        label=f"cert {cert_id}",
    )


def anonymous_tcp(peer: str) -> Principal:
    """A caller on a loopback TCP listener without a client certificate."""
    return Principal(
        kind="anonymous",
        transport="tcp",
        selectors=frozenset({ANONYMOUS_TCP}),
        label=f"{ANONYMOUS_TCP} ({peer})",
    )


def with_selectors(principal: Principal, extra: frozenset[str]) -> Principal:
    """``principal`` with more selectors, as attestation would add (``broker policy check``)."""
    if not extra - principal.selectors:
        return principal
    return replace(
        principal,
        selectors=principal.selectors | extra,
        label=f"{principal.label} with {', '.join(sorted(extra))}",
    )


def selector_principal(selectors: frozenset[str]) -> Principal:
    """A subject made of selectors only (``broker policy check --selector …``)."""
    return Principal(
        kind="anonymous",
        transport="unix",
        selectors=selectors,
        label="selectors " + ", ".join(sorted(selectors)),
    )


#: The daemon acting for itself (e.g. checking a grant at creation): never from a front end.
INTERNAL = Principal(kind="internal", transport="internal", label="daemon")


def local_user(uid: int | None = None, name: str | None = None) -> Principal:
    """A local user as a login would be (primary and supplementary groups), for
    ``broker policy check``: what that user would get calling from a shell."""
    try:
        entry = pwd.getpwnam(name) if name is not None else pwd.getpwuid(uid or 0)
    except KeyError:
        missing = f"no local user {name!r}" if name else f"no local user with uid {uid}"
        raise LookupError(missing) from None
    gids = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return unix_principal(entry.pw_uid, entry.pw_gid, None, gids, via="policy check")
