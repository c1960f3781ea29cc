"""The online step (ranking/step.py) on small synthetic catalogs: known-answer lists and reasons,
exclusions, ties, the candidate mode, batches, duplicates, learning and diversity, through the
real Catalog, item side and compiled kernels."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from recstream.ranking import explain, scoring
from recstream.ranking.catalog import Catalog, CatalogParams
from recstream.ranking.item_side import NO_TREND, CoocParams, ItemRow, ItemSide, trend_after
from recstream.ranking.scoring import ScoreParams
from recstream.ranking.step import Event, ModelParams, OnlineModel, Outcome, Ranked, StepResult
from recstream.ranking.user_state import StateParams, UserState, item_hash

HOUR = 3_600_000
NOW = 1_700_000_000_000
# a fixed set of weights (in FEATURES order) the known answers below are worked out for
DEFAULT = (0.5, 0.5, 1.0, 0.3, 0.1, 1.0, 0.3, 0.0)
CONTENT = (1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
POPULAR = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0)
WEIGHTS = {"view": 0.5, "click": 1.0, "like": 2.0, "share": 3.0, "complete": 2.0,
           "skip": -0.5, "dislike": -2.0}  # fmt: skip
BASE = ModelParams(
    score=ScoreParams(DEFAULT, {"text": 1.0}, 24 * HOUR, 48 * HOUR),
    state=StateParams(WEIGHTS, 72 * HOUR),
    cooc=CoocParams(),
)
LIKED, SIMILAR = "because you liked", "similar to"


def params(
    prior: tuple[float, ...] = DEFAULT, diversity: float = 0.0, recent_items: int = 24, **model: Any
) -> ModelParams:
    return dataclasses.replace(
        BASE,
        score=dataclasses.replace(BASE.score, prior=prior, diversity=diversity),
        state=dataclasses.replace(BASE.state, recent_items=recent_items),
        **model,
    )


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, np.float32)
    return v / np.linalg.norm(v)


class World:
    """A catalog with its model and in-process item side, and the users' states."""

    def __init__(self, p: ModelParams = BASE, dim: int = 4, capacity: int = 1024, **cat: Any):
        self.cat = Catalog({"text": dim}, p.cooc, CatalogParams(**cat), capacity=capacity)
        self.model = OnlineModel(self.cat, p)
        self.side = ItemSide(p.cooc, p.score.trending_half_life_ms, p.score.hot_half_life_ms)
        self.states: dict[str, UserState] = {}
        self.dim = dim

    def add(self, item_id: str, vec: Any = None, **kw: Any) -> None:
        kw.setdefault("title", f"Title {item_id}")
        v = unit(*vec) if vec is not None else unit(*[1.0] * self.dim)
        self.cat.upsert(item_id, {"text": v}, **kw)

    def side_row(
        self, item_id: str, pop: float = 0, ts: int = NOW, nb: Any = (), count: Any = None
    ):
        """Publish an item-side row: popularity ``pop`` at ``ts``, neighbours (id, weight)."""
        trend = trend_after(NO_TREND, pop, ts, 24 * HOUR) if pop else NO_TREND
        hs = np.asarray([item_hash(i) for i, _ in nb], np.uint64)
        ws = np.asarray([x for _, x in nb], np.float32)
        o = np.argsort(hs)
        row = ItemRow(trend, pop if count is None else count, hs[o], ws[o])
        self.cat.set_side(item_hash(item_id), row)

    def step(self, events: list[Event], now: int = NOW, publish: bool = True) -> StepResult:
        states = [self.states.get(e.user_id, UserState()) for e in events]
        res = self.model.step(events, states, now)
        for e, o in zip(events, res.outcomes, strict=True):
            self.states[e.user_id] = o.state
        if publish:
            for h in self.side.apply(res.updates):
                self.cat.set_side(h, self.side.rows[h])
        return res

    def act(self, user: str, item: str, etype: str = "like", ts: int = NOW, publish: bool = True,
            **kw: Any) -> Outcome:  # fmt: skip
        return self.step([Event(user, item, etype, ts, **kw)], ts, publish).outcomes[0]

    def rank(self, user: str, k: int = 10, now: int = NOW) -> Ranked:
        r = self.model.recommend([self.states.get(user, UserState())], [k], now)[0]
        assert np.all(np.isfinite(r.scores)) and np.all(np.diff(r.scores) <= 0)  # best first
        assert len(set(r.rows.tolist())) == len(r.rows) == len(r.reasons)
        return r

    def ids(self, r: Ranked) -> list[str]:
        return [self.cat.ids[int(x)] for x in r.rows]


# -- known answers: lists and reasons -------------------------------------------------------


def test_a_liked_topic_comes_first_because_the_user_liked_its_closest_item() -> None:
    w = World()
    for n, y in enumerate((0.3, -0.3, 0.25, -0.25)):
        w.add(f"A{n}", (1, y, 0, 0))
    for n in range(3):
        w.add(f"B{n}", (0, 0, 1, n / 10))
    w.act("u", "A0")
    got = w.act("u", "A1", ts=NOW + 1000).ranked.items(w.cat)
    # A3 is closest to A1, the newest seed; A2 to A0
    assert [(i, why) for i, _, why in got[:2]] == [
        ("A3", f"{LIKED} “Title A1”"), ("A2", f"{LIKED} “Title A0”")]  # fmt: skip
    assert {i for i, _, _ in got[2:]} == {"B0", "B1", "B2"}
    assert got[1][1] > got[2][1] == got[3][1] == got[4][1]  # nothing links the user to them
    assert w.ids(w.rank("u", now=NOW + 1000)) == [i for i, _, _ in got]


@pytest.mark.parametrize(
    ("etype", "value", "verb"),
    [
        ("like", None, LIKED),
        ("click", None, LIKED),
        ("view", 1.0, LIKED),  # weight >= 0.7
        ("view", 0.9, LIKED),
        ("view", None, SIMILAR),
        ("view", 0.5, SIMILAR),
    ],  # fmt: skip
)
def test_a_content_reason_says_liked_only_for_a_real_positive_action(
    etype: str, value: float | None, verb: str
) -> None:
    w = World(params(CONTENT))
    w.add("seen", (1, 0, 0, 0))
    w.add("close", (1, 0.1, 0, 0))
    w.add("far", (0, 0, 1, 0))
    got = w.act("u", "seen", etype, value=value).ranked.items(w.cat)
    assert (got[0][0], got[0][2]) == ("close", f"{verb} “Title seen”")


def test_a_cf_reason_names_the_seed_that_contributes_most() -> None:
    """Others took m2 then t; the user took m1 then m2: t comes first, explained by m2."""
    w = World()
    for i in ("m1", "m2", "t", "other"):
        w.add(i)  # all alike: only the co-occurrence tells them apart
    for n in range(5):
        w.act(f"v{n}", "m2")
        w.act(f"v{n}", "t", ts=NOW + 1000)
    w.act("u", "m1", ts=NOW + 2000)
    got = w.act("u", "m2", ts=NOW + 3000).ranked.items(w.cat)
    assert [i for i, _, _ in got] == ["t", "other"]
    assert got[0][2] == "popular with people who watched “Title m2”"


def test_the_session_is_the_users_own_time_not_the_workers_clock() -> None:
    """An event processed hours after it happened (a backlog) is answered as one processed at
    once: the user was in a session at the event's time. A request hours after the user's last
    event counts the short-term feature (recent) at 0.5 ** (time away / session half-life):
    with content and recent weighed alike and equal here (one like), about half the score."""
    w = World(params(CONTENT))
    for i, v in (("seen", (1, 0, 0, 0)), ("close", (1, 0.1, 0, 0)), ("far", (1, 0, 1, 0))):
        w.add(i, v)
    ev = [Event("u", "seen", "like", NOW)]
    on_time = w.model.step(ev, [UserState()], NOW).outcomes[0]
    late = w.model.step(ev, [UserState()], NOW + 5 * HOUR).outcomes[0]
    assert on_time.ranked is not None and late.ranked is not None
    assert w.ids(on_time.ranked) == w.ids(late.ranked) == ["close", "far"]
    np.testing.assert_allclose(late.ranked.scores, on_time.ranked.scores)
    w.states["u"] = on_time.state
    back = w.rank("u", now=NOW + 5 * HOUR)  # ten half-lives of 30 minutes
    assert w.ids(back) == ["close", "far"]
    np.testing.assert_allclose(back.scores, on_time.ranked.scores * (1 + 0.5**10) / 2, rtol=1e-5)


def test_a_new_user_gets_trending_and_fresh_items() -> None:
    w = World()
    old = NOW - 48 * 100 * HOUR  # freshness 0.5 ** 100
    w.add("hot", tags=("news",), published_at=old)
    w.add("fresh", tags=("drama", "crime"), published_at=NOW - HOUR)
    w.add("bare", published_at=NOW - 2 * HOUR)
    w.add("dull", published_at=old)
    w.add("undated")  # no popularity, no publication time: nothing
    w.side_row("hot", 50.0)
    w.side_row("dull", 1.0, ts=NOW - 400 * HOUR)
    got = w.rank("new").items(w.cat)
    assert got.pop()[:2] == ("undated", 0.0)
    why = [
        ("hot", "trending now"),  # popularity and popular 0.3 each: the first named
        ("fresh", "new in drama"),
        ("bare", "new"),
        ("dull", "popular"),  # once, long ago: more popular over all time than now
    ]
    assert [(i, r) for i, _, r in got] == why
    pop_dull = math.log1p(0.5 ** (400 / 24)) / math.log(51)  # log-scaled by the best (hot)
    all_dull = math.log(2) / math.log(51)  # 1 interaction against hot's 50
    want = [0.6, 0.1 * 0.5 ** (1 / 48), 0.1 * 0.5 ** (2 / 48), 0.3 * (pop_dull + all_dull)]
    assert [s for _, s, _ in got] == pytest.approx(want, rel=1e-5)


def test_a_dislike_pushes_similar_items_down_and_out() -> None:
    w = World()
    for i, v in (("liked", (1, 0, 0, 0)), ("disliked", (0, 1, 0, 0)),
                 ("like-the-disliked", (0.2, 1, 0, 0)), ("neutral", (0, 0, 1, 0))):  # fmt: skip
        w.add(i, v)
    w.act("u", "liked")
    before = {i: s for i, s, _ in w.rank("u").items(w.cat)}
    w.act("u", "disliked", "dislike", ts=NOW + 1)
    after = {i: s for i, s, _ in w.rank("u", now=NOW + 1).items(w.cat)}
    assert set(before) == {"disliked", "like-the-disliked", "neutral"}
    assert set(after) == {"like-the-disliked", "neutral"}
    assert after["like-the-disliked"] < before["like-the-disliked"]
    assert after["like-the-disliked"] < after["neutral"]  # now below an unrelated item


def test_a_fresh_look_alike_of_the_liked_item_ranks_first() -> None:
    w, old = World(), NOW - 48 * 100 * HOUR
    for n in range(8):
        w.add(f"old{n}", (0, 1, n / 10, 0), published_at=old)
    w.add("liked", (1, 0.1, 0, 0), published_at=old)
    w.add("similar-but-old", (1, 0.2, 0.05, 0), published_at=old)
    w.add("brand-new", (1, 0.15, 0.05, 0), published_at=old)
    w.act("u", "liked")
    assert set(w.ids(w.rank("u", 2))) == {"brand-new", "similar-but-old"}
    w.add("brand-new", (1, 0.15, 0.05, 0), published_at=NOW - HOUR)  # published an hour ago
    assert w.ids(w.rank("u", 1)) == ["brand-new"]


def test_two_taste_groups_separate_through_co_occurrence() -> None:
    """Group A users take only A items, group B only B items (all items look alike). A new
    user who takes one A item gets every other A item above every B item, and vice versa."""
    rng = np.random.default_rng(3)
    w = World(params(k=12))
    ids_a, ids_b = [f"A{n}" for n in range(6)], [f"B{n}" for n in range(6)]
    for i in ids_a + ids_b:
        w.add(i)
    picks = {f"u{n}": rng.permutation(ids_a if n % 2 == 0 else ids_b)[:4] for n in range(40)}
    for r in range(4):  # one step per round: every user's r-th event
        w.step([Event(u, str(p[r]), "like", NOW + r) for u, p in picks.items()], NOW + r)
    for first, mine, theirs in (("A0", ids_a, ids_b), ("B3", ids_b, ids_a)):
        got = {i: s for i, s, _ in w.act(f"new-{first}", first, ts=NOW + 9).ranked.items(w.cat)}
        assert set(got) == set(mine + theirs) - {first}
        assert min(got[i] for i in mine if i != first) > max(got[i] for i in theirs)


@pytest.mark.parametrize("dense", [True, False])
def test_history_counts_the_candidates_row_over_everything_the_user_took(dense: bool) -> None:
    """u took h0..h29 (only the Bloom filter remembers most) and "last". "both" co-occurs with
    20 of the old items, "other" with none: "both" ranks first through "history" alone, with
    the whole-catalog matrix and with the published rows alike."""
    w = World(params((0, 0, 0, 0, 0, 1.0, 0, 0), recent_items=4), capacity=16,
              dense_limit=4096 if dense else 16)  # fmt: skip
    old = [f"h{n}" for n in range(30)]
    for i in [*old, "both", "other", "last", "filler"]:
        w.add(i)
    assert (w.cat.dense_hist is not None) == dense
    for n, i in enumerate([*old, "last"]):
        w.act("u", i, ts=NOW + n, publish=False)
    st = w.states["u"]
    assert not (st.recent == item_hash("h0")).any() and st.has_seen("h0")  # filter only
    assert not any(st.has_seen(i) for i in ("both", "other", "filler"))
    w.side_row("both", nb=[(h, 3.0) for h in old[:20]], count=20.0)
    w.side_row("other", nb=[("filler", 9.0)], count=20.0)
    got = w.rank("u", now=NOW + 30).items(w.cat)
    # history alone: "both" is the user's best, counting m / (m + 1), m = 20 x 3 behind it
    reason = "popular with people who watch what you watch"
    assert got[0] == ("both", pytest.approx(60 / 61), reason)
    rest = sorted(["other", "filler"], key=item_hash)  # tied at 0: by hash
    assert [(i, s) for i, s, _ in got[1:]] == [(i, 0.0) for i in rest]


# -- what a list never holds; ties -------------------------------------------------------------


@pytest.mark.parametrize("full_scan_limit", [4096, 4])
def test_lists_leave_out_taken_disliked_and_deleted_items(full_scan_limit: int) -> None:
    """The most popular items are the ones the user took (most only in the filter, their
    recent list holds 4), disliked or that were deleted: the list is the rest, by popularity;
    a deleted item published again and new items (the catalog grows) are listed."""
    w = World(params(POPULAR, recent_items=4, full_scan_limit=full_scan_limit), capacity=16)
    p = [f"p{n}" for n in range(12)]
    for i in p:
        w.add(i)
    w.act("u", "p6", "dislike", publish=False)
    for n in range(6):
        w.act("u", p[n], "click", ts=NOW + n + 1, publish=False)
    st = w.states["u"]
    assert [int(h) for h in st.recent] == [item_hash(i) for i in p[2:6]]
    assert st.disliked.tolist() == [item_hash("p6")]
    for n, i in enumerate(p):
        w.side_row(i, 100.0 - n)
    w.cat.delete("p7")
    assert w.ids(w.rank("u", now=NOW + 6)) == ["p8", "p9", "p10", "p11"]
    w.add("p7")  # published again
    assert w.ids(w.rank("u", 2, now=NOW + 6)) == ["p7", "p8"]
    for n in range(12, 20):  # the catalog grows past its capacity while serving
        w.add(f"p{n}")
    w.side_row("p19", 200.0)
    assert w.ids(w.rank("u", 2, now=NOW + 6)) == ["p19", "p7"]


def test_ties_go_by_item_hash_whatever_the_order_items_were_added() -> None:
    rng = np.random.default_rng(1)
    ids = [f"i{n}" for n in range(30)]
    dirs = [(1, 0, 0, 0), (1, 1, 0, 0), (0, 0, 1, 0)]
    lists, fresh = [], []
    for order in (ids, ids[::-1], [str(i) for i in rng.permutation(ids)]):
        w = World(params(CONTENT))
        for i in order:
            w.add(i, dirs[int(i[1:]) % 3])
        w.act("u", "i0", publish=False)
        lists.append(w.rank("u", 40).items(w.cat))
        fresh.append(w.ids(w.rank("nobody", 40)))
    assert lists[0] == lists[1] == lists[2] and fresh[0] == fresh[1] == fresh[2]
    score = {i: s for i, s, _ in lists[0]}
    assert len(set(score.values())) == 3 and len(score) == 29  # three groups of ties
    assert list(score) == sorted(score, key=lambda i: (-score[i], item_hash(i)))
    assert fresh[0] == sorted(ids, key=item_hash)  # nothing known: every score 0


# -- the candidate mode --------------------------------------------------------------------


def candidate_world(prior: tuple[float, ...], full_scan_limit: int = 10) -> World:
    """39 items; the user took t1, t0, s1, s2 (t1 only in the filter: recent_items=3)."""
    w = World(params(prior, recent_items=3, k=2, candidate_factor=2,
                     full_scan_limit=full_scan_limit))  # fmt: skip
    for n in range(10):
        w.add(f"t{n}", (0, 0, 1, 0))
        w.add(f"f{n}", (0, 0, 0, 1), published_at=NOW - (n + 1) * HOUR)
    for n in range(6):
        w.add(f"n{n}", (0, 0, 0, 1))
        w.add(f"c{n}", (1, 0.5 + 0.1 * n, 0, 0))
    for n in range(1, 6):
        w.add(f"far{n}", (1, 0.01 * n, 0, 0))  # near-copies of s2, in no candidate source
    cn = [("c0", 0.9), ("c1", 0.8), ("c2", 0.7), ("s1", 0.95), ("c3", 0.6), ("c4", 0.5)]
    w.add("s1", (1, 0, 0, 0), neighbours=[("c5", 0.99)])
    w.add("s2", (1, 0, 0, 0), neighbours=[*cn, ("not-in-catalog", 0.99)])
    for n, i in enumerate(("t1", "t0", "s1", "s2")):
        w.act("u", i, ts=NOW + n, publish=False)
    for n in range(10):
        w.side_row(f"t{n}", 100.0 - 10 * n)
    w.side_row("s1", nb=[(f"n{n}", 6.0 - n) for n in range(6)], count=1.0)
    w.side_row("s2", nb=[("n5", 3.0), ("s1", 5.0)], count=1.0)
    w.cat.delete("n1")
    w.cat.delete("t5")
    return w


def test_candidates_are_the_strongest_live_items_of_each_source() -> None:
    """k * candidate_factor = 4 per source. Co-occurrence, seed-weighted (s2: 1, s1: 0.8):
    n0 4.8, n1 (deleted), n5 0.8 + 3 = 3.8, n2 3.2, n3 2.4 (s1: taken); content: c0 0.9,
    c1 0.8, c5 0.8 * 0.99, c2 0.7 (s1: taken); trending and fresh: their first 8 live ones."""
    w = candidate_world(CONTENT)
    st = w.states["u"]
    users = scoring.resolve_users(w.cat, [st], w.model.p.score, now_ms=st.last_ts)
    got = {w.cat.ids[int(r)] for r in w.model.candidates(users, ks=[2]).r}
    trending = [f"t{n}" for n in (0, 1, 2, 3, 4, 6, 7, 8)]
    assert got == {"n0", "n5", "n2", "n3", "c0", "c1", "c5", "c2", *trending,
                   *(f"f{n}" for n in range(8))}  # fmt: skip


@pytest.mark.parametrize(
    ("prior", "full_scan_limit", "want"),
    [
        (CONTENT, 4096, ["far1", "far2"]),  # the whole catalog: s2's near-copies
        (CONTENT, 10, ["c0", "c1"]),  # the best content neighbours
        (POPULAR, 10, ["t2", "t3"]),  # t0 taken, t1 only in the filter
        (POPULAR, 4096, ["t2", "t3"]),
    ],
)
def test_lists_in_candidate_mode_come_from_the_sources_and_exclude_the_seen(
    prior: tuple[float, ...], full_scan_limit: int, want: list[str]
) -> None:
    w = candidate_world(prior, full_scan_limit)
    assert w.ids(w.rank("u", 2, now=NOW + 4)) == want
    o = w.act("u", "c3", "click", ts=NOW + 5, publish=False)  # the step lists the same way
    assert o.status == "applied" and not {"t0", "t1", "s1", "s2", "c3"} & set(w.ids(o.ranked))


def test_an_absent_modality_is_no_evidence_of_likeness() -> None:
    """Media items share one neutral title (text cosine 1 among all of them). A user who liked
    two cat photos (text and image) gets the other cat photos before speech and noise clips
    (text and audio, no image): the image the clips lack counts as an unrelated item's cosine
    (0), not as a match, so a perfect title match alone does not outrank them."""
    p = params(CONTENT)
    cat = Catalog({"text": 4, "image": 4, "audio": 4}, p.cooc, capacity=64)
    model = OnlineModel(cat, p)
    title = unit(1, 1, 1, 1)
    rng = np.random.default_rng(0)
    for n in range(4):
        cat.upsert(f"cat-{n}", {"text": title, "image": unit(1, 0.1 * n, 0.05, 0)})
        cat.upsert(f"clip-{n}", {"text": title, "audio": unit(*rng.normal(size=4))})
    cat.upsert("dog", {"text": title, "image": unit(0, 1, 0, 0)})
    st = UserState()
    for n, item in enumerate(["cat-0", "cat-1"]):
        st = model.step([Event("u", item, "like", NOW + n)], [st], NOW + n).outcomes[0].state
    ranked = model.recommend([st], [7], NOW + 2)[0]
    ids = [cat.ids[int(r)] for r in ranked.rows]
    assert ids[:2] == ["cat-2", "cat-3"], ids
    assert set(ids[2:]) == {"dog", "clip-0", "clip-1", "clip-2", "clip-3"}
    # content and recent alike: (title cosine 1 + image cosine) / 2 for a photo, so (1 + 0) / 2
    # for a clip (as for the dog photo, image cosine ~0): each clip scores 0.5 + 0.5
    clips = [s for i, s in zip(ids, ranked.scores, strict=True) if i.startswith("clip")]
    assert clips == pytest.approx([1.0] * 4, abs=0.005)  # the interest is kept as int8 codes
    assert ranked.scores[1] > 1.9


# -- batches, duplicates, unknown items ------------------------------------------------------


def ring_world(rng: np.random.Generator, full_scan_limit: int, lr: float) -> tuple[World, list]:
    """30 items of random vectors, each with its next three as content neighbours, an hour
    apart in publication."""
    w = World(params(full_scan_limit=full_scan_limit, learning_rate=lr))
    ids = [f"i{n}" for n in range(30)]
    for n, i in enumerate(ids):
        nbs = [(ids[(n + d) % 30], 0.9 - 0.1 * d) for d in (1, 2, 3)]
        w.add(i, rng.normal(size=4), published_at=NOW - n * HOUR, neighbours=nbs)
    return w, ids


@pytest.mark.parametrize("full_scan_limit", [4096, 8])
def test_a_batch_equals_its_events_one_at_a_time(full_scan_limit: int) -> None:
    rng = np.random.default_rng(7)
    w, ids = ring_world(rng, full_scan_limit, 0.1)
    for r in range(5):  # some history, published
        evs = [Event(f"u{n}", str(rng.choice(ids)), "like", NOW + r, dedupe_id=f"e{r}.{n}")
               for n in range(8)]  # fmt: skip
        w.step(evs, NOW + r)
    t = NOW + 10
    evs = [Event("u0", "i3", "like", t), Event("u1", "i4", "view", t, 0.4),
           Event("u2", "i5", "dislike", t), Event("new", "i6", "click", t),
           Event("u3", "missing", "like", t), Event("u4", "i7", "like", t, dedupe_id="e4.4"),
           Event("u5", "i8", "share", t, partition=2, offset=9)]  # fmt: skip
    states = [w.states.get(e.user_id, UserState()) for e in evs]
    raw = [s.to_bytes() for s in states]
    batch = w.model.step(evs, states, t)
    alone = [w.model.step([e], [s], t) for e, s in zip(evs, states, strict=True)]
    assert [s.to_bytes() for s in states] == raw  # the inputs are not changed
    statuses = ["applied"] * 4 + ["unknown_item", "duplicate", "applied"]
    assert [o.status for o in batch.outcomes] == [a.outcomes[0].status for a in alone] == statuses
    for o, a in zip(batch.outcomes, [a.outcomes[0] for a in alone], strict=True):
        assert o.state.to_bytes() == a.state.to_bytes()
        assert (o.ranked is None) == (a.ranked is None)
        if a.ranked is not None:
            assert o.ranked is not None and o.ranked.items(w.cat) == a.ranked.items(w.cat)
    assert batch.updates == [u for a in alone for u in a.updates]
    assert any(u.pairs for u in batch.updates)
    assert len(batch.outcomes[0].state.weights) == scoring.N_FEATURES
    # the shared weights' gradients: those of the events alone, all taken at the weights the
    # round started with (positive events of users with a list to learn from)
    assert batch.gradients.keys() == {n for n, a in enumerate(alone) if a.gradients}
    assert len(batch.gradients) >= 2
    for n, g in batch.gradients.items():
        np.testing.assert_array_equal(g, alone[n].gradients[0])


@pytest.mark.parametrize("full_scan_limit", [4096, 8])
def test_the_list_a_step_answers_is_the_new_states_list(full_scan_limit: int) -> None:
    """The step scores the learners' states before their events and every state after them
    in one call, then ranks each learner's list again under its new deltas: what it answers
    is what ``recommend`` gives for the new state."""
    w, ids = ring_world(np.random.default_rng(11), full_scan_limit, 0.5)
    rng = np.random.default_rng(12)
    learned = 0
    for r in range(6):
        evs = [Event(f"u{n}", str(rng.choice(ids)), "like", NOW + r) for n in range(6)]
        before = [w.states.get(e.user_id, UserState()) for e in evs]
        res = w.step(evs, NOW + r, publish=False)
        for o, st in zip(res.outcomes, before, strict=True):
            assert o.ranked is not None
            want = w.model.recommend([o.state], [BASE.k], NOW + r)[0]
            assert o.ranked.items(w.cat) == want.items(w.cat)
            learned += int(not np.array_equal(o.state.weights, st.weights))
        for h in w.side.apply(res.updates):  # published after the round, as the worker does
            w.cat.set_side(h, w.side.rows[h])
    assert learned >= 10  # the deltas did change: the lists were ranked again


def test_duplicates_and_unknown_items_change_nothing() -> None:
    w = World()
    for n, i in enumerate("abcd"):
        w.add(i, (1, n, 0, 0))
    w.act("u", "a", dedupe_id="e1", partition=0, offset=5)
    st = w.states["u"]
    # (the list as of the state: a request at its last event, in a session)
    raw, want = st.to_bytes(), w.rank("u", now=NOW).items(w.cat)
    for ev in (Event("u", "b", "like", NOW + 1, dedupe_id="e1"),
               Event("u", "b", "like", NOW + 1, partition=0, offset=5),
               Event("u", "b", "like", NOW + 1, partition=0, offset=4)):  # fmt: skip
        res = w.model.step([ev], [st], NOW + 1)
        (o,) = res.outcomes
        assert o.status == "duplicate" and o.state.to_bytes() == raw and res.updates == []
        assert o.ranked is not None and o.ranked.items(w.cat) == want
    for ev in (Event("u", "b", "like", NOW + 1, dedupe_id="e2", partition=0, offset=6),
               Event("u", "b", "like", NOW + 1, partition=1, offset=5)):  # fmt: skip
        res = w.model.step([ev], [st], NOW + 1)
        assert res.outcomes[0].status == "applied" and res.updates
    w.cat.delete("c")
    for item in ("never-published", "c"):  # unknown: nothing changes, nothing to list
        res = w.model.step([Event("u", item, "like", NOW + 1)], [st], NOW + 1)
        (o,) = res.outcomes
        assert (o.status, o.ranked, res.updates, o.state.to_bytes()) == (
            "unknown_item",
            None,
            [],
            raw,
        )
    w.add("c")
    assert w.act("u", "c", ts=NOW + 1).status == "applied"


# -- learning ------------------------------------------------------------------------------


LEARN_PRIOR = (0.1, 0.1, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0)
POPS = np.asarray([50.0, 40.0, 30.0, 20.0, 10.0])
LEARN_CASES = [(10, "A1", 5), (3, "A1", 3), (10, "B0", 0)]  # list size, taken, passed over


def learning_world(k: int, lr: float) -> World:
    # only the items shown above: no drawn negatives, so the step has a known answer
    w = World(
        params(LEARN_PRIOR, k=k, learning_rate=lr, learning_negatives=5,
               learning_random_negatives=0, learning_popular_negatives=0),
        dim=3,
    )  # fmt: skip
    for i, v in (("A0", (1, 0, 0)), ("A1", (0.8, 0.6, 0)), ("A2", (0.6, 0.8, 0))):
        w.add(i, v)
    for n, pop in enumerate(POPS):
        w.add(f"B{n}", (0, 0, 1))
        w.side_row(f"B{n}", float(pop))
    return w


@pytest.mark.parametrize(("k", "taken", "passed_over"), LEARN_CASES)
def test_learning_moves_weights_toward_what_was_taken_over_what_was_shown_above_it(
    k: int, taken: str, passed_over: int
) -> None:
    """Popularity ranks B0..B4 (popularity 50..10, no content) above A1 (content 0.8, not
    popular). Taking A1 learns from the B items shown above it (all shown ones when A1 was
    not listed), their features scaled as that list's were: content up, popularity down.
    Taking the first item listed learns nothing."""
    lr = 0.05
    w = learning_world(k, lr)
    st = w.act("u", "A0", publish=False).state
    shown = ["B0", "B1", "B2", "B3", "B4", "A1", "A2"][:k]
    assert [int(h) for h in st.shown] == [item_hash(i) for i in shown]
    # no hot trend: its divisor is the floor, one interaction's worth (log 2)
    scales = [1, 1, 1, math.log(51), 1, 1, math.log(51), math.log(2)]
    np.testing.assert_allclose(st.scales, scales, rtol=1e-6)
    assert not np.any(st.weights)  # a first event has no list to learn from
    st2 = w.act("u", taken, publish=False).state
    if not passed_over:
        assert not np.any(st2.weights)
        return
    # one BPR step from zero deltas: taken (0.8, 0.8, 0, 0, 0, 0, 0, 0), passed over
    # (0, 0, 0, f, 0, 0, f, 0): popularity now and over all time alike (every count once,
    # now); these rows have no hot trend
    f = np.log1p(POPS[:passed_over]) / math.log(51)
    g = 1 / (1 + np.exp(0.1 * 0.8 * 2 - f))
    pop = -lr * (g * f).mean()
    want = [lr * 0.8 * g.mean(), lr * 0.8 * g.mean(), 0, pop, 0, 0, pop, 0]
    assert st2.weights.tolist() == pytest.approx(want, abs=2e-5)
    assert st2.weights[0] > 0 > st2.weights[3]
    st3 = w.act("u", "A2", publish=False).state  # again passed over the B items
    assert st3.weights[0] > st2.weights[0] and st3.weights[3] < st2.weights[3]
    off = learning_world(k, 0.0)
    off.act("u", "A0", publish=False)
    assert not np.any(off.act("u", taken, publish=False).state.weights)  # learning off


# -- diversity -------------------------------------------------------------------------------

COPIES = {"a1": (1, 0, 0, 0), "a2": (1, 0.01, 0, 0), "a3": (1, 0, 0.01, 0), "b": (0.6, 0, 0.8, 0),
          "c": (0, 1, 0, 0)}  # fmt: skip


def test_near_copies_give_way_to_another_item_when_lists_are_diversified() -> None:
    """Three near-copies closest to the user's interest, b less close, c unrelated."""
    got = {}
    for lam in (0.0, 0.5):
        w = World(params((1.0, 0, 0, 0, 0, 0, 0, 0), diversity=lam))
        for i, v in COPIES.items():
            w.add(i, v)
        st = UserState(interest={"text": unit(1, 0, 0.1, 0)})
        got[lam] = w.model.recommend([st], [2], NOW)[0]
    plain, diverse = got[0.0], got[0.5]
    assert w.ids(plain) == ["a3", "a1"]  # no diversity: by score
    assert w.ids(diverse) == ["a3", "b"]  # the best first, then the other one
    assert diverse.scores[1] < plain.scores[1]  # b scores lower: picked for being different


def _reference_mmr(sim: np.ndarray, rel: np.ndarray, lam: float, k: int) -> list[int]:
    """The textbook greedy loop, pair by pair."""
    picked = [int(np.argmax(rel))]
    while len(picked) < min(k, len(rel)):
        best, best_v = -1, -np.inf
        for j in range(len(rel)):
            if j in picked:
                continue
            v = (1 - lam) * rel[j] - lam * max(sim[j, p] for p in picked)
            if v > best_v:
                best, best_v = j, v
        picked.append(best)
    return picked


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.8])
def test_diversify_is_the_textbook_greedy_mmr(lam: float) -> None:
    rng = np.random.default_rng(3)
    sp = dataclasses.replace(BASE.score, diversity=lam)
    for trial in range(20):
        n = int(rng.integers(2, 30))
        cat = Catalog({"text": 3})
        vecs = rng.normal(size=(n, 3))
        for j in range(n):
            cat.upsert(f"i{j}", {"text": vecs[j]})
        rows = rng.permutation(n).astype(np.int64)  # the pool, best first
        s = np.sort(rng.random(n))[::-1].copy()
        u = vecs[rows] / np.linalg.norm(vecs[rows], axis=1, keepdims=True)
        rel = (s - s.min()) / (s.max() - s.min())
        want = _reference_mmr(u @ u.T, rel, lam, 10)
        assert explain.diversify(cat, rows, s, 10, sp) == want, trial
    off = dataclasses.replace(sp, diversity=0.0)
    assert explain.diversify(cat, rows, s, 3, off) == [0, 1, 2][: min(3, n)]


def test_negatives_are_items_the_user_could_be_shown_drawn_uniformly_and_by_interactions() -> None:
    """The learning step's negatives: never the item taken, one the user took before, or a
    deleted one; the uniform ones spread over the catalog, the popular ones follow the items'
    interactions (P holds 1,000 of the catalog's 1,199); the same event draws the same."""
    n_items = 200
    w = World(params(learning_random_negatives=5, learning_popular_negatives=1))
    for n in range(n_items):
        w.add(f"i{n}")
        w.side_row(f"i{n}", 1.0)
    w.side_row("i7", 1000.0)  # "P"
    for n in range(20, 60):  # the user took i20..i59
        w.act("u", f"i{n}", ts=NOW + n, publish=False)
    w.cat.delete("i3")
    st = w.states["u"]
    users = scoring.resolve_users(w.cat, [st], w.model.p.score, [None], now_ms=NOW)
    taken = w.cat.row_of[item_hash("i10")]
    uni: list[int] = []
    pop: list[int] = []
    for n_events in range(400):
        s = dataclasses.replace(st, n_events=n_events)
        neg = w.model._negative_rows(taken, s, users, 0)
        assert len(neg) == 6
        np.testing.assert_array_equal(neg, w.model._negative_rows(taken, s, users, 0))
        uni += neg[:5].tolist()
        pop.append(int(neg[5]))
    ids = {w.cat.ids[r] for r in uni + pop}
    assert not ids & ({"i10", "i3"} | {f"i{n}" for n in range(20, 60)})
    assert len({w.cat.ids[r] for r in uni}) > 120  # of the 159 the user could be shown
    assert uni.count(w.cat.row_of[item_hash("i7")]) < 40  # 2,000 draws, about 1 in 159 each
    share = pop.count(w.cat.row_of[item_hash("i7")]) / len(pop)
    assert 0.75 < share < 0.92  # 1,000 / 1,159 = 0.86 of the counts the user could be shown
