"""Per-process memos for the per-event path (Bloom digests, decoded item rows, parsed seed
rows): popular items come back request after request, so each is computed once."""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(dict[K, V], Generic[K, V]):
    """A dict emptied when it reaches ``limit`` entries: no per-hit bookkeeping (as an LRU
    would need) on the hot path; after a clear, entries are rebuilt on their next miss."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
