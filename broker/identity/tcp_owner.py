"""Which local uid owns the other end of a loopback TCP connection.

Why: metadata clients (google-auth, gcloud, the Go and Java SDKs) send no
credentials at all, so a GCE-metadata-compatible server cannot ask the client
who it is. TCP has no ``SO_PEERCRED``. For a *loopback* connection, though,
the other end is a socket on this host, and the kernel's socket table
(``/proc/net/tcp``, ``/proc/net/tcp6``) lists the owning uid of every TCP
socket: the same identd-style check (RFC 1413) that ``ident`` servers and
some loopback-only daemons use. We find the client's socket, whose local
address is the request's remote address and whose remote address is our
listener, and read its ``uid`` column.

What it proves, and what it does not:

- the uid is the socket's creator (its filesystem uid when the socket was
  made), as the kernel recorded it, never anything the client says. A process
  that creates a socket and then hands it to another uid (fd passing, setuid)
  still reads as the creator.
- only sockets in the reader's network namespace are listed. A client in
  another namespace cannot reach our 127.0.0.1 listener anyway.
- a connection that is already in ``TIME_WAIT`` has no owner in the table
  (uid 0, inode 0): it is treated as *not found*, never as root.

``sock_diag`` netlink (what ``ss`` uses) answers the same question with a
kernel-side lookup of one 4-tuple instead of a scan; the data and the trust
are the same, and metadata requests are rare (one token refresh an hour per
client), so the plain file is used.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

#: ``st`` column value of TIME_WAIT sockets (no owner recorded).
_TIME_WAIT = "06"
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def kernel_address(host: str, port: int, *, v6: bool) -> str:
    """``host:port`` as ``/proc/net/tcp[6]`` prints it.

    The kernel prints each 32-bit word of the (network-order) address as a
    native-endian hex number, and the port as a plain hex number. An IPv4
    address in the IPv6 table is the v4-mapped form ``::ffff:a.b.c.d``.
    """
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if v6:
        if address.version == 4:
            address = ipaddress.IPv6Address(f"::ffff:{address}")
        words = struct.unpack("=4I", address.packed)
        return "".join(f"{w:08X}" for w in words) + f":{port:04X}"
    if address.version != 4:
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        if mapped is None:
            raise ValueError(f"{host} has no IPv4 form")
        address = mapped
    (word,) = struct.unpack("=I", address.packed)
    return f"{word:08X}:{port:04X}"


def find_owner(lines: Iterable[str], local: str, remote: str) -> int | None:
    """The uid of the socket with that local and remote address in one table's lines."""
    for line in lines:
        fields = line.split()
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        if len(fields) < 10 or fields[1] != local or fields[2] != remote:
            continue
        if fields[3] == _TIME_WAIT or not fields[7].isdigit():
            return None
        return int(fields[7])
    return None


def _keys(host: str, port: int, v6: bool) -> str | None:
    try:
        return kernel_address(host, port, v6=v6)
    except ValueError:
        return None


def peer_uid(
    peer: tuple[str, int], listener: tuple[str, int], tables: Iterable[str] = TABLES
) -> int | None:
    """The uid owning the client socket connected from ``peer`` to our ``listener``.

    ``peer`` is the request's remote (host, port), ``listener`` our own local
    (host, port). None when no such socket is found (gone, in TIME_WAIT, or
    not on this host). Blocking file reads: call it from a worker thread.
    """
    for path in tables:
        v6 = path.endswith("6")
        local = _keys(peer[0], peer[1], v6)
        remote = _keys(listener[0], listener[1], v6)
        if local is None or remote is None:
            continue
        try:
            with open(path, encoding="ascii", errors="replace") as table:
                next(table, None)  # header
                uid = find_owner(table, local, remote)
        except OSError:
            continue
        if uid is not None:
            return uid
    return None
