"""Features and scores of many users' candidates at once, over (user, row) pairs.

A batch of users and their candidate rows is flattened into pairs ``u`` (the user's index in
the batch) and ``r`` (a catalog row), sorted by user; every feature is an array over the pairs,
computed with a handful of array operations for the whole batch. Features, each scaled to
about [0, 1] within a user's candidates so fixed weights mean the same for every user:

  content     cosine of the user's long-term interest and the item: the weighted mean
              (RankingSettings.modality_weights) over the modalities the user has, one the
              item lacks counting as an unrelated item's cosine, 0 (no evidence of likeness)
  recent      the same with the user's short-term interest: the recency-weighted sum of their
              latest positive items' vectors
  cf          co-occurrence with those latest items ("seeds"): each seed's published row entry
              for the item * the seed's recency weight / count(seed) ** cf_alpha, summed,
              / count(item) ** cf_beta, divided by the user's maximum
  popularity  the item's decayed popularity ("trending"), log-scaled to [0, 1] among the
              user's candidates
  freshness   0.5 ** (age / freshness_half_life)
  history     the item's own published row summed over the neighbours in the user's seen
              filter (every item they ever took), each entry w / count(neighbour) **
              history_alpha, / count(item) ** history_beta, divided by the user's maximum
  popular     the item's interactions over all time, log-scaled like popularity
  hot         as popularity, decayed in minutes (hot_half_life_ms) rather than hours: with
              the three paces (minutes, hours, all time) the learned weights find the pace of
              the catalog's own popularity, whether its events are seconds or days apart,
              without a half-life chosen for one dataset

The short-term features (recent, cf) are multiplied by the user's session factor, 0.5 ** (time
since their last event / session_half_life_ms), after the scaling: within a session they count
in full; a user back after days is ranked by their whole history and long-term interest.

score = features . (the shared weights + the user's learned deltas, ranking.learner).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recstream.ranking import kernels
from recstream.ranking.catalog import Catalog
from recstream.ranking.user_state import UserState

FEATURES = ("content", "recent", "cf", "popularity", "freshness", "history", "popular", "hot")
N_FEATURES = len(FEATURES)
assert N_FEATURES == kernels.N_FEATURES


@dataclass(frozen=True)
class ScoreParams:
    prior: tuple[float, ...]  # the shared weights' start, one per FEATURES entry
    modality_weights: Mapping[str, float]
    trending_half_life_ms: float
    freshness_half_life_ms: float
    hot_half_life_ms: float = 600_000.0  # the "hot" popularity's (RankingSettings)
    session_half_life_ms: float = 1_800_000.0  # recent and cf fade while the user is away
    cf_alpha: float = 0.5  # co-occurrence / count(seed) ** alpha
    cf_beta: float = 0.5  # ... / count(candidate) ** beta
    recency_decay: float = 0.8  # weight of the d-th latest positive item: decay ** (d - 1)
    recent_window: int = 16  # latest positive items used as seeds
    history_beta: float = 0.5  # history / count(candidate) ** beta
    # An anchor was "liked" (reasons) when taken with at least this event weight.
    liked_weight: float = 0.7
    # Diversity (ranking.explain.diversify: maximal marginal relevance): 0 ranks by score.
    diversity: float = 0.0
    diversity_pool: int = 3


@dataclass
class Users:
    """What scoring reads of a batch of users, resolved against the catalog once, as the flat
    arrays the scoring kernel takes (seeds and exclusions grouped by user)."""

    interests: tuple[np.ndarray, ...]  # per catalog modality: float32[B, d] unit interests
    ihas: np.ndarray  # bool[M, B]
    seed_start: np.ndarray  # int64[B + 1]: user b's seeds are seed_row[seed_start[b]:...]
    seed_row: np.ndarray  # int64[S]: each seed's catalog row (latest positive items)
    seed_a: np.ndarray  # float64[S]: its recency weight, decay ** (d - 1)
    seed_w: np.ndarray  # float32[S]: the weight of the user's event on it (liked or not)
    ex_start: np.ndarray  # int64[B + 1]
    ex_row: np.ndarray  # int64[X]: exact exclusions (recent and disliked items)
    flags: np.ndarray  # uint8[B, bits / 8]: seen filters (their bytes)
    fhas: np.ndarray  # bool[B]: whether a user has one
    weights: np.ndarray  # float32[B, N_FEATURES]: the shared weights + the user's deltas
    # float32[B]: what the short-term features (recent, cf) count for, 0.5 ** (time since the
    # user's last event / session_half_life_ms): 1 in a session, towards 0 for one returning
    session: np.ndarray

    def __len__(self) -> int:
        return len(self.weights)

    @property
    def seed_u(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), np.diff(self.seed_start))

    @property
    def ex_u(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), np.diff(self.ex_start))

    def tail(self, n: int) -> Users:
        """The users from the n-th on, as views (their weights are these users' weights)."""
        s, x = int(self.seed_start[n]), int(self.ex_start[n])
        return Users(
            tuple(v[n:] for v in self.interests), self.ihas[:, n:],
            self.seed_start[n:] - s, self.seed_row[s:], self.seed_a[s:], self.seed_w[s:],
            self.ex_start[n:] - x, self.ex_row[x:], self.flags[n:], self.fhas[n:],
            self.weights[n:], self.session[n:],
        )  # fmt: skip


def resolve_users(
    cat: Catalog,
    states: Sequence[UserState],
    params: ScoreParams,
    shared: Sequence[np.ndarray | None] | None = None,
    *,
    now_ms: int | Sequence[int],
) -> Users:
    """Seeds (each user's latest positive items in the catalog, newest first, weight decay **
    (d - 1)), exact exclusions, seen filters, interests and weights of a batch of users, to be
    scored at ``now_ms`` (one time, or one per user), which sets the fade of their short-term
    features (``Users.session``). ``shared``: per user, the shared weights in effect (None:
    their start, ``params.prior``); the user's deltas are added (deltas of another length, from
    a state written before a feature was added, are ignored)."""
    B = len(states)
    bits = cat.params.seen_bits
    interests = tuple(np.zeros((B, cat.dims[m]), np.float32) for m in cat.modalities)
    ihas = np.zeros((len(cat.modalities), B), bool)
    flags = np.zeros((B, bits // 8), np.uint8)
    fhas = np.zeros(B, bool)
    weights = np.zeros((B, N_FEATURES), np.float32)
    prior = np.asarray(params.prior, np.float32)
    r_start = np.zeros(B + 1, np.int64)
    d_start = np.zeros(B + 1, np.int64)
    session = np.ones(B, np.float32)
    times = [now_ms] * B if isinstance(now_ms, (int, np.integer)) else now_ms
    for b, st in enumerate(states):
        away = times[b] - st.last_ts
        if away > 0 and st.n_events:
            session[b] = 0.5 ** (away / params.session_half_life_ms)
        for i, m in enumerate(cat.modalities):
            v = st.interest.get(m)
            if v is not None and len(v) == cat.dims[m]:
                n = float(np.sqrt(np.dot(v, v)))
                if n > 1e-9:
                    interests[i][b] = v / np.float32(n)
                    ihas[i, b] = True
        r_start[b + 1] = r_start[b] + len(st.recent)
        d_start[b + 1] = d_start[b] + len(st.disliked)
        if st.seen_filter and len(st.seen_filter) * 8 == bits:
            flags[b] = np.frombuffer(st.seen_filter, np.uint8)
            fhas[b] = True
        weights[b] = user_weights(prior, None if shared is None else shared[b], st)
    # every user's seeds and exclusions in one compiled call
    seed_start, seed_row, seed_w, seed_a, ex_start, ex_row = kernels.users_rows(
        _joined([st.recent for st in states], np.uint64),
        _joined([st.recent_w for st in states], np.float32), r_start,
        _joined([st.disliked for st in states], np.uint64), d_start,
        _decay(params.recency_decay, params.recent_window), *cat.index_arrays(),
    )  # fmt: skip
    return Users(interests, ihas, seed_start, seed_row, seed_a, seed_w, ex_start, ex_row, flags,
                 fhas, weights, session)  # fmt: skip


def _joined(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    """The users' arrays end to end, as ``dtype`` (one user's as it is: no copy)."""
    out = arrays[0] if len(arrays) == 1 else np.concatenate(arrays or [np.zeros(0, dtype)])
    return out.astype(dtype, copy=False)


def user_weights(prior: np.ndarray, shared: np.ndarray | None, st: UserState) -> np.ndarray:
    """The weights a user is scored with: the shared weights in effect (None: ``prior``, their
    start) + the user's deltas (deltas of another length, from a state written before a
    feature was added, are ignored)."""
    base = prior if shared is None else shared
    return base + st.weights if len(st.weights) == N_FEATURES else base


@functools.lru_cache(maxsize=8)
def _decay(decay: float, window: int) -> np.ndarray:
    """float64[window]: decay ** (d - 1), the d-th seed's recency weight (read-only)."""
    out = decay ** np.arange(max(window, 0), dtype=np.float64)
    out.flags.writeable = False
    return out


@dataclass
class Scored:
    raw: np.ndarray  # float32[P, N_FEATURES] before the per-user scaling
    features: np.ndarray  # float32[P, N_FEATURES] scaled
    scores: np.ndarray  # float64[P], excluded pairs -inf
    scales: np.ndarray  # float32[B, N_FEATURES]: the users' divisors
    # int64[P]: the seed contributing most to the pair's cf (-1: none), numbered from
    # ``seed_base`` (see cf_seeds)
    best_seed: np.ndarray
    seed_base: int = 0

    def cf_seeds(self, at: np.ndarray) -> np.ndarray:
        """The best cf seed of pairs ``at``, as an index into the users' ``seed_row`` (-1:
        none)."""
        best = self.best_seed[at]
        return np.where(best >= 0, best - self.seed_base, -1)

    def tail(self, users: Users, pairs: Pairs, n: int) -> Scored:
        """The part of users n on (scored in ``users`` and ``pairs`` with others before them,
        their pairs last), numbered as ``users.tail(n)`` and their own pairs number them."""
        at, s = int(pairs.starts[n]), int(users.seed_start[n])
        return Scored(self.raw[at:], self.features[at:], self.scores[at:], self.scales[n:],
                      self.best_seed[at:], self.seed_base + s)  # fmt: skip


def score(
    cat: Catalog,
    users: Users,
    pairs: Pairs,
    now_ms: int,
    params: ScoreParams,
    *,
    top_n: int,
    history_top_n: int,
    listing: np.ndarray | None = None,
) -> Scored:
    """Every pair's features and score (the compiled kernels.score_pairs). ``listing``: bool per
    user, scored for a list only (its excluded pairs' content and recent features are not
    computed: they are never listed); None: no one."""
    dense = cat.dense_hist
    inv_seed, inv_cf, inv_hist, inv_alpha = cat.count_powers(
        params.cf_alpha, params.cf_beta, params.history_beta, cat.cooc.history_alpha
    )
    codes = tuple(cat.codes[m] for m in cat.modalities)
    code_scale = tuple(cat.code_scale[m] for m in cat.modalities)
    midx, interests, ihas = cat.midx, users.interests, users.ihas
    mw = np.asarray([params.modality_weights.get(m, 1.0) for m in cat.modalities], np.float64)
    if not codes:  # a catalog of no modality (collaborative only): one that no item has
        codes, code_scale = (np.zeros((1, 1), np.int8),), (np.zeros(1, np.float32),)
        interests = (np.zeros((len(users), 1), np.float32),)
        midx = np.full((1, cat.midx.shape[1]), -1, np.int64)
        ihas, mw = np.zeros((1, len(users)), bool), np.zeros(1, np.float64)
    raw, feats, s, scales, best = kernels.score_pairs(
        codes, code_scale, midx, mw,
        inv_cf, inv_hist, cat.trend, cat.hot, cat.published_at, cat.log_count,
        cat.slot, cat.nb, cat.nb_w, inv_alpha, cat.nb_len,
        cat.bloom_pos,
        dense if dense is not None else np.zeros((1, 1), np.float32),
        dense is not None,
        len(cat),
        interests, ihas,
        users.seed_start, users.seed_row, users.seed_a,
        users.flags, users.fhas,
        users.ex_start, users.ex_row,
        users.weights, users.session,
        pairs.u.astype(np.int64, copy=False), pairs.r.astype(np.int64, copy=False),
        pairs.starts.astype(np.int64, copy=False),
        inv_seed,
        float(now_ms),
        math.log(2) / params.trending_half_life_ms,
        math.log(2) / params.hot_half_life_ms,
        math.log(2) / params.freshness_half_life_ms,
        int(top_n), int(history_top_n),
        cat.pair_at,
        cat.pop_key, cat.pop_trend, cat.pop_hot, cat.pop_ok,
        np.zeros(len(users), np.bool_) if listing is None else listing,
    )  # fmt: skip
    return Scored(raw, feats, s, scales, best)


@dataclass
class Pairs:
    """Candidate (user, row) pairs of a batch, sorted by user, each user's rows unique."""

    u: np.ndarray  # intp[P]
    r: np.ndarray  # int64[P]
    starts: np.ndarray  # intp[B + 1]: user b's pairs are starts[b]:starts[b + 1]
    full: bool = False  # every user has the same rows (the whole live catalog)

    def __len__(self) -> int:
        return len(self.u)

    @classmethod
    def build(cls, n_users: int, u: np.ndarray, r: np.ndarray) -> Pairs:
        uu, rr, starts = kernels.unique_pairs(
            u.astype(np.int64, copy=False), r.astype(np.int64, copy=False), n_users
        )
        return cls(uu.astype(np.intp, copy=False), rr, starts.astype(np.intp, copy=False))

    @classmethod
    def whole(cls, n_users: int, rows: np.ndarray) -> Pairs:
        """Every user paired with every one of ``rows`` (read-only arrays: a model keeps them
        while the catalog's live rows stay the same)."""
        n = len(rows)
        out = cls(
            np.repeat(np.arange(n_users), n),
            np.tile(rows.astype(np.int64, copy=False), n_users),
            np.arange(n_users + 1) * n,
            full=True,
        )
        for a in (out.u, out.r, out.starts):
            a.flags.writeable = False
        return out

    @classmethod
    def stack(cls, first: Pairs, second: Pairs) -> Pairs:
        """The pairs of two batches of users as one, ``second``'s users after ``first``'s."""
        n = len(first.starts) - 1
        return cls(
            np.concatenate([first.u, second.u + n]).astype(np.intp, copy=False),
            np.concatenate([first.r, second.r]).astype(np.int64, copy=False),
            np.concatenate([first.starts[:-1], second.starts + len(first)]).astype(
                np.intp, copy=False
            ),
        )

    def index(self, u: np.ndarray, r: np.ndarray) -> np.ndarray:
        """The pair index of each (u, r), -1 where it is not a pair."""
        key = self.u.astype(np.int64) * (1 << 32) + self.r
        q = u.astype(np.int64) * (1 << 32) + r.astype(np.int64)
        at = np.minimum(np.searchsorted(key, q), max(len(key) - 1, 0))
        ok = (len(key) > 0) & (key[at] == q) if len(key) else np.zeros(len(q), bool)
        return np.where(ok, at, -1)


def slot_entries(
    cat: Catalog, rows: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index into ``rows``, slot, column) of the first ``n`` published entries of each row."""
    slots = cat.slot[rows]
    has = np.flatnonzero(slots >= 0)
    if not len(has):
        z = np.zeros(0, np.intp)
        return z, z, z
    sl = slots[has]
    lens = np.minimum(cat.nb_len[sl], n)
    owner, col = np.nonzero(np.arange(n)[None, :] < lens[:, None])
    return has[owner], sl[owner], col
