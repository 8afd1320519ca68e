"""Peer credentials of a Unix socket connection, from the kernel (SO_PEERCRED).

``SO_PEERCRED`` gives pid, uid and primary gid as of ``connect()``;
``SO_PEERGROUPS`` (Linux ≥ 4.13) the supplementary groups. Neither can be
forged by the peer.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import replace

from broker.identity.cgroups import boot_ticks
from broker.identity.principal import Principal, unix_principal

#: Linux's SO_PEERGROUPS (not exported by every Python build).
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_CREDS = struct.Struct("3i")
#: Room for this many supplementary groups; the kernel says if it needs more.
_MAX_GROUPS = 256


def peer_ids(sock: socket.socket) -> tuple[int, int, int, frozenset[int]]:
    """(pid, uid, gid, supplementary gids) of the process on the other end."""
    pid, uid, gid = _CREDS.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    )
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_GROUPS)
        gids = frozenset(struct.unpack(f"{len(raw) // 4}I", raw))
    except OSError:
        gids = frozenset()
    return pid, uid, gid, gids


def peer_principal(sock: socket.socket, via: str) -> Principal:
    """The caller, stamped with when its pid was read (a later-started pid is a reuse)."""
    pid, uid, gid, gids = peer_ids(sock)
    return replace(unix_principal(uid, gid, pid, gids, via=via), seen_ticks=boot_ticks())
