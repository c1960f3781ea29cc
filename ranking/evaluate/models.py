"""recstream's online model in the harness, driving the stream's own functions:
ranking.state.apply_event (user side), ranking.collab.cooc_pairs / count_after (item side),
ranking.features.feature_matrix / score (ranking) and ranking.learner.bpr_step (learning to rank).

The catalog is one CandidateSet of every item. The item side's co-occurrence rows are one
dense matrix here (the same additions as collab.row_after, without its bound when the
catalog is smaller than ``cooc_max_row``), read through the same top-N truncation the stream
publishes to the vector store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from recstream.ranking import seen
from recstream.ranking.candidates import CandidateSet
from recstream.ranking.collab import cooc_records, count_after, history_weight
from recstream.ranking.diversity import ranked_rows
from recstream.ranking.evaluate.data import Interactions, default_cache
from recstream.ranking.features import (
    excluded_rows,
    feature_matrix,
    recency_weights,
    score,
    user_weights,
)
from recstream.ranking.learner import bpr_step
from recstream.ranking.params import HOUR_MS, cooc_params, score_params
from recstream.ranking.settings import RankingSettings
from recstream.ranking.state import UserState, apply_event, event_weight
from recstream.ranking.store import NO_TREND, trend_after


def ranking_settings(overrides: Sequence[str] = ()) -> RankingSettings:
    """RankingSettings (env RECSTREAM_RANKING_*) with FIELD=VALUE overrides (JSON values)."""
    base = RankingSettings().model_dump()
    for o in overrides:
        key, _, raw = o.partition("=")
        if key not in base:
            raise SystemExit(f"unknown ranking setting {key!r}")
        try:
            val = orjson.loads(raw)
        except orjson.JSONDecodeError:
            val = raw
        if isinstance(base[key], dict) and isinstance(val, dict):
            val = {**base[key], **val}
        base[key] = val
    return RankingSettings.model_validate(base)


def encode_items(data: Interactions, model_dir: Path | None = None) -> np.ndarray | None:
    """Item texts through the real MiniLM encoder, cached per text list; None if no texts."""
    if not any(data.item_text):
        return None
    digest = hashlib.sha256("\n".join(data.item_text).encode()).hexdigest()[:16]
    path = default_cache() / f"text-minilm-{digest}.npy"
    if path.exists():
        return np.load(path)
    from recstream.encoders.settings import EncoderSettings
    from recstream.encoders.text import TextEncoder

    root = Path(model_dir or EncoderSettings().model_dir)
    done = root / "text-minilm"
    if (done / "model.onnx").exists() and (done / "tokenizer.json").exists():
        enc = TextEncoder.from_export_dir(done, device="cpu")  # exported already: just load it
    else:
        enc = TextEncoder(root, device="cpu")
    out = np.concatenate(
        [enc.encode(data.item_text[i : i + 64]) for i in range(0, len(data.item_text), 64)]
    ).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


class RecstreamModel:
    name = "recstream"

    def __init__(
        self,
        data: Interactions,
        settings: RankingSettings,
        text: np.ndarray | None,
        stream_cost: bool = False,
        stream_repeats: int = 1,
        stream_every: int = 1,
    ) -> None:
        self.data = data
        self.s = settings
        self.params = score_params(settings)
        self.cooc = cooc_params(settings)
        n = data.n_items
        has_text = text is not None
        vec = text if text is not None else np.zeros((n, 1), np.float32)
        self.cs = CandidateSet(
            ids=list(data.item_ids),
            vectors={"text": vec},
            present={"text": np.full(n, has_text)},
            trend=np.full(n, NO_TREND),
            published_at=np.full(n, np.nan),
            cf_count=np.zeros(n),
            titles=list(data.item_title) or [None] * n,
            tags=list(data.item_tags) or [()] * n,
            seen_bits=settings.seen_filter_bits,
        )
        self.co = np.zeros((n, n), dtype=np.float32)  # item side: row r, neighbour column
        self.row_version = np.zeros(n, dtype=np.int64)  # bumped when row r changes
        # The neighbours' counts as each row last heard them (collab.known_counts_after; 0:
        # none yet) and the rows' "history" weights (collab.history_weight), transposed:
        # "history" reads the taken items' columns.
        self.known = np.zeros((n, n), dtype=np.float32)
        self.hist_t = np.zeros((n, n), dtype=np.float32)
        # The entries each row publishes for "history" (collab.published_rows: its
        # history_top_n strongest, ties by id) with their hist_t weights, 0 elsewhere,
        # transposed like hist_t: the stream's user side only ever sees those.
        self.hist_pub_t = np.zeros((n, n), dtype=np.float32)
        self._nnz = np.zeros(n, dtype=np.int64)  # entries per row
        self._pub_min = np.zeros(n, dtype=np.float32)  # <= a row's weakest published weight
        self._id_rank = np.argsort(np.argsort(np.asarray(data.item_ids, dtype=str), kind="stable"))
        self.states: dict[int, UserState] = {}
        self.half_life_ms = settings.interest_half_life_hours * HOUR_MS
        self.trend_half_life_ms = settings.trending_half_life_hours * HOUR_MS
        self._last: tuple[int, np.ndarray, np.ndarray] | None = None
        self.stream = None
        if stream_cost:
            from recstream.ranking.evaluate.stream_cost import StreamPath

            self.stream = StreamPath(self, stream_repeats)
        self.stream_every = max(1, stream_every)

    def params_seeds(self, st: UserState) -> list[tuple[str, float]]:
        return recency_weights(st.recent, self.params)

    def shadow(self, j: int) -> None:
        """Before learning interaction j: time the stream's path for it (if enabled; on every
        ``stream_every``-th interaction)."""
        if self.stream is not None and j % self.stream_every == 0:
            self.stream.run(j, self.states.get(int(self.data.user[j])) or UserState())

    def listed(self, s: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray | None:
        """The k items the stream would list from scores ``s`` among ``cand`` when the lists
        are diversified (diversity.ranked_rows over the catalog, as rank_candidates does over a
        candidate set), else None: the protocols then rank by score alone."""
        if self.params.diversity <= 0:
            return None
        rows = ranked_rows(self.cs, np.where(cand, s, -np.inf), k, self.params)
        return np.asarray(rows, dtype=np.intp)

    def report(self) -> dict[str, float]:
        """Extra figures for the JSON report: the stream path's cost (stream_cost.py)."""
        return self.stream.summary() if self.stream else {}

    # -- what the vector store would return for the user's seeds ------------------------------
    def _neighbours(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        r = self.co[row]
        n = self.cooc.top_n
        nz = np.flatnonzero(r)
        if len(nz) > n:
            nz = nz[np.argpartition(-r[nz], n - 1)[:n]]
        return nz, r[nz].astype(np.float64)

    def history_entries(self, row: int) -> np.ndarray:
        """The entries row ``row`` publishes for "history", best first, ties by id: the item
        side's collab.published_rows."""
        r, n = self.co[row], self.cooc.history_top_n
        nz = np.flatnonzero(r)
        if len(nz) > n:  # the n-th strongest and everything tied with it
            nz = nz[r[nz] >= np.partition(r[nz], len(nz) - n)[len(nz) - n]]
        return nz[np.lexsort((self._id_rank[nz], -r[nz]))[:n]]

    def _republish(self, row: int) -> None:
        """Column ``row`` of ``hist_pub_t`` from scratch: ``history_entries(row)`` with their
        ``hist_t`` weights; ``_pub_min[row]`` the weakest of them."""
        top = self.history_entries(row)
        col = self.hist_pub_t[:, row]
        col[:] = 0.0
        col[top] = self.hist_t[top, row]
        self._pub_min[row] = self.co[row, top].min() if len(top) else 0.0

    def features(self, st: UserState, now_ms: int) -> np.ndarray:
        seeds = recency_weights(st.recent, self.params)
        idx = self.cs.index
        neighbours, counts = {}, {}
        short = np.zeros(self.cs.vectors["text"].shape[1], np.float32)
        for item_id, a in seeds:
            r = idx[item_id]
            neighbours[item_id] = self._neighbours(r)
            counts[item_id] = float(self.cs.cf_count[r])
            short += np.float32(a) * self.cs.vectors["text"][r]
        # Whole-history signal: each item's published history row (its cooc_history_top_n
        # strongest entries), summed over the items the user took.
        history = None
        if st.seen_filter:
            taken = np.flatnonzero(seen.contains_many(st.seen_filter, self.cs.seen_pos))
            # The taken columns only (rows of the transpose): tens of items, not the catalog.
            history = self.hist_pub_t[taken].sum(axis=0, dtype=np.float64)
        return feature_matrix(
            self.cs,
            interest=st.interest,
            short_interest={"text": short} if seeds else {},
            seeds=seeds,
            neighbours=neighbours,
            seed_counts=counts,
            now_ms=now_ms,
            params=self.params,
            history=history,
        )

    def scores(self, user: int, now_ms: int) -> np.ndarray:
        st = self.states.get(user) or UserState()
        f = self.features(st, now_ms)
        w = user_weights(self.params, st.weights)
        s = score(f, w, excluded_rows(self.cs, st.excluded(), st.seen_filter))
        self._last = (user, f, s)
        return s

    def learn(self, j: int) -> None:
        d = self.data
        u, i, ts = int(d.user[j]), int(d.item[j]), int(d.ts[j])
        etype = d.etype[j]
        value = None if np.isnan(d.value[j]) else float(d.value[j])
        st = self.states.get(u) or UserState()
        item_id = d.item_ids[i]
        w = event_weight(etype, value, self.s.event_weights)
        deltas = st.weights
        if w > 0 and self.s.learning_rate > 0 and st.n_events:
            if self._last is None or self._last[0] != u:
                self.scores(u, ts)
            assert self._last is not None
            _, f, s = self._last
            above = np.flatnonzero(s > s[i])
            if len(above):
                m = self.s.learning_negatives
                above = above[np.argsort(-s[above], kind="stable")[:m]]
                deltas = bpr_step(
                    st.weights,
                    self.params.prior,
                    f[i],
                    f[above],
                    self.s.learning_rate,
                    self.s.learning_l2,
                )
        self._last = None
        # item side: co-occurrence rows and counts, fed by the user's recent items; each pair
        # carries its neighbour's count when the stream's user side has it (the event's item
        # and the seeds it fetched: streams/handlers.py _send_item_activity)
        idx, alpha = self.cs.index, self.cooc.history_alpha
        fetched = [item_id, *(s for s, _ in recency_weights(st.recent, self.params))]
        counts = {s: float(self.cs.cf_count[idx[s]]) for s in fetched}
        top_n = self.cooc.history_top_n
        for r, pairs in cooc_records(st.recent, item_id, w, self.cooc, counts).items():
            ri = idx[r]
            stale = False
            for nb, pw, c in pairs:
                ni = idx[nb]
                self._nnz[ri] += self.co[ri, ni] == 0
                self.co[ri, ni] += np.float32(pw)
                if c is not None:
                    self.known[ri, ni] = c
                known = float(self.known[ri, ni]) or None
                hw = self.hist_t[ni, ri] = history_weight(float(self.co[ri, ni]), known, alpha)
                # what the row publishes for "history" (hist_pub_t): every entry while it
                # has at most top_n; past that a published entry keeps its place (weights
                # only grow), another one can only enter by reaching the weakest published
                # weight, which _pub_min bounds from below
                if self._nnz[ri] <= top_n or self.hist_pub_t[ni, ri] != 0:
                    self.hist_pub_t[ni, ri] = hw
                elif self.co[ri, ni] >= self._pub_min[ri]:
                    stale = True
            if stale:
                self._republish(ri)
            if pairs:
                self.row_version[ri] += 1
        self.cs.cf_count[i] = count_after(float(self.cs.cf_count[i]), w)
        if w > 0:
            self.cs.trend[i] = trend_after(float(self.cs.trend[i]), w, ts, self.trend_half_life_ms)
        vec = self.cs.vectors["text"][i] if self.cs.present["text"][i] else None
        self.states[u] = apply_event(
            st,
            item_id=item_id,
            item_title=d.item_title[i] if d.item_title else None,
            item_vectors={"text": vec} if vec is not None else {},
            event_type=etype,
            ts=ts,
            value=value,
            weights=self.s.event_weights,
            half_life_ms=self.half_life_ms,
            recent_positive=self.s.recent_positive,
            recent_items=self.s.recent_items,
            seen_filter_bits=self.s.seen_filter_bits,
            user_weights=deltas,
        )
