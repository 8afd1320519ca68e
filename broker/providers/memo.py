"""Values remembered for as long as an object lives, and no longer.

Providers parse a connector's configuration on every request (key files,
certificates); some of that is slow (loading an RSA key: ~70 ms). Caching by
the configuration's text would key a process-lifetime cache by secret text
and keep parsed keys of deleted connectors forever. Instead a value is tied
to the connector *object*: the catalog hands out the same object until the
connector changes, and when that object is dropped its entry goes with it.
"""

from __future__ import annotations

import weakref
from typing import Generic, TypeVar

__all__ = ["PerObject"]

V = TypeVar("V")


class PerObject(Generic[V]):
    """A map from live objects (by identity, not equality) to values.

    Entries are removed when their object is garbage collected, so the memo
    never outlives what it describes; objects must support weak references
    (dataclasses without ``slots`` do).
    """

    def __init__(self) -> None:
        self._values: dict[int, tuple[weakref.ref[object], V]] = {}

    def get(self, obj: object) -> V | None:
        entry = self._values.get(id(obj))
        if entry is None or entry[0]() is not obj:
            return None
        return entry[1]

    def put(self, obj: object, value: V) -> None:
        key = id(obj)
        ref = weakref.ref(obj, lambda dead: self._drop(key, dead))
        self._values[key] = (ref, value)

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def _drop(self, key: int, dead: weakref.ref[object]) -> None:
        entry = self._values.get(key)
        if entry is not None and entry[0] is dead:
            del self._values[key]
