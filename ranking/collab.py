"""Collaborative signal learned from the event stream: item-to-item co-occurrence.

Split the Kafka way. The user side (the user's partition) knows the user's recent items and,
per event, emits weighted pairs with ``cooc_pairs``; each pair is keyed by the item whose row
it updates, so it is applied on *that item's* partition (a repartitioned stream keyed by item
id). The item side keeps one bounded row per item, ``{neighbour: weight}`` plus the item's own
interaction count, updated by ``row_after`` / ``count_after``, and publishes the row's
``top_neighbours`` and count into the item's vector-store payload. Ranking reads the rows of the
user's recent items from there: nothing is shared between users' partitions in memory.

Pair weights: the new item j and each recent item r (newest last), at distance d = 1, 2, ...
from the end: r -> j (j followed r: what to show after r) weighs ``decay ** (d - 1)``, and
j -> r weighs ``backward`` times that (co-occurrence without order). Only positive events make
pairs: a skip is not "people who watched X also watched".
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ranking import seen as bloom
from ranking.memo import BoundedMemo


@dataclass(frozen=True)
class CoocParams:
    window: int = 16  # recent items paired with each new one
    decay: float = 0.9  # per step back in the user's history
    backward: float = 0.5  # weight of j -> r relative to r -> j
    max_row: int = 400  # entries kept per item row on the item side
    top_n: int = 100  # neighbours published per item (vector store payload)


def cooc_pairs(
    recent: Sequence[tuple[str, float]], item_id: str, w: float, params: CoocParams
) -> list[tuple[str, str, float]]:
    """(row item, neighbour, weight) updates caused by a positive event on ``item_id``,
    given the user's recent (item, weight) list *before* the event, newest last."""
    if w <= 0:
        return []
    out: list[tuple[str, str, float]] = []
    d = 0
    for r, rw in reversed(recent):
        if r == item_id or rw <= 0:
            continue
        d += 1
        if d > params.window:
            break
        pw = params.decay ** (d - 1)
        out.append((r, item_id, pw))
        if params.backward > 0:
            out.append((item_id, r, params.backward * pw))
    return out


def row_after(
    row: Mapping[str, float], updates: Iterable[tuple[str, float]], max_row: int
) -> dict[str, float]:
    """Item side: one item's neighbour weights after some pair updates. When the row grows past
    ``max_row`` the weakest quarter is dropped (ties by id, so replays agree)."""
    new = dict(row)
    for nb, w in updates:
        new[nb] = new.get(nb, 0.0) + w
    if len(new) > max_row:
        keep = sorted(new.items(), key=lambda kv: (-kv[1], kv[0]))[: max_row * 3 // 4]
        new = dict(keep)
    return new


def top_neighbours(row: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The row's n strongest neighbours (what goes into the item's payload), best first."""
    return sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def count_after(count: float, w: float) -> float:
    """Item side: the item's interaction count, the normaliser of its co-occurrence weights."""
    return count + 1.0 if w > 0 else count


@dataclass
class CoocTable:
    """The item side in one process (tests, small deployments): rows and counts in dicts.
    The stream keeps the same rows in a Faust Table keyed by item id."""

    params: CoocParams
    rows: dict[str, dict[str, float]]
    counts: dict[str, float]

    @classmethod
    def empty(cls, params: CoocParams) -> CoocTable:
        return cls(params, {}, {})

    def apply(self, item_id: str, w: float, pairs: Sequence[tuple[str, str, float]]) -> None:
        self.counts[item_id] = count_after(self.counts.get(item_id, 0.0), w)
        by_row: dict[str, list[tuple[str, float]]] = {}
        for r, nb, pw in pairs:
            by_row.setdefault(r, []).append((nb, pw))
        for r, ups in by_row.items():
            self.rows[r] = row_after(self.rows.get(r, {}), ups, self.params.max_row)

    def neighbours(self, item_id: str) -> list[tuple[str, float]]:
        return top_neighbours(self.rows.get(item_id, {}), self.params.top_n)


def pack_row(top: Sequence[tuple[str, float]], seen_bits: int) -> dict[str, str]:
    """Item side: a published row in the form ranking reads per request without hashing its
    ids again: ``cf_pos`` the neighbours' Bloom positions (uint16 x 4 each, base64; valid for
    filters of ``seen_bits`` <= 65,536 bits) and ``cf_w`` their weights (float32, base64), in
    the order of ``top``. Goes into the item's payload next to ``cf_top``."""
    pos = bloom.positions_matrix([i for i, _ in top], seen_bits).astype("<u2")
    w = np.asarray([x for _, x in top], dtype="<f4")
    return {
        "cf_pos": base64.b64encode(pos.tobytes()).decode(),
        "cf_w": base64.b64encode(w.tobytes()).decode(),
    }


def unpack_row(payload: Mapping[str, object]) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint16[m, N_HASHES] Bloom positions, float32[m] weights) from a payload written with
    ``pack_row``; None when the payload has none.

    Decoded rows are memoised by their two strings: a candidate set holds ~150 rows of 100
    entries, mostly the same popular items request after request, and decoding them was the
    largest single cost of the stream's per-event path (~17 us a row). An item's row changes
    at most once per item-stats flush, and then its strings change with it."""
    p, w = payload.get("cf_pos"), payload.get("cf_w")
    if not p or not w or not isinstance(p, str) or not isinstance(w, str):
        return None
    key = (p, w)
    hit = _ROWS.get(key, _MISSING)
    if hit is not _MISSING:
        return hit  # type: ignore[return-value]
    pos = np.frombuffer(base64.b64decode(p), dtype="<u2").reshape(-1, bloom.N_HASHES)
    wts = np.frombuffer(base64.b64decode(w), dtype="<f4")
    out = (pos, wts) if len(pos) == len(wts) else None
    return _ROWS.put(key, out)  # read-only arrays, shared by every request reading this row


# (cf_pos, cf_w) -> decoded row; ~1.5 KB each at top_n 100, emptied at 20,000 (~30 MB).
_ROWS: BoundedMemo[tuple[str, str], tuple[np.ndarray, np.ndarray] | None] = BoundedMemo(20_000)
_MISSING = object()
