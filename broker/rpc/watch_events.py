"""Watch events as the bytes each stream writes: serialized once per credential.

A renewal reaches every watcher of a key with the same credential object, so
its message is built and serialized once, not once per stream.
"""

from __future__ import annotations

from broker.api.v1 import broker_pb2 as pb
from broker.app.values import IssuedEvent
from broker.rpc import convert

_EVENT_KINDS = {
    "issued": pb.CredentialEvent.ISSUED,
    "renewed": pb.CredentialEvent.RENEWED,
    "updated": pb.CredentialEvent.UPDATED,
    "deleted": pb.CredentialEvent.DELETED,
    "error": pb.CredentialEvent.ERROR,
}


class EncodedEvents:
    """Each watch event serialized once for all the streams it goes to (a renewal reaches
    every watcher of its key with the same credential object): the latest few, by the
    credential's identity (held, so the identity stays valid)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._cache: dict[tuple[str, int, str, int, str], tuple[object, bytes]] = {}

    def get(self, event: IssuedEvent) -> bytes:
        issued = event.issued
        if issued is None:
            return _event(event).SerializeToString()
        credential = issued.credential
        key = (
            event.kind,
            id(credential),
            issued.connector.name,
            issued.connector.revision,
            event.error or "",
        )
        hit = self._cache.get(key)
        if hit is not None and hit[0] is credential:
            return hit[1]
        data = _event(event).SerializeToString()
        if len(self._cache) >= self._size:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = (credential, data)
        return data


def _event(event: IssuedEvent) -> pb.CredentialEvent:
    message = pb.CredentialEvent(kind=_EVENT_KINDS[event.kind], error=event.error or "")
    if event.issued is not None:
        message.credential.CopyFrom(
            convert.credential(
                event.issued.connector.name,
                event.issued.connector.revision,
                event.issued.credential,
            )
        )
    return message
