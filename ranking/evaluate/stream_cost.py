"""The stream's per-event work, timed inside the harness on the replay's own user states.

The whole-catalog scoring that the protocols need for their metrics is not what the stream
does: per event the user-events agent (streams/handlers.py) reads the user's state, builds a
candidate set of a few hundred items from its vector-store results, scores it with the
pre-event state (to learn from what the user took), applies the event, writes the state and
ranks the same set again for the recommendation it publishes. ``StreamPath.run`` does the same
calls on a candidate set built the way ranking/recommender.py builds it:

  similar     the ``limit`` catalog items nearest the long-term interest (exact exclusions)
  trending    the ``limit`` items with the highest decayed popularity
  fresh       the ``limit`` newest items with a published time (none in MovieLens)
  neighbours  ``collab_candidates``: the ``limit`` strongest co-occurrence neighbours of the
              seeds (each seed's published top-N row)
  the event's item (learning compares it with the list)

Every candidate comes with its payload's packed row (``cf_pos``/``cf_w``, collab.pack_row:
its own co-occurrence row as Bloom positions and "history" weights, the model's
``hist_t``); decoding it is timed, and the set computes the "history" feature from it against
the user's seen filter.

with ``limit = k * candidate_factor``. Finding similar/trending/fresh ids and building the
StoredItem objects is the vector store's round trip and is not timed; everything from
``UserState.from_dict`` to the ranked list is, including ``recommender.seed_of`` on the seeds
as fetched (whole payload, ``cf_top`` as the JSON text the item side publishes) and decoding
every candidate's packed row (both memoised per published row version, as in the stream). Its
results are thrown away: the replay's state stays the one the whole-catalog model learned, so
the metrics are unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Protocol

import numpy as np
import orjson

from recstream.ranking.candidates import CandidateSet
from recstream.ranking.collab import (
    CoocParams,
    cf_top_text,
    collab_candidates,
    cooc_pairs,
    pack_row,
    unpack_row,
)
from recstream.ranking.evaluate.data import Interactions
from recstream.ranking.features import ScoreParams, score_candidates
from recstream.ranking.learner import bpr_step
from recstream.ranking.rank import rank_candidates
from recstream.ranking.recommender import seed_of
from recstream.ranking.settings import RankingSettings
from recstream.ranking.state import UserState, apply_event, event_weight
from recstream.ranking.store import StoredItem


class HarnessModel(Protocol):
    """What the timer reads of the harness's model (ranking/evaluate/models.py, which builds
    the timer: this module does not import it back)."""

    s: RankingSettings
    params: ScoreParams
    cooc: CoocParams
    half_life_ms: float
    cs: CandidateSet
    data: Interactions
    co: np.ndarray
    hist_t: np.ndarray
    row_version: np.ndarray

    def params_seeds(self, st: UserState) -> list[tuple[str, float]]: ...

    def _neighbours(self, row: int) -> tuple[np.ndarray, np.ndarray]: ...

    def history_entries(self, row: int) -> Any: ...


# The timed path's parts, in order (summary(): p50 / p99 of each, ms):
#   state_read      UserState.from_dict of the state's JSON
#   seeds           recommender.seed_of on the fetched recent items
#   collab          ranking.collab.collab_candidates (the co-occurrence source)
#   candidate_set   the candidates' counts and packed rows, CandidateSet.from_items
#   score_before    scoring the set with the pre-event state and the learning step
#   state_update    the event's co-occurrence pairs, apply_event, the state's JSON
#   rank_after      rank_candidates with the post-event state (the published list)
PHASES = (
    "state_read",
    "seeds",
    "collab",
    "candidate_set",
    "score_before",
    "state_update",
    "rank_after",
)


class StreamPath:
    def __init__(self, model: HarnessModel, repeats: int = 1) -> None:
        self.m = model
        self.repeats = max(1, repeats)
        self.ns: list[int] = []  # first run of each event
        self.best_ns: list[int] = []  # fastest of ``repeats`` runs: other processes filtered
        self.sizes: list[int] = []
        # per event, ns in each of PHASES (first run, and the fastest run's)
        self.phase_ns: list[list[int]] = []
        self.best_phase_ns: list[list[int]] = []
        self.limit = model.s.k * model.s.candidate_factor
        self._tops: dict[int, tuple[int, list[tuple[str, float]]]] = {}
        self._packs: dict[int, tuple[int, dict[str, str]]] = {}

    def _item(self, r: int) -> StoredItem:
        cs = self.m.cs
        vec = cs.vectors["text"][r]
        return StoredItem(
            item_id=cs.ids[r],
            title=cs.titles[r],
            tags=cs.tags[r],
            published_at=None if np.isnan(cs.published_at[r]) else int(cs.published_at[r]),
            trend=float(cs.trend[r]),
            vectors={"text": vec} if cs.present["text"][r] else {},
            payload={"cf_count": float(cs.cf_count[r]), **self._packed(r)},
        )

    def _top(self, r: int) -> list[tuple[str, float]]:
        """Row r's published cf_top: its strongest neighbours, best first (rebuilt only when
        the row changed, as the item side republishes it)."""
        ver = int(self.m.row_version[r])
        hit = self._tops.get(r)
        if hit is not None and hit[0] == ver:
            return hit[1]
        rows, w = self.m._neighbours(r)
        top = sorted(zip(rows.tolist(), w.tolist(), strict=True), key=lambda t: (-t[1], t[0]))
        out = [(self.m.cs.ids[n], x) for n, x in top]
        self._tops[r] = (ver, out)
        return out

    def _packed(self, r: int) -> dict[str, str]:
        """Row r's payload fields cf_pos / cf_w (collab.pack_row), rebuilt when it changed."""
        ver = int(self.m.row_version[r])
        hit = self._packs.get(r)
        if hit is None or hit[0] != ver:
            nbrs = self.m.history_entries(r).tolist()  # its published "history" entries
            top = [(self.m.cs.ids[n], float(self.m.co[r, n])) for n in nbrs]
            hw = [float(self.m.hist_t[n, r]) for n in nbrs]  # their "history" weights
            hit = (ver, pack_row(top, self.m.s.seen_filter_bits, hw))
            self._packs[r] = hit
        return hit[1]

    def _seed_item(self, item_id: str) -> StoredItem:
        """A seed as the store returns it: the item with its whole payload (``cf_top`` as the
        JSON text the item side writes); ``recommender.seed_of`` parses it, timed."""
        it = self._item(self.m.cs.index[item_id])
        top = cf_top_text(self._top(self.m.cs.index[item_id]))
        return dataclasses.replace(it, payload={**it.payload, "cf_top": top})

    def _store_batch(self, st: UserState) -> list[int]:
        """Rows the store's batch query returns: similar, trending, fresh (exact exclusions)."""
        cs, lim = self.m.cs, self.limit
        out = np.zeros(len(cs), dtype=bool)
        blocked = np.zeros(len(cs), dtype=bool)
        for i in st.excluded():
            blocked[cs.index[i]] = True
        v = st.interest.get("text")
        if v is not None and np.any(v):
            sim = np.where(blocked, -np.inf, cs.vectors["text"] @ v)
            out[np.argsort(-sim, kind="stable")[:lim]] = True
        out[np.argsort(-np.where(blocked, -np.inf, cs.trend), kind="stable")[:lim]] = True
        pub = np.where(np.isnan(cs.published_at) | blocked, -np.inf, cs.published_at)
        out[np.argsort(-pub, kind="stable")[:lim]] = True
        out &= ~blocked
        return np.flatnonzero(out).tolist()

    def run(self, j: int, st: UserState) -> None:
        m, d = self.m, self.m.data
        i, ts, etype = int(d.item[j]), int(d.ts[j]), d.etype[j]
        value = None if np.isnan(d.value[j]) else float(d.value[j])
        raw = orjson.dumps(st.to_dict())
        # -- vector-store round trip (not timed): seeds with payload, the candidate batch ----
        seed_ids = [s for s, _ in m.params_seeds(st)]
        seeds = {s: self._seed_item(s) for s in seed_ids}
        batch = [self._item(r) for r in self._store_batch(st)]
        item = self._item(i)
        runs = []
        for _ in range(self.repeats):
            phases, n = self._timed(raw, seeds, batch, item, ts, etype, value)
            runs.append(phases)
        self.ns.append(sum(runs[0]))
        best = min(runs, key=sum)
        self.best_ns.append(sum(best))
        self.phase_ns.append(runs[0])
        self.best_phase_ns.append(best)
        self.sizes.append(n)

    def _timed(
        self,
        raw: bytes,
        seed_items: dict[str, StoredItem],
        batch: list[StoredItem],
        item: StoredItem,
        ts: int,
        etype: str,
        value: float | None,
    ) -> tuple[list[int], int]:
        """ns spent in each of PHASES, and the candidate set's size."""
        m = self.m
        clock = time.perf_counter_ns
        t = [clock()]
        state = UserState.from_dict(orjson.loads(raw))
        t.append(clock())
        seeds = {i: seed_of(it) for i, it in seed_items.items()}
        t.append(clock())
        want = collab_candidates(state.recent, seeds, state.excluded(), self.limit, m.params)
        t.append(clock())
        nbrs = [self._item(m.cs.index[x]) for x in want]  # store.get(want): not timed
        t.append(clock())
        items = [item, *batch, *nbrs]
        counts = {it.item_id: float(it.payload["cf_count"]) for it in items}
        rows = {it.item_id: unpack_row(it.payload) for it in items}
        cs = CandidateSet.from_items(
            items, {"text": m.cs.vectors["text"].shape[1]}, cf_counts=counts,
            seen_bits=m.s.seen_filter_bits, cf_rows={i: r for i, r in rows.items() if r},
        )  # fmt: skip
        t.append(clock())
        w = event_weight(etype, value, m.s.event_weights)
        deltas = state.weights
        if w > 0 and m.s.learning_rate > 0 and state.n_events:
            before = score_candidates(cs, state, m.params, seeds, ts)
            s = before.scores
            above = np.flatnonzero(s > s[0])
            above = above[np.argsort(-s[above], kind="stable")[: m.s.learning_negatives]]
            if len(above):
                deltas = bpr_step(
                    state.weights, m.params.prior, before.features[0], before.features[above],
                    m.s.learning_rate, m.s.learning_l2,
                )  # fmt: skip
        t.append(clock())
        cooc_pairs(state.recent, item.item_id, w, m.cooc)
        after = apply_event(
            state, item_id=item.item_id, item_title=item.title, item_vectors=item.vectors,
            event_type=etype, ts=ts, value=value, weights=m.s.event_weights,
            half_life_ms=m.half_life_ms, recent_positive=m.s.recent_positive,
            recent_items=m.s.recent_items, seen_filter_bits=m.s.seen_filter_bits,
            user_weights=deltas,
        )  # fmt: skip
        orjson.dumps(after.to_dict())
        t.append(clock())
        rank_candidates(cs, after, m.params, seeds, ts, m.s.k)
        t.append(clock())
        d = [b - a for a, b in itertools.pairwise(t)]
        del d[3]  # the neighbours' store.get
        return d, len(cs)

    def summary(self) -> dict[str, float]:
        if not self.ns:
            return {}
        a = np.asarray(self.ns, dtype=np.float64) / 1e6
        best = np.asarray(self.best_ns, dtype=np.float64) / 1e6
        extra = {}
        if self.repeats > 1:
            extra = {
                f"stream_best_of_{self.repeats}_ms_p50": float(np.percentile(best, 50)),
                f"stream_best_of_{self.repeats}_ms_p99": float(np.percentile(best, 99)),
            }
        for name, runs in (
            ("stream", self.phase_ns),
            (f"stream_best_of_{self.repeats}", self.best_phase_ns),
        ):
            if name != "stream" and self.repeats == 1:
                continue
            ph = np.asarray(runs, dtype=np.float64) / 1e6
            for k, phase in enumerate(PHASES):
                extra[f"{name}_{phase}_ms_p50"] = float(np.percentile(ph[:, k], 50))
                extra[f"{name}_{phase}_ms_p99"] = float(np.percentile(ph[:, k], 99))
        return {
            **extra,
            "stream_ms_p50": float(np.percentile(a, 50)),
            "stream_ms_p99": float(np.percentile(a, 99)),
            "stream_ms_mean": float(a.mean()),
            "stream_candidates_mean": float(np.mean(self.sizes)),
            "stream_candidates_max": int(np.max(self.sizes)),
        }
