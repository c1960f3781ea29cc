"""The item side: each item's decayed popularity at two paces, interaction count and
co-occurrence row.

Split the Kafka way. The user side (the user's partition, ranking/step.py) knows the user's
recent items and, per positive event, emits weighted pairs (``cooc_pairs``); each pair is keyed
by the item whose row it updates, so it is applied on *that item's* partition (the
``item-activity`` topic, keyed by item) by :meth:`ItemRow.apply`. The row's bytes
(:meth:`ItemRow.to_bytes`) are the value of the ``item-stats`` Table, and its compacted
changelog is what every ranking worker reads into its catalog (ranking/catalog.py), where the
strongest entries become the item's published neighbours. ``recstream evaluate`` applies the
same updates to the same rows in-process (:class:`ItemSide`).

Pair weights: the new item j and each recent item r (newest last), at distance d = 1, 2, ...
from the end: r -> j (j followed r) weighs ``decay ** (d - 1)``, and j -> r weighs
``backward`` times that. Only positive events make pairs: a skip is not "people who watched X
also watched". Items are known by their 64-bit hashes (ranking.user_state.item_hash).
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from recstream.ranking import kernels

ROW_VERSION = 2  # 1: no "hot" trend (read as none yet)
NO_TREND = -1.0e18  # an item nobody interacted with yet sorts last


@dataclass(frozen=True)
class CoocParams:
    window: int = 16  # recent items paired with each new one
    decay: float = 0.9  # per step back in the user's history
    backward: float = 0.5  # weight of j -> r relative to r -> j
    max_row: int = 1000  # entries kept per item row
    top_n: int = 100  # neighbours used as collaborative candidates and "cf" (strongest first)
    history_top_n: int = 400  # entries of the row the "history" feature reads
    history_alpha: float = 1.0  # "history" weight of an entry: w / count(neighbour) ** alpha


def trend_after(trend: float, weight: float, ts: int, half_life_ms: float) -> float:
    """Add ``weight`` at time ``ts`` to a log-space decayed counter: a counter ``pop`` decaying
    with half-life H is kept as ``ln(pop) + t * ln2 / H`` (t: its last update), so ordering by
    it is ordering by the current decayed popularity, and idle items are never rewritten."""
    k = math.log(2) / half_life_ms
    x = math.log(weight) + ts * k
    if trend <= NO_TREND / 2:
        return x
    hi, lo = max(trend, x), min(trend, x)
    return hi + math.log1p(math.exp(lo - hi))


def popularity_now(trend: float, now_ms: int, half_life_ms: float) -> float:
    """The decayed popularity a ``trend`` stands for at ``now_ms`` (0 for NO_TREND)."""
    if trend <= NO_TREND / 2:
        return 0.0
    return math.exp(min(trend - now_ms * math.log(2) / half_life_ms, 700.0))


def cooc_pairs(
    recent: Sequence[int] | np.ndarray,
    recent_w: Sequence[float] | np.ndarray,
    item: int,
    w: float,
    params: CoocParams,
) -> list[tuple[int, int, float]]:
    """(row item, neighbour, weight) updates caused by a positive event on ``item``, given the
    user's recent items and weights *before* the event, newest last."""
    if w <= 0:
        return []
    out: list[tuple[int, int, float]] = []
    d = 0
    rec = recent.tolist() if isinstance(recent, np.ndarray) else list(recent)
    rws = recent_w.tolist() if isinstance(recent_w, np.ndarray) else list(recent_w)
    item = int(item)
    for r, rw in zip(reversed(rec), reversed(rws), strict=True):
        if r == item or rw <= 0:
            continue
        d += 1
        if d > params.window:
            break
        pw = params.decay ** (d - 1)
        out.append((r, item, pw))
        if params.backward > 0:
            out.append((item, r, params.backward * pw))
    return out


class Update(NamedTuple):
    """One change to an item's side: an interaction of weight ``w`` at ``ts`` (0: none, only
    co-occurrence) and ``pairs`` (neighbour hash, weight) to add to its row. (A named tuple:
    every positive event makes a dozen or more, and a frozen dataclass costs several times as
    much to make.)"""

    item: int
    w: float
    ts: int
    pairs: tuple[tuple[int, float], ...] = ()


def updates_for_event(
    recent: Sequence[int] | np.ndarray, recent_w: Sequence[float] | np.ndarray, item: int,
    w: float, ts: int,
    params: CoocParams,
) -> list[Update]:  # fmt: skip
    """The item-side updates one positive event causes: the event's item (its interaction and
    its row's pairs), then each recent item whose row gains it, in pair order."""
    if w <= 0:
        return []
    # (cooc_pairs' pairs, grouped by row as they come: the event's item first; written out
    # here, with the weights rounded once per params, since every positive event runs it)
    fwd, back = _pair_weights(params.window, params.decay, params.backward)
    item = int(item)
    rec = recent.tolist() if isinstance(recent, np.ndarray) else list(recent)
    rws = recent_w.tolist() if isinstance(recent_w, np.ndarray) else list(recent_w)
    mine: list[tuple[int, float]] = []
    rows: dict[int, list[tuple[int, float]]] = {}
    d = 0
    for i in range(len(rec) - 1, -1, -1):
        r = rec[i]
        if r == item or rws[i] <= 0:
            continue
        if d == params.window:
            break
        got = rows.get(r)
        if got is None:
            rows[r] = [(item, fwd[d])]
        else:
            got.append((item, fwd[d]))
        if back:
            mine.append((r, back[d]))
        d += 1
    others = [Update(r, 0.0, ts, tuple(p)) for r, p in rows.items()]
    return [Update(item, w, ts, tuple(mine)), *others]


@functools.lru_cache(maxsize=8)
def _pair_weights(window: int, decay: float, backward: float) -> tuple[list[float], list[float]]:
    """The pair weights of cooc_pairs by step back d (0-based), rounded to 6 places as
    updates carry them: r -> j, and j -> r (empty when ``backward`` is 0)."""
    fwd = [decay**d for d in range(window)]
    back = [round(backward * pw, 6) for pw in fwd] if backward > 0 else []
    return [round(pw, 6) for pw in fwd], back


@dataclass
class ItemRow:
    """One item's side: its decayed popularity at two paces, ``trend`` (half-life: hours) and
    ``hot`` (minutes), both log-space (``trend_after``), its interaction count, and its
    co-occurrence row as arrays sorted by neighbour hash."""

    trend: float = NO_TREND
    count: float = 0.0
    nb: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    w: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    hot: float = NO_TREND

    def apply(
        self, u: Update, params: CoocParams, half_life_ms: float, hot_half_life_ms: float
    ) -> None:
        if u.w > 0:
            self.trend = trend_after(self.trend, u.w, u.ts, half_life_ms)
            self.hot = trend_after(self.hot, u.w, u.ts, hot_half_life_ms)
            self.count += 1.0
        if not u.pairs:
            return
        if len(u.pairs) == 1:  # most updates: a recent item's row gains the event's item
            nb, pw = u.pairs[0]
            if kernels.add_to_row(self.nb, self.w, np.uint64(nb), pw):
                return  # one it had already: added in place (else merged below)
        add: dict[int, float] = {}
        for nb, pw in u.pairs:
            add[nb] = add.get(nb, 0.0) + pw
        keys = sorted(add)
        self.nb, self.w = kernels.merge_row(
            self.nb,
            self.w,
            np.asarray(keys, np.uint64),
            np.asarray([add[k] for k in keys], np.float32),
        )
        if len(self.nb) > params.max_row:
            # keep the strongest three quarters (ties by neighbour), so replays agree
            keep = np.lexsort((self.nb, -self.w))[: params.max_row * 3 // 4]
            keep.sort()
            self.nb, self.w = self.nb[keep], self.w[keep]

    # -- wire form: the item-stats Table's value -----------------------------------------------
    def to_bytes(self) -> bytes:
        """``<B version> <d trend> <d count> <I n> <d hot>`` + u64[n] neighbours + f32[n]
        weights. Version 1 (no ``hot``) still loads, as a row with no hot trend yet."""
        head = struct.pack("<BddId", ROW_VERSION, self.trend, self.count, len(self.nb), self.hot)
        return head + self.nb.astype("<u8").tobytes() + self.w.astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ItemRow:
        if not raw or raw[0] not in (1, ROW_VERSION):
            raise ValueError(f"unsupported item row version {raw[0] if raw else None!r}")
        head = "<BddId" if raw[0] == ROW_VERSION else "<BddI"
        trend, count, n, *rest = struct.unpack_from(head, raw, 0)[1:]
        at = struct.calcsize(head)
        nb = np.frombuffer(raw, dtype="<u8", count=n, offset=at).astype(np.uint64)
        w = np.frombuffer(raw, dtype="<f4", count=n, offset=at + 8 * n).astype(np.float32)
        return cls(trend, count, nb, w, rest[0] if rest else NO_TREND)


class ItemSide:
    """Every item's row in one process (``recstream evaluate``, tests). The worker keeps the
    same rows in the item-stats Table, one partition per worker."""

    def __init__(self, params: CoocParams, half_life_ms: float, hot_half_life_ms: float) -> None:
        self.params = params
        self.half_life_ms = half_life_ms
        self.hot_half_life_ms = hot_half_life_ms
        self.rows: dict[int, ItemRow] = {}

    def apply(self, updates: Iterable[Update]) -> dict[int, np.ndarray]:
        """Apply updates in order; returns the items changed, each once, in first-change
        order, each with the neighbours (hashes, sorted) whose weights changed in its row
        (what ``Catalog.set_side`` takes as ``changed``)."""
        changed: dict[int, set[int]] = {}
        for u in updates:
            row = self.rows.get(u.item)
            if row is None:
                row = self.rows[u.item] = ItemRow()
            row.apply(u, self.params, self.half_life_ms, self.hot_half_life_ms)
            changed.setdefault(u.item, set()).update(nb for nb, _ in u.pairs)
        return {h: np.asarray(sorted(nbs), np.uint64) for h, nbs in changed.items()}
