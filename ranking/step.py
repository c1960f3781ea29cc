"""The online step: recstream's model, run by the stream worker and by ``recstream evaluate``.

``OnlineModel.step`` takes one round of parsed events (distinct users) with their users'
current states and returns, per event, the new state and the ranked, explained list, plus
the item-side updates the events cause. ``OnlineModel.recommend`` ranks for users without
changing them (requests). Pure and synchronous: the Faust handler (streams/handlers.py) is
parse, read states, step, write states, send; the evaluator (ranking/evaluate/online.py)
replays a dataset through the same calls.

Per round, for all its users at once (ranking/scoring.py: array operations over (user, row)
pairs): the candidate rows of each user (the whole catalog while it is small, else the
co-occurrence and content neighbours of their latest items, trending, hot, popular and fresh
items, and the event's item); the state update (ranking/user_state.py); in one resolve and one
scoring call, the features of each learning user's taken item and of catalog items they could
be shown, drawn uniformly and by interactions, under the state before the event, and of every
user's candidates under the state after it; for each positive event of a user with history,
one pairwise learning step (ranking/learner.py), after which that user's candidates are
weighed again with the new deltas; each user's list and
its reasons (ranking/explain.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from recstream.ranking import explain, kernels, scoring
from recstream.ranking.catalog import Catalog
from recstream.ranking.item_side import CoocParams, Update, updates_for_event
from recstream.ranking.scoring import Pairs, ScoreParams, Users
from recstream.ranking.user_state import (
    StateParams,
    UserState,
    apply_event,
    event_weight,
    item_digest,
)

_MERSENNE = (1 << 61) - 1


@dataclass(frozen=True)
class ModelParams:
    score: ScoreParams
    state: StateParams
    cooc: CoocParams
    k: int = 10
    candidate_factor: int = 4  # candidates per source = k * this
    full_scan_limit: int = 4096  # score the whole catalog while it has at most this many items
    learning_rate: float = 0.01  # the user's deltas
    learning_l2: float = 0.01
    learning_negatives: int = 0  # items shown above the taken one, at most
    learning_random_negatives: int = 5  # and catalog items drawn uniformly
    learning_popular_negatives: int = 1  # and in proportion to their interactions
    shared_learning_rate: float = 0.1  # the shared weights (ranking/learner.py)
    shared_l2: float = 0.001


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    type: str
    ts: int
    value: float | None = None
    dedupe_id: str | None = None  # the event_id (or a forwarded copy's origin)
    partition: int | None = None
    offset: int | None = None


@dataclass
class Ranked:
    """A ranked, explained list: catalog rows best first, their scores and reasons."""

    rows: np.ndarray
    scores: np.ndarray
    reasons: list[str]

    def items(self, cat: Catalog) -> list[tuple[str, float, str]]:
        return [
            (cat.ids[int(r)], float(s), why)
            for r, s, why in zip(self.rows, self.scores, self.reasons, strict=True)
        ]


@dataclass
class Outcome:
    status: Literal["applied", "duplicate", "unknown_item"]
    state: UserState  # the state after the event (the same one for a duplicate)
    ranked: Ranked | None = None


@dataclass
class StepResult:
    outcomes: list[Outcome]
    updates: list[Update] = field(default_factory=list)  # item side, in event order
    # the shared weights' gradient of each event that learned (event index -> float64[F]),
    # every one taken at the weights the round was given (ranking/learner.SharedWeights.learn)
    gradients: dict[int, np.ndarray] = field(default_factory=dict)


class OnlineModel:
    def __init__(self, catalog: Catalog, params: ModelParams) -> None:
        self.cat = catalog
        self.p = params
        # scratch of _top_per_user's kernel, one entry per catalog row (kept zero between calls)
        self._total = np.zeros(0, np.float64)
        self._mark = np.zeros(0, np.int8)
        # the whole-catalog pairs of the last call (candidates): the live rows they are for
        self._whole: tuple[np.ndarray, Pairs] | None = None

    # -- candidates ---------------------------------------------------------------------------
    def candidates(
        self, users: Users, extra: Sequence[int | None] = (), ks: Sequence[int] = ()
    ) -> Pairs:
        """Each user's candidate rows as pairs. ``extra``: a row to add per user (the item an
        event is about, so learning sees it) or None."""
        cat, B = self.cat, len(users)
        if cat.n_live <= self.p.full_scan_limit:
            rows = cat.live_rows()  # the same array until an item comes or goes
            got = self._whole
            if got is None or got[0] is not rows or len(got[1].starts) != B + 1:
                got = self._whole = (rows, Pairs.whole(B, rows))
            return got[1]
        limits = [k * self.p.candidate_factor for k in (ks or [self.p.k] * B)]
        us: list[tuple[np.ndarray, np.ndarray]] = []
        # co-occurrence: the seeds' published neighbours, summed seed-weighted
        seed, sl, col = scoring.slot_entries(cat, users.seed_row, self.p.cooc.top_n)
        if len(seed):
            (inv_seed,) = cat.count_powers(self.p.score.cf_alpha)
            scale = users.seed_a * inv_seed[users.seed_row]
            nb = cat.nb[sl, col].astype(np.int64)
            w = cat.nb_w[sl, col] * scale[seed]
            us.append(self._top_per_user(users.seed_u[seed], nb, w, users, limits))
        # content: the seeds' content neighbours, by recency weight * cosine
        owner, nbr, sims = cat.content_neighbours(users.seed_row)
        if len(owner):
            us.append(self._top_per_user(users.seed_u[owner], nbr, sims * users.seed_a[owner],
                                         users, limits))  # fmt: skip
        # trending, hot, popular and fresh: the same for everyone (excluded ones dropped when
        # scored)
        n = 2 * max(limits)
        common = np.unique(
            np.concatenate([cat.trending[:n], cat.hottest[:n], cat.popular[:n], cat.fresh[:n]])
        )
        if len(common):
            us.append((np.repeat(np.arange(B), len(common)), np.tile(common.astype(np.int64), B)))
        for b, row in enumerate(extra):
            if row is not None:
                us.append((np.asarray([b]), np.asarray([row], np.int64)))
        if not us:
            return Pairs.build(B, np.zeros(0, np.intp), np.zeros(0, np.int64))
        u = np.concatenate([x for x, _ in us])
        r = np.concatenate([y for _, y in us])
        keep = cat.live[r]
        return Pairs.build(B, u[keep], r[keep])

    def _top_per_user(
        self, u: np.ndarray, r: np.ndarray, w: np.ndarray, users: Users, limits: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each user's ``limit`` rows with the largest summed weight (exact exclusions and dead
        rows dropped first), ties by row."""
        cap = len(self.cat.live)
        if len(self._total) != cap:
            self._total, self._mark = np.zeros(cap, np.float64), np.zeros(cap, np.int8)
        return kernels.top_summed(
            u.astype(np.int64), r.astype(np.int64), w.astype(np.float64), len(users),
            np.asarray(limits, np.int64), self.cat.live, users.ex_u.astype(np.int64),
            users.ex_row.astype(np.int64), self._total, self._mark,
        )  # fmt: skip

    # -- scoring ------------------------------------------------------------------------------
    def _score(self, users: Users, pairs: Pairs, now_ms: int, learners: int = 0) -> scoring.Scored:
        """The pairs scored; the users from ``learners`` on are scored for their lists only."""
        listing = np.arange(len(users)) >= learners
        return scoring.score(
            self.cat, users, pairs, now_ms, self.p.score,
            top_n=self.p.cooc.top_n, history_top_n=self.p.cooc.history_top_n, listing=listing,
        )  # fmt: skip

    def _lists(
        self, users: Users, pairs: Pairs, sc: scoring.Scored, ks: Sequence[int],
        explained: bool = True,
    ) -> list[Ranked]:  # fmt: skip
        listed = explain.pick(self.cat, pairs, sc.scores, ks, self.p.score)
        flat = np.concatenate(listed) if listed else np.zeros(0, np.intp)
        if explained:
            why = explain.reasons(self.cat, users, pairs, sc, flat, self.p.score)
        else:
            why = [""] * len(flat)
        out, at = [], 0
        for lst in listed:
            out.append(Ranked(pairs.r[lst], sc.scores[lst], why[at : at + len(lst)]))
            at += len(lst)
        return out

    def recommend(
        self,
        states: Sequence[UserState],
        ks: Sequence[int],
        now_ms: int,
        explain: bool = True,
        shared: Sequence[np.ndarray | None] | None = None,
    ) -> list[Ranked]:
        """Lists for users, from their current states (nothing changes); ``explain`` False:
        without reasons (the evaluator's); ``shared``: per user, the shared weights in effect
        (None: their start)."""
        users = scoring.resolve_users(self.cat, states, self.p.score, shared, now_ms=now_ms)
        pairs = self.candidates(users, ks=ks)
        return self._lists(users, pairs, self._score(users, pairs, now_ms), ks, explain)

    # -- the step -----------------------------------------------------------------------------
    def step(
        self,
        events: Sequence[Event],
        states: Sequence[UserState],
        now_ms: int,
        shared: Sequence[np.ndarray | None] | None = None,
        explain: bool = True,
    ) -> StepResult:
        """One round: events of distinct users, each with its user's current state and the
        shared weights in effect for it (``shared``, per event; None: their start). The
        shared weights do not change here: the result has each learning event's gradient.
        ``explain`` False: the lists without reasons (the evaluator's; the states are the
        same)."""
        cat, p = self.cat, self.p
        outcomes: list[Outcome | None] = [None] * len(events)
        after: list[UserState] = []
        before: list[UserState] = []
        extra: list[int | None] = []
        index: list[int] = []  # event index of each scored user
        learners: list[int] = []  # positions in `index` that learn
        updates: list[Update] = []
        for n, (ev, st) in enumerate(zip(events, states, strict=True)):
            if st.is_duplicate(ev.partition, ev.offset, ev.dedupe_id):
                outcomes[n] = Outcome("duplicate", st)
                before.append(st)
                after.append(st)
                extra.append(None)
                index.append(n)
                continue
            digest = item_digest(ev.item_id)
            h = int.from_bytes(digest[:8], "little")
            row = cat.row_of.get(h)
            if row is None or not cat.live[row]:
                outcomes[n] = Outcome("unknown_item", st)
                continue
            vectors = cat.vectors(row)
            new = apply_event(
                st, item=h, item_digest16=digest, item_vectors=vectors, event_type=ev.type,
                ts=ev.ts, value=ev.value, params=p.state, partition=ev.partition,
                offset=ev.offset, event_id=ev.dedupe_id,
            )  # fmt: skip
            w = event_weight(ev.type, ev.value, p.state.event_weights)
            if w > 0:
                updates.extend(updates_for_event(st.recent, st.recent_w, h, w, ev.ts, p.cooc))
                if (p.learning_rate > 0 or p.shared_learning_rate > 0) and st.n_events:
                    learners.append(len(index))
            outcomes[n] = Outcome("applied", new)
            before.append(st)
            after.append(new)
            extra.append(row)
            index.append(n)
        if not index:
            return StepResult([o for o in outcomes if o is not None], updates)
        base = [None if shared is None else shared[n] for n in index]
        # one resolve and one scoring call for the round: the learners' states before their
        # events (the features the learning step compares), then every user's state after it
        L = len(learners)
        # the session fade (ranking/scoring.py) by the user's own time, not the worker's clock
        # (hours later in a backlog): a learner was away from their last event to this one; a
        # list answered is for a user in a session (their latest event: this one, or for a
        # redelivery the one their list is from)
        resolved = [before[b] for b in learners] + after
        shared_in = [base[b] for b in learners] + base
        at = [events[index[b]].ts for b in learners] + [st.last_ts for st in after]
        users = scoring.resolve_users(cat, resolved, p.score, shared_in, now_ms=at)
        users_after = users.tail(L)
        pairs_after = self.candidates(users_after, extra)
        learn_pairs, negatives = self._learn_pairs(before, learners, extra, users)
        both = Pairs.stack(learn_pairs, pairs_after)
        prior = np.asarray(p.score.prior, np.float32)
        scored = self._score(users, both, now_ms, L)
        grads: dict[int, np.ndarray] = {}
        for b, g in self._learn(before, after, learners, extra, negatives, users, learn_pairs,
                                scored.raw).items():  # fmt: skip
            grads[index[b]] = g
            # the list answered is ranked with the user's new deltas
            users.weights[L + b] = scoring.user_weights(prior, base[b], after[b])
            lo, hi = int(both.starts[L + b]), int(both.starts[L + b + 1])
            kernels.weigh(scored.features, users.weights[L + b], lo, hi, scored.scores)
        sc = scored.tail(users, both, L)
        lists = self._lists(users_after, pairs_after, sc, [p.k] * len(index), explain)
        for b, n in enumerate(index):
            o = outcomes[n]
            assert o is not None
            st = after[b]
            if o.status == "applied":  # what the user is shown now, to learn from next time
                st.shown = cat.hashes[lists[b].rows].copy()
                st.scales = sc.scales[b].copy()
            o.state = st
            o.ranked = lists[b]
        return StepResult([o for o in outcomes if o is not None], updates, grads)

    def _negative_rows(self, taken: int, st: UserState, users: scoring.Users, b: int) -> np.ndarray:
        """The negatives of user ``b`` of ``users`` taking row ``taken``: live rows other than
        ``taken`` that the user could be shown (not in their seen filter or exact exclusions:
        an item the user already took is no negative; counted as one, the user's own latest
        items, "hot" by their own events, taught the weights that what is hot is unwanted),
        ``learning_random_negatives`` drawn uniformly and ``learning_popular_negatives`` in
        proportion to the items' interactions (mixed negative sampling), deterministically
        from the event (the item and the user's event count), so a replay draws the same ones.
        Twice as many of each are drawn as needed and the first the user could be shown
        kept."""
        p, cat = self.p, self.cat
        n_uni, n_pop, size = p.learning_random_negatives, p.learning_popular_negatives, len(cat)
        if n_uni + n_pop <= 0 or size < 2:
            return np.zeros(0, np.int64)
        seed = (int(cat.hashes[taken]) ^ (int(st.n_events) * 0x9E3779B97F4A7C15)) % _MERSENNE
        m = 2 * (n_uni + n_pop)
        draws = [(seed * (q + 1) + q * 0xBF58476D1CE4E5B9) % _MERSENNE for q in range(m)]
        ex = users.ex_row[users.ex_start[b] : users.ex_start[b + 1]]
        return kernels.negative_rows(
            np.asarray(draws, np.int64), n_uni, n_pop, float(_MERSENNE), size, taken, cat.live,
            cat.count_tree, users.flags, b, bool(users.fhas[b]), cat.bloom_pos, ex,
        )  # fmt: skip

    def _learn_pairs(
        self,
        before: Sequence[UserState],
        learners: Sequence[int],
        extra: Sequence[int | None],
        users: scoring.Users,
    ) -> tuple[Pairs, list[np.ndarray]]:
        """Each learner's pairs (numbered by position in ``learners``): the taken item and its
        negatives, catalog items the user could be shown, drawn uniformly and by interactions
        (``_negative_rows``; and, with ``learning_negatives``, the items shown above it in the
        user's last list, all of them when it was not listed)."""
        p = self.p
        negatives: list[np.ndarray] = []
        us: list[int] = []
        rs: list[int] = []
        for j, b in enumerate(learners):
            taken = extra[b]
            assert taken is not None
            neg = self._negative_rows(taken, before[b], users, j)
            if p.learning_negatives > 0:
                shown = self.cat.rows_of(before[b].shown)
                pos = np.flatnonzero(shown == taken)
                above = shown[: int(pos[0])] if len(pos) else shown
                neg = np.concatenate([above[above >= 0][: p.learning_negatives], neg])
            negatives.append(neg)
            us.extend([j] * (len(neg) + 1))
            rs.append(taken)
            rs.extend(neg.tolist())
        u, r = np.asarray(us, np.int64), np.asarray(rs, np.int64)
        return Pairs.build(len(learners), u, r), negatives

    def _learn(
        self,
        before: Sequence[UserState],
        after: list[UserState],
        learners: Sequence[int],
        extra: Sequence[int | None],
        negatives: Sequence[np.ndarray],
        users: Users,
        pairs: Pairs,
        raw: np.ndarray,
    ) -> dict[int, np.ndarray]:
        """One BPR step per learning user: the taken item against its negatives, their
        features (``raw``: the learners' pairs ``pairs``, under the states before the events,
        ``users`` 0..) scaled as the user's last list's were; the new deltas go into the state
        after it. Returns each learner's gradient (by position in ``after``) for the shared
        weights."""
        p = self.p
        nf = scoring.N_FEATURES
        ok = [len(negatives[j]) > 0 and len(before[b].scales) == nf for j, b in enumerate(learners)]
        if not any(ok):
            return {}
        # scaled as the user's last list was, and no further than its best: an item that has
        # grown since (a burst of popularity) must not take a step thousands of times the
        # usual (ML-100k's "hot" weight reached 1e35 before the clip and the divisors' floor,
        # kernels.score_pairs)
        # and each learner's deltas (those of another length, from a state written before a
        # feature was added, start again from zero)
        scales = np.ones((len(learners), nf), np.float32)
        deltas = np.zeros((len(learners), nf), np.float64)
        lens = np.zeros(len(learners) + 1, np.int64)
        for j, b in enumerate(learners):
            if ok[j]:
                st = before[b]
                scales[j] = st.scales
                lens[j + 1] = len(negatives[j])
                if len(st.weights) == nf:
                    deltas[j] = st.weights
        neg = [negatives[j] for j in range(len(learners)) if ok[j]]
        taken = np.asarray([extra[b] for b in learners], np.int64)
        g, steps = kernels.learner_gradients(
            raw, pairs.starts.astype(np.int64, copy=False), pairs.r, taken,
            np.concatenate(neg).astype(np.int64, copy=False), np.cumsum(lens), scales,
            users.weights[: len(learners)], deltas, float(p.learning_rate), float(p.learning_l2),
        )  # fmt: skip
        grads: dict[int, np.ndarray] = {}
        for j, b in enumerate(learners):
            if ok[j]:
                grads[b] = g[j]
                if p.learning_rate > 0:
                    after[b].weights = steps[j].copy()  # learner.user_step, in the kernel
        return grads
