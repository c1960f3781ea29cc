"""Candidate retrieval from the item store + the learned scorer, for one user. The async part
of ranking/: everything it decides is done by the pure functions of ranking/features.py, the same
ones `recstream evaluate` replays.

Per call, two store reads after the seeds are known (overlapped where the store is a server):
  seeds       the user's recent positive items (``recency_weights``), with vectors and payload:
              their ``cf_top`` rows (co-occurrence, published by the item side) and titles
  candidates  one batch: nearest items to the long-term interest per modality, trending, fresh,
              with the user's exact exclusions applied by the engine
  neighbours  the strongest ``cf_top`` entries of the seeds that the batch did not return
Older seen items are removed client-side by the user's Bloom filter (``excluded_rows``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from recstream.clock import now_ms
from recstream.ranking.candidates import CandidateSet
from recstream.ranking.collab import collab_candidates, unpack_row
from recstream.ranking.features import (
    RankedItem,
    RowPairs,
    Scored,
    ScoreParams,
    Seed,
    interest_units,
    recency_weights,
    score_candidates,
)
from recstream.ranking.memo import BoundedMemo
from recstream.ranking.rank import rank_candidates
from recstream.ranking.state import UserState
from recstream.ranking.store import CANDIDATE_FIELDS, CandidateQuery, ItemStore, StoredItem


def seed_of(item: StoredItem) -> Seed:
    """A fetched recent item as a Seed. Its ``cf_top`` row (its 100 strongest neighbours) is
    parsed once per published version. The item side publishes it as compact JSON text in
    columns (collab.cf_top_text), and the text identifies the version; older payloads hold
    [[id, weight], ...] pairs, as text or as lists (these keyed by the packed
    ``cf_pos``/``cf_w`` strings written with them)."""
    p = item.payload
    raw = p.get("cf_top") or ()
    if isinstance(raw, str):
        text_key = (item.item_id, raw)
        hit = _TOPS.get(text_key)
        if hit is None:
            hit = _parsed(orjson.loads(raw))
            _TOPS.put(text_key, hit)
    else:
        pos, w = p.get("cf_pos"), p.get("cf_w")
        key: tuple[str, ...] | None = (
            (item.item_id, pos, w) if isinstance(pos, str) and isinstance(w, str) else None
        )
        hit = _TOPS.get(key) if key is not None else None
        if hit is None or len(hit) != len(raw):
            hit = _parsed(raw)
            if key is not None:
                _TOPS.put(key, hit)
    return Seed(
        item_id=item.item_id,
        title=item.title,
        vectors=item.vectors,
        cf_top=hit,
        cf_count=float(p.get("cf_count") or 0.0),
    )


def _parsed(raw: Any) -> RowPairs:
    """A published row, as columns ({"i": ids, "w": weights}: collab.cf_top_text) or as
    [[id, weight], ...] pairs (rows published before the columns)."""
    if isinstance(raw, dict):
        ids = [str(i) for i in raw.get("i") or ()]
        w = np.asarray(raw.get("w") or (), dtype=np.float64)
        if len(w) != len(ids):
            raise ValueError(f"cf_top has {len(ids)} ids and {len(w)} weights")
    else:
        ids = [str(i) for i, _ in raw]
        w = np.fromiter((float(x) for _, x in raw), np.float64, len(ids))
    return RowPairs(ids, w)


# (item id, cf_top text) or (item id, cf_pos, cf_w) -> the parsed row; ~10-13 KB each,
# emptied at 5,000.
_TOPS: BoundedMemo[tuple[str, ...], RowPairs] = BoundedMemo(5_000)


@dataclass(frozen=True)
class CandidateAsk:
    """One user's candidate-set question: their state, list length, fetched seeds, and items
    to add (the item an event is about)."""

    state: UserState
    k: int
    seeds: Mapping[str, Seed]
    extra: Sequence[StoredItem] = ()


@dataclass
class Ranked:
    items: list[RankedItem]
    candidates: CandidateSet
    scored: Scored


class Recommender:
    def __init__(
        self,
        store: ItemStore,
        params: ScoreParams,
        *,
        dims: Mapping[str, int],
        candidate_factor: int = 4,
        seen_filter_bits: int,
        clock: Callable[[], int] = now_ms,
    ):
        self.store = store
        self.params = params
        self.dims = dict(dims)
        self.candidate_factor = candidate_factor
        self.seen_filter_bits = seen_filter_bits
        self.clock = clock

    def seed_ids(self, state: UserState) -> list[str]:
        return [i for i, _ in recency_weights(state.recent, self.params)]

    async def candidate_set(
        self,
        state: UserState,
        k: int,
        seeds: Mapping[str, Seed],
        *,
        extra: Sequence[StoredItem] = (),
    ) -> CandidateSet:
        """Candidates for ``state``: the store's batch (similar, trending, fresh) and the
        seeds' strongest co-occurrence neighbours, plus ``extra`` items (e.g. the item an event
        is about, so learning can compare it with the list)."""
        return (await self.candidate_sets([CandidateAsk(state, k, seeds, extra)]))[0]

    async def candidate_sets(self, asks: Sequence[CandidateAsk]) -> list[CandidateSet]:
        """``candidate_set`` for several users (one stream batch's events) with two store
        reads in all: one ``candidates_many`` and one ``get`` of every user's co-occurrence
        neighbours (overlapped where the store is a server)."""
        queries, wants = [], []
        for a in asks:
            limit = a.k * self.candidate_factor
            exclude = a.state.excluded()
            wants.append(collab_candidates(a.state.recent, a.seeds, exclude, limit, self.params))
            queries.append(CandidateQuery(interest_units(a.state.interest), exclude, limit))
        want_all = list(dict.fromkeys(i for want in wants for i in want))
        similar = self.store.candidates_many(queries)
        neighbours = self.store.get(want_all, fields=CANDIDATE_FIELDS) if want_all else _no_items()
        if self.store.concurrent_reads:
            batches, nbrs = await asyncio.gather(similar, neighbours)
        else:
            batches, nbrs = await similar, await neighbours
        out = []
        for a, batch, want in zip(asks, batches, wants, strict=True):
            items = [*a.extra, *batch, *(nbrs[i] for i in want if i in nbrs)]
            counts = {it.item_id: float(it.payload.get("cf_count") or 0.0) for it in items}
            rows = {}  # each candidate's own published row, for the "history" feature
            for it in items:
                row = unpack_row(it.payload)
                if row is not None:
                    rows[it.item_id] = row
            out.append(
                CandidateSet.from_items(
                    items,
                    self.dims,
                    cf_counts=counts,
                    seen_bits=self.seen_filter_bits,
                    cf_rows=rows,
                )
            )
        return out

    def rank(
        self, cs: CandidateSet, state: UserState, seeds: Mapping[str, Seed], k: int, now: int
    ) -> Ranked:
        items, scored = rank_candidates(cs, state, self.params, seeds, now, k)
        return Ranked(items, cs, scored)

    def score(
        self, cs: CandidateSet, state: UserState, seeds: Mapping[str, Seed], now: int
    ) -> Scored:
        return score_candidates(cs, state, self.params, seeds, now)

    async def recommend(
        self,
        state: UserState,
        k: int,
        *,
        seeds: Mapping[str, Seed] | None = None,
        now: int | None = None,
    ) -> list[RankedItem]:
        """Top-k items for the user, never one they interacted with (exact recent ids by the
        engine, older ones by the Bloom filter), disliked, or not (or no longer) in the
        catalog. ``seeds``: the user's recent items as fetched by the caller, if it has them."""
        if seeds is None:
            got = await self.store.get(self.seed_ids(state))
            seeds = {i: seed_of(it) for i, it in got.items()}
        cs = await self.candidate_set(state, k, seeds)
        return self.rank(cs, state, seeds, k, self.clock() if now is None else now).items


async def _no_items() -> dict[str, StoredItem]:
    return {}


def rows_above(scores: np.ndarray, row: int, m: int) -> np.ndarray:
    """The (at most m) best rows that scored above ``row``: what the user passed over."""
    above = np.flatnonzero(scores > scores[row])
    return above[np.argsort(-scores[above], kind="stable")[:m]]
