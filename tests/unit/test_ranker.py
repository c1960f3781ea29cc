"""Ranking (ranking/features.py): the learned scorer over a candidate set, reasons, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from recstream.ranking.features import RankedItem
from recstream.ranking.store import NO_TREND, StoredItem, trend_after

NOW = 1_700_000_000_000
HOUR = 3_600_000


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_to_wire() -> None:
    r = RankedItem("a", 0.123456789, "trending now")
    assert r.to_wire() == {"item_id": "a", "score": 0.123457, "reason": "trending now"}


# -- the learned scorer over a candidate set (ranking.candidates + feature_matrix) ----------

from recstream.ranking.candidates import CandidateSet  # noqa: E402
from recstream.ranking.collab import CoocParams, CoocTable, cooc_pairs  # noqa: E402
from recstream.ranking.features import (  # noqa: E402
    FEATURES,
    ScoreParams,
    excluded_rows,
    feature_matrix,
    recency_weights,
    score,
    top_rows,
    user_weights,
)
from recstream.ranking.state import UserState, apply_event  # noqa: E402

SP = ScoreParams(
    prior=(0.05, 0.05, 1.0, 0.3, 0.1),
    modality_weights={"text": 1.0},
    trending_half_life_ms=24 * HOUR,
    freshness_half_life_ms=48 * HOUR,
)
W = {"view": 0.5, "click": 1.0, "like": 2.0, "share": 3.0, "complete": 2.0, "skip": -0.5,
     "dislike": -2.0}  # fmt: skip


def catalog(vecs: dict[str, np.ndarray], counts: dict[str, float] | None = None) -> CandidateSet:
    items = [
        StoredItem(i, f"Title {i}", ("tag",), None, NO_TREND, vectors={"text": v})
        for i, v in vecs.items()
    ]
    return CandidateSet.from_items(items, {"text": 3}, cf_counts=counts)


def scores_for(
    cs: CandidateSet, st: UserState, table: CoocTable | None = None, params: ScoreParams = SP
) -> dict[str, float]:
    seeds = recency_weights(st.recent, params)
    nbs = {i: cs.neighbour_arrays(table.neighbours(i)) for i, _ in seeds} if table else {}
    counts = {i: table.counts.get(i, 0.0) for i, _ in seeds} if table else {}
    short = {}
    if seeds:
        short = {"text": sum(a * cs.vectors["text"][cs.index[i]] for i, a in seeds)}
    f = feature_matrix(
        cs,
        interest=st.interest,
        short_interest=short,
        seeds=seeds,
        neighbours=nbs,
        seed_counts=counts,
        now_ms=NOW,
        params=params,
    )
    s = score(f, user_weights(params, st.weights), excluded_rows(cs, st.excluded(), st.seen_filter))
    return dict(zip(cs.ids, s.tolist(), strict=True))


def event(st: UserState, cs: CandidateSet, item_id: str, etype: str, ts: int = NOW) -> UserState:
    return apply_event(
        st,
        item_id=item_id,
        item_title=None,
        item_vectors={"text": cs.vectors["text"][cs.index[item_id]]},
        event_type=etype,
        ts=ts,
        value=None,
        weights=W,
        half_life_ms=72 * HOUR,
    )


def test_features_are_named_and_scaled() -> None:
    assert FEATURES == ("content", "recent", "cf", "popularity", "freshness", "history")
    cs = catalog({"a": unit(1, 0, 0), "b": unit(0, 1, 0)})
    f = feature_matrix(
        cs, interest={}, short_interest={}, seeds=[], neighbours={}, seed_counts={},
        now_ms=NOW, params=SP,
    )  # fmt: skip
    assert f.shape == (2, 6) and not f.any()  # nothing known: every feature 0


def test_two_disjoint_taste_groups_separate_through_co_occurrence() -> None:
    """Group A users take only A items, group B only B items (all items look alike, so only
    the collaborative signal can tell them apart). A new user who took one A item must get
    every other A item ranked above every B item."""
    rng = np.random.default_rng(3)
    same = unit(1, 1, 1)
    ids_a, ids_b = [f"A{n}" for n in range(6)], [f"B{n}" for n in range(6)]
    cs = catalog({i: same for i in ids_a + ids_b})
    table = CoocTable.empty(CoocParams(window=8))
    states: dict[str, UserState] = {}
    for n in range(40):
        user, group = f"u{n}", ids_a if n % 2 == 0 else ids_b
        for it in rng.permutation(group)[:4]:
            st = states.get(user, UserState())
            table.apply(str(it), 2.0, cooc_pairs(st.recent, str(it), 2.0, table.params))
            states[user] = event(st, cs, str(it), "like")
    for first, mine, theirs in (("A0", ids_a, ids_b), ("B3", ids_b, ids_a)):
        new = event(UserState(), cs, first, "like")
        s = scores_for(cs, new, table)
        assert s[first] == -np.inf  # already taken: never shown again
        assert min(s[i] for i in mine if i != first) > max(s[i] for i in theirs)


def test_a_dislike_pushes_similar_items_down() -> None:
    cs = catalog(
        {
            "liked": unit(1, 0, 0),
            "disliked": unit(0, 1, 0),
            "like-the-disliked": unit(0.2, 1, 0),
            "neutral": unit(0, 0, 1),
        }
    )
    st = event(UserState(), cs, "liked", "like")
    before = scores_for(cs, st)
    after = scores_for(cs, event(st, cs, "disliked", "dislike"))
    assert after["like-the-disliked"] < before["like-the-disliked"]
    assert after["like-the-disliked"] < after["neutral"]  # now below an unrelated item
    assert after["disliked"] == -np.inf


def test_a_new_item_like_the_liked_ones_ranks_first_at_once() -> None:
    """No interactions and no co-occurrence yet: its content vector alone puts it first among
    items as (un)popular as it, and a fresh one beats older look-alikes."""
    vecs = {f"old{n}": unit(0, 1, n / 10) for n in range(8)}
    vecs["liked"] = unit(1, 0.1, 0)
    vecs["similar-but-old"] = unit(1, 0.2, 0.05)
    vecs["brand-new"] = unit(1, 0.15, 0.05)
    cs = catalog(vecs)
    st = event(UserState(), cs, "liked", "like")
    s = scores_for(cs, st)
    order = sorted((i for i in s if s[i] > -np.inf), key=lambda i: -s[i])
    assert set(order[:2]) == {"brand-new", "similar-but-old"}
    cs.published_at[cs.index["brand-new"]] = NOW - HOUR  # published an hour ago
    s = scores_for(cs, st)
    assert max(s, key=lambda i: s[i]) == "brand-new"


def test_user_weight_deltas_and_top_rows() -> None:
    # SP's prior predates "history": that feature gets weight 0; deltas of the wrong length
    # (a state from before it) are ignored.
    assert user_weights(SP, []).tolist() == pytest.approx([*SP.prior, 0.0])
    assert user_weights(SP, [0.1, 0, 0, -0.1, 0]).tolist() == pytest.approx([*SP.prior, 0.0])
    assert user_weights(SP, [0.1, 0, 0, -0.1, 0, 0.5]).tolist() == pytest.approx(
        [0.15, 0.05, 1.0, 0.2, 0.1, 0.5]
    )
    s = np.array([0.5, -np.inf, 0.9, 0.5, 0.1])
    assert top_rows(s, 3).tolist() == [2, 0, 3]
    assert top_rows(s, 10).tolist() == [2, 0, 3, 4]  # -inf never


def test_recency_weights_keep_positive_recent_items_newest_first() -> None:
    recent = [("a", 1.0), ("b", -0.5), ("c", 2.0), ("d", 0.5)]
    p = ScoreParams(SP.prior, SP.modality_weights, 1.0, 1.0, recency_decay=0.5, recent_window=2)
    assert recency_weights(recent, p) == [("d", 1.0), ("c", 0.5)]


# -- rank_candidates and reasons ------------------------------------------------------------

from recstream.ranking.features import Seed  # noqa: E402
from recstream.ranking.rank import rank_candidates  # noqa: E402


def seeds_of(cs: CandidateSet, st: UserState, table: CoocTable | None = None) -> dict[str, Seed]:
    """What the stream fetches for the user's recent items: vectors, title, published row."""
    return {
        i: Seed(
            i,
            cs.titles[cs.index[i]],
            {"text": cs.vectors["text"][cs.index[i]]},
            table.neighbours(i) if table else (),
            table.counts.get(i, 0.0) if table else 0.0,
        )
        for i, _ in st.recent
    }


def test_rank_candidates_scores_as_the_parts_do_and_orders_ties_by_id() -> None:
    cs = catalog({"x": unit(1, 0, 0), "b": unit(0, 1, 0), "a": unit(0, 1, 0), "c": unit(0, 0, 1)})
    st = event(UserState(), cs, "x", "like")
    ranked, sc = rank_candidates(cs, st, SP, seeds_of(cs, st), NOW, k=10)
    expected = scores_for(cs, st)
    assert [r.item_id for r in ranked] == ["a", "b", "c"]  # a, b tie: by id; x taken
    assert all(r.score == pytest.approx(expected[r.item_id]) for r in ranked)
    assert sc.scores[cs.index["x"]] == -np.inf
    assert ranked[0].to_wire()["item_id"] == "a"
    assert len(rank_candidates(cs, st, SP, seeds_of(cs, st), NOW, k=1)[0]) == 1


def test_reason_cf_names_the_seed_that_contributes_most() -> None:
    """A user took m1 then m2; only m2's co-watchers watched t: the reason names m2."""
    same = unit(1, 1, 1)
    cs = catalog({i: same for i in ("m1", "m2", "t", "other")})
    table = CoocTable.empty(CoocParams())
    for _ in range(5):
        st = UserState()
        for it in ("m2", "t"):
            table.apply(it, 2.0, cooc_pairs(st.recent, it, 2.0, table.params))
            st = event(st, cs, it, "like")
    st = event(event(UserState(), cs, "m1", "like"), cs, "m2", "like")
    ranked, _ = rank_candidates(cs, st, SP, seeds_of(cs, st, table), NOW, k=1)
    assert ranked[0].item_id == "t"
    assert ranked[0].reason == "popular with people who watched \u201cTitle m2\u201d"


def test_reason_content_says_liked_only_for_a_real_positive_action() -> None:
    content_only = ScoreParams((1.0, 1.0, 0.0, 0.0, 0.0), {"text": 1.0}, 24 * HOUR, 48 * HOUR)
    cs = catalog({"seen": unit(1, 0, 0), "close": unit(1, 0.1, 0), "far": unit(0, 0, 1)})
    for etype, verb in (("like", "because you liked"), ("view", "similar to")):
        st = event(UserState(), cs, "seen", etype)
        ranked, _ = rank_candidates(cs, st, content_only, seeds_of(cs, st), NOW, k=1)
        assert ranked[0].item_id == "close"
        assert ranked[0].reason == f"{verb} \u201cTitle seen\u201d"
    # A view watched to the end counts as liking it.
    st = apply_event(
        UserState(), item_id="seen", item_title=None, item_vectors={"text": unit(1, 0, 0)},
        event_type="view", ts=NOW, value=1.0, weights=W, half_life_ms=72 * HOUR,
    )  # fmt: skip
    ranked, _ = rank_candidates(cs, st, content_only, seeds_of(cs, st), NOW, k=1)
    assert ranked[0].reason.startswith("because you liked")


def test_reason_trending_and_new_in_tag_for_a_new_user() -> None:
    cs = catalog({"hot": unit(1, 0, 0), "fresh": unit(0, 1, 0), "dull": unit(0, 0, 1)})
    cs.trend[cs.index["hot"]] = trend_after(NO_TREND, 50.0, NOW, 24 * HOUR)
    cs.trend[cs.index["dull"]] = trend_after(NO_TREND, 1.0, NOW - 400 * HOUR, 24 * HOUR)
    cs.published_at[cs.index["fresh"]] = NOW - HOUR
    ranked, _ = rank_candidates(cs, UserState(), SP, {}, NOW, k=3)
    why = {r.item_id: r.reason for r in ranked}
    assert why["hot"] == "trending now"
    assert why["fresh"] == "new in tag"


def test_collab_candidates_are_the_strongest_weighted_neighbours_not_excluded() -> None:
    from recstream.ranking.collab import collab_candidates

    seeds = {
        "s1": Seed("s1", cf_top=[("a", 4.0), ("b", 2.0), ("x", 9.0)], cf_count=4.0),
        "s2": Seed("s2", cf_top=[("b", 3.0), ("c", 1.0)], cf_count=1.0),
    }
    recent = [("s1", 1.0), ("s2", 1.0)]  # s2 newest: weight 1, s1: 0.8 (SP.recency_decay)
    # a: 0.8 * 4 / 2 = 1.6; b: 0.8 * 2 / 2 + 3 = 3.8; c: 1.0; x excluded
    got = collab_candidates(recent, seeds, {"x"}, 2, SP)
    assert got == ["b", "a"]
    assert collab_candidates(recent, seeds, {"x"}, 10, SP) == ["b", "a", "c"]


def test_bloom_positions_matrix_matches_the_single_item_positions() -> None:
    from recstream.ranking import seen

    ids = [f"item-{n}" for n in range(50)] + ["item-3"]
    mat = seen.positions_matrix(ids, 6144)
    assert mat.tolist() == [seen.positions(i, 6144) for i in ids]


def test_history_counts_the_candidates_own_row_over_everything_the_user_took() -> None:
    """Whole-history signal: u took h1..h30 long ago (only the Bloom filter remembers them)
    and one recent item. Candidate "both" co-occurs with many of the old items, "other" with
    none: "both" ranks first, through "history" alone (content and cf are blind here)."""
    same = unit(1, 1, 1)
    old = [f"h{n}" for n in range(30)]
    vecs = {i: same for i in [*old, "both", "other", "last", "filler"]}
    items = [
        StoredItem(i, f"Title {i}", ("tag",), None, NO_TREND, vectors={"text": v})
        for i, v in vecs.items()
    ]
    tops = {"both": [(h, 3.0) for h in old[:20]], "other": [("filler", 9.0)]}
    counts = {"both": 20.0, "other": 20.0}
    from recstream.ranking.collab import pack_row, unpack_row

    rows = {i: unpack_row(pack_row(t, 6144)) for i, t in tops.items()}
    assert unpack_row({}) is None
    cs = CandidateSet.from_items(items, {"text": 3}, cf_counts=counts, cf_rows=rows)  # type: ignore[arg-type]
    st = UserState()
    for h in [*old, "last"]:
        st = event(st, cs, h, "like")
    assert "h0" not in st.excluded()  # older than the exact recent list
    hist_only = ScoreParams((0, 0, 0, 0, 0, 1.0), {"text": 1.0}, 24 * HOUR, 48 * HOUR)
    ranked, sc = rank_candidates(cs, st, hist_only, seeds_of(cs, st), NOW, k=2)
    assert [r.item_id for r in ranked][0] == "both"
    assert sc.features[cs.index["both"], 5] == pytest.approx(1.0)
    assert sc.features[cs.index["other"], 5] == 0.0
    assert ranked[0].reason == "popular with people who watch what you watch"
    assert sc.scores[cs.index["h0"]] == -np.inf  # taken long ago: the Bloom filter hides it
