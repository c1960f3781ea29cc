"""Per-process memos for the per-event path (Bloom digests, decoded item rows, parsed seed
rows, item id codes): popular items come back request after request, so each is computed
once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import numpy as np

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


class Interner:
    """Item id -> a dense int code, per process, and the codes of whole id lists memoised by
    the list object (the seeds' parsed ``cf_top`` lists are memoised per published row, so
    the same list comes back request after request). Everything is forgotten at once when
    more than ``limit`` ids are known: call ``reserve`` before a batch of ``codes`` calls
    whose codes are compared with each other, so no reset happens in the middle."""

    def __init__(self, limit: int, lists: int = 5_000) -> None:
        self.limit = limit
        self.lists_limit = lists
        self.code: dict[str, int] = {}
        self.names: list[str] = []
        self.generation = 0  # bumped by every reset: codes of another generation are stale
        self._lists: dict[int, tuple[list[str], np.ndarray]] = {}

    def reserve(self, n: int) -> None:
        if len(self.names) + n > self.limit:
            self.code.clear()
            self.names.clear()
            self._lists.clear()
            self.generation += 1

    def _known(self, ids: Sequence[str]) -> np.ndarray | None:
        """Codes of ids that all have one already (the common case: one C-level pass, ~2.5x
        faster than the loop that assigns new ones), else None."""
        try:
            return np.fromiter(map(self.code.__getitem__, ids), np.intp, len(ids))
        except KeyError:
            return None

    def codes_of(self, ids: Sequence[str]) -> np.ndarray:
        """intp codes of ``ids``, not memoised (e.g. a candidate set's own ids)."""
        known = self._known(ids)
        if known is not None:
            return known
        code, names = self.code, self.names
        out = np.empty(len(ids), dtype=np.intp)
        for k, i in enumerate(ids):
            c = code.get(i)
            if c is None:
                c = code[i] = len(names)
                names.append(i)
            out[k] = c
        return out

    def codes(self, ids: list[str], n: int | None = None) -> np.ndarray:
        """intp codes of ``ids[:n]`` (the list must not change afterwards: memoised by
        object, with the longest prefix asked for so far)."""
        n = len(ids) if n is None else min(n, len(ids))
        hit = self._lists.get(id(ids))
        if hit is not None and hit[0] is ids and len(hit[1]) >= n:
            return hit[1][:n]
        out = self.codes_of(ids[:n])
        if len(self._lists) >= self.lists_limit:
            self._lists.clear()
        self._lists[id(ids)] = (ids, out)  # the reference keeps id(ids) from being reused
        return out


# Item id codes shared by ranking.collab (collab_candidates) and ranking.candidates (the seeds'
# rows as candidate rows): ~100 bytes an id, forgotten past 200,000 ids.
ITEM_CODES = Interner(200_000)
