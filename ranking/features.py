"""Ranking: merge candidates from several sources and order them. Pure and synchronous.

The learned scorer (``feature_matrix`` + ``score`` over a ranking.candidates.CandidateSet) is
recstream's online model: the stream and ``recstream evaluate`` both run it. Features, each
scaled to about [0, 1] within the candidate set so fixed weights mean the same for every user:
  content     cosine of the user's long-term interest and the item (per modality, weighted)
  recent      cosine of the mean of the user's latest items and the item (short-term interest)
  cf          co-occurrence with the user's recent items (ranking.collab), weighted by recency,
              normalised by the items' counts, divided by the candidate set's maximum
  popularity  the item's decayed popularity, log-scaled to [0, 1] among the candidates
  freshness   0.5 ** (age / freshness_half_life)
  history     whole-history collaborative signal: the sum of the candidate's own published
              co-occurrence row over the neighbours in the user's seen Bloom filter (every item
              they ever took), each entry / count(neighbour) ** history_alpha (the item side
              publishes the row so: ranking.collab.history_weights), / count(candidate) **
              history_beta, divided by the set's maximum
score = features @ (prior weights + the user's learned deltas, ranking.learner).
The reason shown to the user names the term that contributed most (``reasons``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import overload

import numpy as np

from recstream.ranking import seen
from recstream.ranking.candidates import CandidateSet
from recstream.ranking.state import UserState


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    score: float
    reason: str

    def to_wire(self) -> dict[str, object]:
        return {"item_id": self.item_id, "score": round(self.score, 6), "reason": self.reason}


def _unit(v: np.ndarray) -> np.ndarray | None:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else None


def interest_units(interest: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Normalised interest per modality; modalities with no net interest are dropped."""
    out = {}
    for m, v in interest.items():
        u = _unit(np.asarray(v, dtype=np.float32))
        if u is not None:
            out[m] = u
    return out


FEATURES = ("content", "recent", "cf", "popularity", "freshness", "history")


@dataclass(frozen=True)
class ScoreParams:
    prior: tuple[float, ...]  # one weight per FEATURES entry
    modality_weights: Mapping[str, float]
    trending_half_life_ms: float
    freshness_half_life_ms: float
    cf_alpha: float = 0.5  # co-occurrence / count(recent item) ** alpha
    cf_beta: float = 0.5  # ... / count(candidate) ** beta
    recency_decay: float = 0.8  # weight of the d-th latest item: decay ** (d - 1)
    recent_window: int = 16  # recent items used as seeds
    history_beta: float = 0.7  # history / count(candidate) ** beta
    # An anchor was "liked" (reasons) when taken with at least this event weight: like 2,
    # share 3, complete >= 1, click 1, a view watched >= 90% 0.7 (RankingSettings weights).
    liked_weight: float = 0.7
    # Diversity (``diversify``: maximal marginal relevance): 0 ranks by score alone; lambda
    # in (0, 1) trades score against likeness to the items already in the list, over the
    # k * diversity_pool best candidates.
    diversity: float = 0.0
    diversity_pool: int = 3


def recency_weights(
    recent: Sequence[tuple[str, float]], params: ScoreParams
) -> list[tuple[str, float]]:
    """(item, weight) of the positive recent items, newest first, weight decay ** (d - 1)."""
    out: list[tuple[str, float]] = []
    for item_id, w in reversed(recent):
        if w > 0:
            out.append((item_id, params.recency_decay ** len(out)))
            if len(out) >= params.recent_window:
                break
    return out


def _cosines(
    cs: CandidateSet, interest: Mapping[str, np.ndarray], mw: Mapping[str, float]
) -> np.ndarray:
    num = np.zeros(len(cs), dtype=np.float32)
    den = np.zeros(len(cs), dtype=np.float32)
    for m, v in interest.items():
        mat = cs.vectors.get(m)
        u = _unit(np.asarray(v, dtype=np.float32))
        if mat is None or u is None or mat.shape[1] != u.shape[0]:
            continue
        w = np.float32(mw.get(m, 1.0))
        num += w * (mat @ u)
        den += w * cs.present[m]
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def feature_matrix(
    cs: CandidateSet,
    *,
    interest: Mapping[str, np.ndarray],
    short_interest: Mapping[str, np.ndarray],
    seeds: Sequence[tuple[str, float]],
    neighbours: Mapping[str, tuple[np.ndarray, np.ndarray]] | None,
    seed_counts: Mapping[str, float],
    now_ms: int,
    params: ScoreParams,
    history: np.ndarray | None = None,
    cf_parts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """float32[n, len(FEATURES)]. ``seeds``: recency_weights of the user's recent items;
    ``neighbours``: seed id -> (candidate rows, co-occurrence weights), e.g. from
    CandidateSet.neighbour_arrays of the seed's published top neighbours; ``seed_counts``: the
    seeds' interaction counts; ``cf_parts``: ``_cf_parts`` of those, when the caller has it."""
    n = len(cs)
    f = np.zeros((n, len(FEATURES)), dtype=np.float32)
    if n == 0:
        return f
    if interest:
        f[:, 0] = _cosines(cs, interest, params.modality_weights)
    if short_interest:
        f[:, 1] = _cosines(cs, short_interest, params.modality_weights)
    parts = cf_parts
    if parts is None and seeds and neighbours:
        parts = _cf_parts(seeds, neighbours, seed_counts, params)
    if parts is not None:
        # One bincount over every seed's entries, in seed order: each seed names a row at
        # most once, so every row sums its seeds' terms in the same order as seed by seed.
        # float64 (weighted; numpy's stubs give every bincount intp)
        cf: np.ndarray = np.bincount(parts[1], weights=parts[2], minlength=n)
        cf /= np.maximum(cs.cf_count, 1.0) ** params.cf_beta
        top = cf.max()
        if top > 0:
            f[:, 2] = cf / top
    f[:, 3:5] = _popularity_freshness(cs, now_ms, params)
    if history is not None and len(history) == n:
        h = history / np.maximum(cs.cf_count, 1.0) ** params.history_beta
        top_h = h.max()
        if top_h > 0:
            f[:, 5] = h / top_h
    return f


def _cf_parts(
    seeds: Sequence[tuple[str, float]],
    neighbours: Mapping[str, tuple[np.ndarray, np.ndarray]],
    seed_counts: Mapping[str, float],
    params: ScoreParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Every seed's neighbour entries as (seed index in ``seeds``, candidate row, the entry's
    term of "cf": weight * recency weight / count(seed) ** cf_alpha), seed by seed; None when
    no seed has any."""
    sid, rows, terms = [], [], []
    for s, (item_id, a) in enumerate(seeds):
        nb = neighbours.get(item_id)
        if nb is None or len(nb[0]) == 0:
            continue
        norm = max(seed_counts.get(item_id, 1.0), 1.0) ** params.cf_alpha
        sid.append(np.full(len(nb[0]), s, dtype=np.intp))
        rows.append(nb[0])
        terms.append(nb[1] * (a / norm))
    if not rows:
        return None
    return np.concatenate(sid), np.concatenate(rows), np.concatenate(terms)


def _popularity_freshness(cs: CandidateSet, now_ms: int, params: ScoreParams) -> np.ndarray:
    """float[n, 2]: the popularity and freshness features (they depend on the items and the
    time only: a frozen set keeps them for its second scoring at the same time)."""
    key = ("pop_fresh", now_ms, params.trending_half_life_ms, params.freshness_half_life_ms)
    if cs.frozen and (hit := cs.memo.get(key)) is not None:
        return hit  # type: ignore[return-value]
    out = np.zeros((len(cs), 2), dtype=np.float32)
    k = math.log(2) / params.trending_half_life_ms
    log_pop = np.log1p(np.exp(np.minimum(cs.trend - now_ms * k, 700.0)))
    top_pop = log_pop.max()
    if top_pop > 0:
        out[:, 0] = log_pop / top_pop
    known = ~np.isnan(cs.published_at)
    if known.any():
        age = np.maximum(0.0, now_ms - cs.published_at)
        fresh = np.where(known, 0.5 ** (age / params.freshness_half_life_ms), 0.0)
        out[:, 1] = np.nan_to_num(fresh)
    if cs.frozen:
        cs.memo[key] = out
    return out


def user_weights(params: ScoreParams, deltas: Sequence[float]) -> np.ndarray:
    """prior + the user's deltas; a prior written for fewer features gives the rest weight 0,
    and deltas of another length (a state from before a feature was added) are ignored."""
    w = np.zeros(len(FEATURES), dtype=np.float32)
    prior = np.asarray(params.prior, dtype=np.float32)[: len(FEATURES)]
    w[: len(prior)] = prior
    if len(deltas) == len(w):
        w = w + np.asarray(deltas, dtype=np.float32)
    return w


def excluded_rows(cs: CandidateSet, exclude: set[str], seen_filter: bytes) -> np.ndarray:
    """bool[n]: candidates never to show (exact exclusions, or in the user's seen filter)."""
    mask = seen.contains_many(seen_filter, cs.seen_pos) if seen_filter else np.zeros(len(cs), bool)
    for i in exclude:
        r = cs.index.get(i)
        if r is not None:
            mask[r] = True
    return mask


def score(features: np.ndarray, weights: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """float64[n]; excluded rows -inf."""
    s = (features @ weights).astype(np.float64)
    s[excluded] = -np.inf
    return s


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best rows, best first, ties by row (the caller orders rows by item id if it needs
    determinism across candidate orders); -inf rows never."""
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) > k:
        part = finite[np.argpartition(-scores[finite], k - 1)[:k]]
    else:
        part = finite
    return part[np.lexsort((part, -scores[part]))]


# -- one entry point per request: score a candidate set, explain the top k ------------------


class RowPairs(Sequence[tuple[str, float]]):
    """A published row's (neighbour id, weight) pairs, read over its two columns: a pair is
    built only when one is asked for (ranking reads the columns, ``Seed.cf_arrays``)."""

    __slots__ = ("ids", "w")

    def __init__(self, ids: list[str], w: np.ndarray) -> None:
        self.ids, self.w = ids, w

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, k: int) -> tuple[str, float]: ...

    @overload
    def __getitem__(self, k: slice) -> list[tuple[str, float]]: ...

    def __getitem__(self, k: int | slice) -> tuple[str, float] | list[tuple[str, float]]:
        if isinstance(k, slice):
            return list(zip(self.ids[k], self.w[k].tolist(), strict=True))
        return self.ids[k], float(self.w[k])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RowPairs({list(self)!r})"


@dataclass(frozen=True)
class Seed:
    """One of the user's recent items as the stream retrieves it (with payload): a source of
    collaborative candidates (``cf_top``, ``cf_count``: ranking.collab's published row) and the
    anchor that reasons name (``title``, ``vectors``)."""

    item_id: str
    title: str | None = None
    vectors: Mapping[str, np.ndarray] = field(default_factory=dict)
    # (id, weight) pairs, best first: a RowPairs from recommender.seed_of (its columns are
    # cf_arrays as they are, memoised per published row), or any sequence of pairs.
    cf_top: Sequence[tuple[str, float]] = ()
    cf_count: float = 0.0

    @cached_property
    def cf_arrays(self) -> tuple[list[str], np.ndarray]:
        """cf_top as (ids, float64 weights)."""
        if isinstance(self.cf_top, RowPairs):
            return self.cf_top.ids, self.cf_top.w
        ids = [i for i, _ in self.cf_top]
        return ids, np.fromiter((w for _, w in self.cf_top), np.float64, len(ids))

    @cached_property
    def units(self) -> dict[str, np.ndarray]:
        return interest_units(self.vectors)


def _fill_units(anchors: Sequence[Seed]) -> None:
    """Compute ``Seed.units`` of the anchors that have not yet, one normalisation per
    modality for all of them (instead of one per seed and modality)."""
    todo = [a for a in anchors if "units" not in a.__dict__]
    if not todo:
        return
    units: list[dict[str, np.ndarray]] = [{} for _ in todo]
    by_m: dict[str, tuple[list[int], list[np.ndarray]]] = {}
    for n, a in enumerate(todo):
        for m, v in a.vectors.items():
            at, vs = by_m.setdefault(m, ([], []))
            at.append(n)
            vs.append(v)
    for m, (at, vs) in by_m.items():
        try:
            mat = np.asarray(vs, dtype=np.float32)
        except ValueError:  # vectors of different sizes: one by one
            for n, v in zip(at, vs, strict=True):
                u = _unit(np.asarray(v, dtype=np.float32))
                if u is not None:
                    units[n][m] = u
            continue
        norm = np.linalg.norm(mat, axis=1)
        mat /= np.where(norm > 1e-9, norm, np.float32(1.0))[:, None]
        for n, row, ok in zip(at, mat, (norm > 1e-9).tolist(), strict=True):
            if ok:
                units[n][m] = row
    for a, got in zip(todo, units, strict=True):
        a.__dict__["units"] = got  # the cached_property's slot (Seed is frozen)


def short_interest(anchors: Sequence[Seed], a: Sequence[float]) -> dict[str, np.ndarray]:
    """Per modality, the sum of the anchors' unit vectors weighted by ``a`` (the recency
    weights): the short-term interest. One matrix product per modality."""
    _fill_units(anchors)
    by_m: dict[str, tuple[list[float], list[np.ndarray]]] = {}
    for seed, x in zip(anchors, a, strict=True):
        for m, u in seed.units.items():
            ws, us = by_m.setdefault(m, ([], []))
            ws.append(x)
            us.append(u)
    return {m: np.asarray(ws, dtype=np.float32) @ np.stack(us) for m, (ws, us) in by_m.items()}


@dataclass
class Scored:
    """What scoring a candidate set produced: kept so the caller can learn from it
    (ranking.learner needs the features of the item the user takes and of those above it)."""

    features: np.ndarray  # float32[n, len(FEATURES)]
    weights: np.ndarray  # the user's weights (prior + deltas)
    scores: np.ndarray  # float64[n], excluded rows -inf
    seeds: list[tuple[str, float]]  # recency_weights of the user's recent items
    neighbours: dict[str, tuple[np.ndarray, np.ndarray]]
    seed_counts: dict[str, float]
    # the seeds' "cf" terms as feature_matrix summed them (_cf_parts), for reasons
    cf_parts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def score_candidates(
    cs: CandidateSet,
    state: UserState,
    params: ScoreParams,
    seeds: Mapping[str, Seed],
    now_ms: int,
    *,
    neighbours: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    history: np.ndarray | None = None,
) -> Scored:
    """Features and scores of every candidate for this user. ``seeds``: the user's recent
    items, fetched with vectors and payload (missing ones are skipped); ``neighbours``:
    already-resolved (rows, weights) per seed, when the caller has them as rows (the harness's
    whole catalog), else they come from each seed's ``cf_top``; ``history``: the raw history
    sums per row when the caller has them (the harness's dense rows), else from the candidates'
    own rows (``CandidateSet.from_items(..., cf_rows=...)``)."""
    rec = [(i, a) for i, a in recency_weights(state.recent, params) if i in seeds]
    counts = {i: seeds[i].cf_count for i, _ in rec}
    parts = None
    if neighbours is not None:
        parts = _cf_parts(rec, neighbours, counts, params) if rec and neighbours else None
    elif rec:
        parts = _seed_parts(cs, rec, seeds, params)
        neighbours = {}
    short = short_interest([seeds[i] for i, _ in rec], [a for _, a in rec])
    if history is None and state.seen_filter and len(cs.cf_w):
        history = cs.history_sums(state.seen_filter)
    f = feature_matrix(
        cs,
        interest=state.interest,
        short_interest=short,
        seeds=rec,
        neighbours=neighbours,
        seed_counts=counts,
        now_ms=now_ms,
        params=params,
        history=history,
        cf_parts=parts,
    )
    w = user_weights(params, state.weights)
    s = score(f, w, excluded_rows(cs, state.excluded(), state.seen_filter))
    return Scored(f, w, s, rec, dict(neighbours or {}), counts, parts)


def _seed_parts(
    cs: CandidateSet, rec: Sequence[tuple[str, float]], seeds: Mapping[str, Seed], params
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``_cf_parts`` from the seeds' own rows (``cf_top``) through the set's seed table
    (``CandidateSet.seed_neighbours``: each seed resolved once per set). The entries come in
    the table's order, not the seeds': each row's cf sums the same terms, possibly in
    another order (a last-bit difference at most)."""
    at, k, rows, w = cs.seed_neighbours([(i, *seeds[i].cf_arrays) for i, _ in rec])
    scale = np.zeros(len(at))
    position = np.full(len(at), -1, dtype=np.intp)
    for n, (i, a) in enumerate(rec):
        scale[at[i]] = a / max(seeds[i].cf_count, 1.0) ** params.cf_alpha
        position[at[i]] = n
    sid = position[k]
    keep = sid >= 0  # seeds of an earlier scoring that this one does not use
    if not keep.any():
        return None
    return sid[keep], rows[keep], w[keep] * scale[k[keep]]


def modal_cosines(
    cs: CandidateSet,
    rows: np.ndarray,
    others: Mapping[str, tuple[np.ndarray, np.ndarray]],
    n_others: int,
    mw: Mapping[str, float],
    none: float,
) -> np.ndarray:
    """float[len(rows), n_others]: weighted mean cosine of each candidate row with each of
    n_others vectors over the modalities both have, ``none`` where they share none.
    ``others``: modality -> (their unit vectors [n_others, d], bool[n_others] whether each
    has the modality)."""
    num = np.zeros((len(rows), n_others))
    den = np.zeros((len(rows), n_others))
    for m, (units, has) in others.items():
        mat = cs.vectors.get(m)
        if mat is None or not has.any():
            continue
        wm = mw.get(m, 1.0)
        both = cs.present[m][rows][:, None] & has[None, :]
        num += np.where(both, wm * (mat[rows] @ units.T), 0.0)
        den += np.where(both, wm, 0.0)
    return np.divide(num, den, out=np.full_like(num, none), where=den > 0)


def best_rows(cs: CandidateSet, scores: np.ndarray, m: int) -> list[int]:
    """The m best rows by score, best first, ties by item id (everything tied with the m-th
    score competes), so the order does not depend on the candidates' order; -inf never."""
    best = top_rows(scores, m)
    if not len(best):
        return []
    tied = np.flatnonzero(scores >= scores[best[-1]])
    return sorted((int(r) for r in tied), key=lambda r: (-scores[r], cs.ids[r]))[:m]
