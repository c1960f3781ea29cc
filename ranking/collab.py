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

Whole-history signal ("history" in ranking/features.py): ranking sums a candidate's own row over
the neighbours the user took. Each entry is weighed there by ``w / count(neighbour) **
history_alpha`` (a cosine-like normalisation: a neighbour everybody takes says little about a
user's taste). The item side does not know its neighbours' counts; the user side does (the
event's item and the user's seeds are fetched with their ``cf_count``), so each pair carries
the count of its neighbour as the user side read it (``cooc_records``), the item side keeps the
latest one per neighbour (``known_counts_after``) and publishes the normalised weights
(``history_weights``) as the packed row's ``cf_w``. A pair without a count (a record written
before counts were carried, or a neighbour the user side did not fetch) keeps the count the
row already knew; a neighbour with no known count is not normalised (count 1).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from recstream.ranking import seen as bloom
from recstream.ranking.features import ScoreParams, Seed, recency_weights
from recstream.ranking.memo import ITEM_CODES as _IDS
from recstream.ranking.memo import BoundedMemo


@dataclass(frozen=True)
class CoocParams:
    window: int = 16  # recent items paired with each new one
    decay: float = 0.9  # per step back in the user's history
    backward: float = 0.5  # weight of j -> r relative to r -> j
    max_row: int = 1000  # entries kept per item row on the item side (settings: cooc_max_row)
    top_n: int = 100  # neighbours published per item (vector store payload: cf_top)
    history_top_n: int = 400  # entries of its published "history" row (cf_pos / cf_w)
    # published history weight of an entry: w / count(neighbour) ** history_alpha
    history_alpha: float = 0.25


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


def cooc_records(
    recent: Sequence[tuple[str, float]],
    item_id: str,
    w: float,
    params: CoocParams,
    counts: Mapping[str, float] | None = None,
) -> dict[str, list[tuple[str, float, float | None]]]:
    """User side: ``cooc_pairs`` grouped by the row they update (one item-activity record per
    row item), each as (neighbour, weight, the neighbour's count as in ``counts``, None when
    the caller did not fetch it). The event's own item always has a row (possibly empty): its
    record carries its interaction."""
    counts = counts or {}
    rows: dict[str, list[tuple[str, float, float | None]]] = {item_id: []}
    for row, nb, pw in cooc_pairs(recent, item_id, w, params):
        c = counts.get(nb)
        rows.setdefault(row, []).append((nb, pw, None if c is None else float(c)))
    return rows


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


def published_rows(
    row: Mapping[str, float], params: CoocParams
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Item side: what a row publishes, both best first (ties by id): its ``top_n`` strongest
    neighbours (``cf_top``: collaborative candidates, reasons) and its ``history_top_n``
    strongest (the packed "history" row, ``pack_row``)."""
    top = top_neighbours(row, max(params.top_n, params.history_top_n))
    return top[: params.top_n], top[: params.history_top_n]


def cf_top_text(top: Sequence[tuple[str, float]]) -> str:
    """A row's published ``cf_top``: compact JSON text (the engine's binding converts nested
    lists at ~1.2 ms an item), in columns, ``{"i": [ids], "w": [weights]}``, best first: ranking
    reads it as a list and an array without building a pair per entry (recommender.seed_of:
    ~7 us per 100-entry row, 25 us as [[id, w], ...] pairs)."""
    return orjson.dumps({"i": [nb for nb, _ in top], "w": [round(x, 6) for _, x in top]}).decode()


def count_after(count: float, w: float) -> float:
    """Item side: the item's interaction count, the normaliser of its co-occurrence weights."""
    return count + 1.0 if w > 0 else count


def known_counts_after(
    known: Mapping[str, float],
    updates: Iterable[tuple[str, float | None]],
    row: Mapping[str, float],
) -> dict[str, float]:
    """Item side: the neighbours' counts as the row last heard them, after some pair updates
    ((neighbour, count or None)); only the neighbours still in ``row`` (``row_after``'s
    bound drops the others) are kept."""
    new = {nb: c for nb, c in known.items() if nb in row}
    for nb, c in updates:
        if c is not None and nb in row:
            new[nb] = float(c)
    return new


def history_weights(
    top: Sequence[tuple[str, float]], known: Mapping[str, float], alpha: float
) -> list[float]:
    """Item side: the weight of each published entry for the "history" feature,
    ``w / max(count(neighbour), 1) ** alpha``; a neighbour of unknown count counts 1."""
    if alpha == 0:
        return [w for _, w in top]
    return [history_weight(w, known.get(nb), alpha) for nb, w in top]


def history_weight(w: float, count: float | None, alpha: float) -> float:
    """One entry of ``history_weights``: ``w / max(count, 1) ** alpha`` (None: count 1)."""
    return w if count is None or alpha == 0 else w / max(count, 1.0) ** alpha


@dataclass
class CoocTable:
    """The item side in one process (tests, small deployments): rows and counts in dicts.
    The stream keeps the same rows in a Faust Table keyed by item id."""

    params: CoocParams
    rows: dict[str, dict[str, float]]
    counts: dict[str, float]
    known: dict[str, dict[str, float]] = field(default_factory=dict)  # known_counts_after

    @classmethod
    def empty(cls, params: CoocParams) -> CoocTable:
        return cls(params, {}, {}, {})

    def apply(self, item_id: str, w: float, pairs: Sequence[tuple[str, str, float]]) -> None:
        """One event's pairs (``cooc_pairs``), without neighbour counts."""
        self.counts[item_id] = count_after(self.counts.get(item_id, 0.0), w)
        by_row: dict[str, list[tuple[str, float, float | None]]] = {}
        for r, nb, pw in pairs:
            by_row.setdefault(r, []).append((nb, pw, None))
        self.apply_rows(by_row)

    def record(self, recent: Sequence[tuple[str, float]], item_id: str, w: float) -> None:
        """One event as the stream sends it: ``cooc_records`` with the counts the user side
        would have fetched (the table's own, 0 for an item never taken, for the event's item
        and every recent item)."""
        fetched = [item_id, *(i for i, _ in recent)]
        counts = {i: self.counts.get(i, 0.0) for i in fetched}
        rows = cooc_records(recent, item_id, w, self.params, counts)
        self.counts[item_id] = count_after(self.counts.get(item_id, 0.0), w)
        self.apply_rows(rows)

    def apply_rows(self, by_row: Mapping[str, Sequence[tuple[str, float, float | None]]]) -> None:
        for r, ups in by_row.items():
            if not ups:
                continue
            pairs = [(nb, pw) for nb, pw, _ in ups]
            row = self.rows[r] = row_after(self.rows.get(r, {}), pairs, self.params.max_row)
            self.known[r] = known_counts_after(
                self.known.get(r, {}), [(nb, c) for nb, _, c in ups], row
            )

    def neighbours(self, item_id: str) -> list[tuple[str, float]]:
        return top_neighbours(self.rows.get(item_id, {}), self.params.top_n)

    def history_row(self, item_id: str) -> list[tuple[str, float]]:
        """The published "history" row (``published_rows``) with its weights
        (``history_weights``)."""
        _, top = published_rows(self.rows.get(item_id, {}), self.params)
        hw = history_weights(top, self.known.get(item_id, {}), self.params.history_alpha)
        return [(nb, x) for (nb, _), x in zip(top, hw, strict=True)]


def pack_row(
    top: Sequence[tuple[str, float]], seen_bits: int, weights: Sequence[float] | None = None
) -> dict[str, str]:
    """Item side: a published row in the form ranking reads per request without hashing its
    ids again: ``cf_pos`` the neighbours' Bloom positions (uint16 x 4 each, base64; valid for
    filters of ``seen_bits`` <= 65,536 bits) and ``cf_w`` their "history" weights (float32,
    base64; ``weights``, e.g. ``history_weights``, else the row's own), in the order of
    ``top``. Goes into the item's payload next to ``cf_top``."""
    pos = bloom.positions_matrix([i for i, _ in top], seen_bits).astype("<u2")
    w = np.asarray([x for _, x in top] if weights is None else list(weights), dtype="<f4")
    return {
        "cf_pos": base64.b64encode(pos.tobytes()).decode(),
        "cf_w": base64.b64encode(w.tobytes()).decode(),
    }


def unpack_row(payload: Mapping[str, object]) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint16[N_HASHES, m] Bloom positions, one row per hash, float64[m] weights) from a
    payload written with ``pack_row``; None when the payload has none. The layout is the one
    ``CandidateSet.history_sums`` gathers with (one contiguous index array per hash).

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
    out = None
    if len(pos) == len(wts):
        cols = np.ascontiguousarray(pos.T, dtype=np.uint16)
        out = (cols, wts.astype(np.float64))
        cols.flags.writeable = out[1].flags.writeable = False  # shared by every request
    return _ROWS.put(key, out)


# (cf_pos, cf_w) -> decoded row; 16 B an entry (~6.4 KB at the default 400 entries, the
# most a row publishes), emptied at 20,000 (at most ~128 MB).
_ROWS: BoundedMemo[tuple[str, str], tuple[np.ndarray, np.ndarray] | None] = BoundedMemo(20_000)
_MISSING = object()


def collab_candidates(
    recent: Sequence[tuple[str, float]],
    seeds: Mapping[str, Seed],
    exclude: set[str],
    limit: int,
    params: ScoreParams,
) -> list[str]:
    """The ``limit`` ids with the largest seed-weighted co-occurrence (what feature "cf" ranks
    high), best first, ties by id: the collaborative source of the candidate set. ``recent``:
    the state's (item, event weight) list; ``seeds``: the fetched recent items."""
    parts = []
    for item_id, a in recency_weights(recent, params):
        seed = seeds.get(item_id)
        if seed is None or not seed.cf_top:
            continue
        scale = a / max(seed.cf_count, 1.0) ** params.cf_alpha
        # cf_top is published best first: an id outside a seed's first ``limit`` entries adds
        # little, and reading fewer entries is most of this function's cost.
        ids, w = seed.cf_arrays
        parts.append((ids, w[:limit] * scale))
    if not parts:
        return []
    # Ids as int codes, summed with one bincount in seed order (the same additions, in the
    # same order, as a dict of running totals).
    _IDS.reserve(sum(len(x) for _, x in parts))
    codes = np.concatenate([_IDS.codes(ids, limit) for ids, _ in parts])
    uniq, inv = np.unique(codes, return_inverse=True)
    total = np.bincount(inv, weights=np.concatenate([x for _, x in parts]), minlength=len(uniq))
    gone = [c for i in exclude if (c := _IDS.code.get(i)) is not None]
    if gone:  # uniq is sorted: find the excluded codes in it
        g = np.asarray(gone, dtype=np.intp)
        at = np.minimum(np.searchsorted(uniq, g), len(uniq) - 1)
        keep = np.ones(len(uniq), dtype=bool)
        keep[at[uniq[at] == g]] = False
        uniq, total = uniq[keep], total[keep]
    if len(uniq) > limit:
        cut = np.partition(total, len(total) - limit)[len(total) - limit]  # limit-th largest
        best = total >= cut
        uniq, total = uniq[best], total[best]
    names = _IDS.names
    ranked = sorted(
        zip(total.tolist(), uniq.tolist(), strict=True), key=lambda t: (-t[0], names[t[1]])
    )
    return [names[c] for _, c in ranked[:limit]]
