"""Encoded images by content hash: an in-memory LRU bounded in MiB, so a page that sends the same two
images with every click encodes each image once.

The key is the SHA-256 of the uploaded bytes, so equal files share an entry whatever their names, and no
name is stored (a client never sees another client's file names). Nothing is written to disk.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from simplematch.runtime import Features


def content_id(data: bytes) -> str:
    """The cache key of an upload: SHA-256 of its bytes, hex."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One encoded image: its features (map + original (h, w))."""

    features: Features

    @property
    def nbytes(self) -> int:
        return int(self.features.map.nbytes)


class FeatureCache:
    """Thread-safe LRU of :class:`Entry` whose feature bytes stay <= ``max_mib`` MiB (0 disables it)."""

    def __init__(self, max_mib: float) -> None:
        self.max_bytes = int(max_mib * 2**20)
        self._items: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: str) -> Entry | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, entry: Entry) -> None:
        """Store ``entry`` as most recent, evicting the least recent until the bound holds. An entry larger
        than the whole bound is not stored (it would evict everything and still not fit)."""
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes
                self.evictions += 1

    def stats(self) -> dict[str, float | int]:
        with self._lock:
            return {
                "entries": len(self._items),
                "mib": round(self._bytes / 2**20, 3),
                "max_mib": round(self.max_bytes / 2**20, 3),
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }
