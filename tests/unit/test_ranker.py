"""Ranking (ranking/ranker.py): merging, the documented score, reasons, determinism."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from ranking.ranker import RankedItem, RankParams, rank, similarity
from ranking.store import NO_TREND, StoredItem, trend_after

NOW = 1_700_000_000_000
HOUR = 3_600_000
PARAMS = RankParams(
    popularity_weight=0.15,
    freshness_weight=0.10,
    freshness_half_life_ms=48 * HOUR,
    trending_half_life_ms=24 * HOUR,
    modality_weights={"text": 1.0},
)


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def item(
    item_id: str,
    vec: np.ndarray | None = None,
    *,
    title: str | None = None,
    tags: tuple[str, ...] = (),
    published_at: int | None = None,
    hits: float = 0.0,
    hit_age_ms: int = 0,
) -> StoredItem:
    trend = NO_TREND
    if hits:
        trend = trend_after(NO_TREND, hits, NOW - hit_age_ms, PARAMS.trending_half_life_ms)
    return StoredItem(
        item_id=item_id,
        title=title,
        tags=tags,
        published_at=published_at,
        trend=trend,
        vectors={} if vec is None else {"text": vec},
    )


def run(
    candidates: list[StoredItem],
    interest: dict[str, np.ndarray] | None = None,
    *,
    exclude: set[str] | None = None,
    anchors: list[StoredItem] | None = None,
    k: int = 10,
) -> list[RankedItem]:
    return rank(
        candidates=candidates,
        interest=interest or {},
        exclude=exclude or set(),
        anchors=anchors or [],
        k=k,
        now_ms=NOW,
        params=PARAMS,
    )


def ids(ranked: list[RankedItem]) -> list[str]:
    return [r.item_id for r in ranked]


def test_empty_candidates() -> None:
    assert run([]) == []
    assert run([], {"text": unit(1, 0, 0)}) == []
    assert run([item("a", unit(1, 0, 0))], exclude={"a"}) == []


def test_excludes() -> None:
    cands = [item(i, unit(1, n, 0)) for n, i in enumerate("abcd")]
    out = run(cands, {"text": unit(1, 0, 0)}, exclude={"a", "c", "zzz"})
    assert sorted(ids(out)) == ["b", "d"]


def test_dedupes_candidates_from_several_sources() -> None:
    a, b, c = item("a", unit(1, 0, 0)), item("b", unit(0, 1, 0), hits=3), item("c", unit(0, 0, 1))
    similar, trending, fresh = [a, b], [b, a], [c, a]
    out = run([*similar, *trending, *fresh], {"text": unit(1, 0, 0)})
    assert sorted(ids(out)) == ["a", "b", "c"]
    assert len(out) == 3


def test_k_is_respected() -> None:
    cands = [item(f"i{n:02d}", unit(1, n / 10, 0)) for n in range(20)]
    interest = {"text": unit(1, 0, 0)}
    assert len(run(cands, interest, k=5)) == 5
    assert len(run(cands, interest, k=1)) == 1
    assert len(run(cands, interest, k=100)) == 20
    assert ids(run(cands, interest, k=5)) == ids(run(cands, interest, k=20))[:5]


def test_order_follows_the_documented_score() -> None:
    interest = {"text": np.array([3.0, 1.0, 0.0], dtype=np.float32)}  # not unit on purpose
    cands = [
        item("close", unit(1, 0.3, 0)),
        item("far", unit(0, 0, 1), hits=10),
        item("mid-fresh", unit(1, 1, 1), published_at=NOW - 12 * HOUR, hits=1, hit_age_ms=HOUR),
        item("old", unit(1, 1, 0), published_at=NOW - 400 * HOUR),
        item("future", unit(-1, 0, 0), published_at=NOW + HOUR),  # clock skew: age 0
    ]
    u = interest["text"] / np.linalg.norm(interest["text"])
    pops = {
        c.item_id: (
            math.exp(c.trend - NOW * math.log(2) / PARAMS.trending_half_life_ms)
            if c.trend > NO_TREND
            else 0.0
        )
        for c in cands
    }
    max_log = max(math.log1p(p) for p in pops.values())
    expected = {}
    for c in cands:
        sim = float(np.dot(u, c.vectors["text"]))
        pop = math.log1p(pops[c.item_id]) / max_log
        fresh = 0.0
        if c.published_at is not None:
            fresh = 0.5 ** (max(0, NOW - c.published_at) / PARAMS.freshness_half_life_ms)
        expected[c.item_id] = sim + 0.15 * pop + 0.10 * fresh
    assert pops["far"] == pytest.approx(10.0)

    out = run(cands, interest)
    assert ids(out) == sorted(expected, key=lambda i: -expected[i])
    for r in out:
        assert r.score == pytest.approx(expected[r.item_id], abs=1e-6)
    assert [r.score for r in out] == sorted((r.score for r in out), reverse=True)


def test_similarity_is_weighted_mean_cosine_over_shared_modalities() -> None:
    it = StoredItem(
        "a", None, (), None, NO_TREND, vectors={"text": 2 * unit(1, 0), "image": unit(0, 1)}
    )
    units = {"text": unit(1, 0), "image": unit(1, 0), "audio": unit(1, 0)}
    assert similarity(it, units, {"text": 3.0, "image": 1.0}) == pytest.approx(0.75)
    assert similarity(it, {"audio": unit(1, 0)}, {}) == 0.0


def test_cold_user_gets_trending_and_new_items() -> None:
    cands = [
        item("hot", unit(1, 0, 0), hits=50, tags=("news",)),
        item("new", unit(0, 1, 0), published_at=NOW - HOUR, tags=("cooking", "pasta")),
        item("new-untagged", unit(0, 0, 1), published_at=NOW - 2 * HOUR),
        item("plain", unit(1, 1, 0)),
    ]
    out = {r.item_id: r for r in run(cands, {})}
    assert ids(run(cands, {}))[0] == "hot"  # 0.15 * 1.0 beats 0.10 * ~0.99
    assert out["hot"].reason == "trending now"
    assert out["new"].reason == "new in cooking"
    assert out["new-untagged"].reason == "new"
    assert out["plain"].reason == "from the catalog" and out["plain"].score == 0.0
    # an interest vector of zeros (e.g. a like and a dislike of one item) is cold too
    zero = {r.item_id: r.reason for r in run(cands, {"text": np.zeros(3, np.float32)})}
    assert zero == {i: r.reason for i, r in out.items()}


def test_similarity_reason_names_the_anchor_most_like_the_candidate() -> None:
    pasta = item("pasta", unit(1, 0.1, 0), title="Fresh pasta")
    rome = item("rome", unit(0, 1, 0.1), title="A weekend in Rome")
    untitled = item("x-42", unit(0, 0, 1))
    interest = {"text": np.array([2.0, 1.0, 0.5], dtype=np.float32)}  # mostly cooking
    cands = [
        item("risotto", unit(1, 0, 0)),
        item("venice", unit(0, 1, 0)),
        item("opera", unit(0.1, 0, 1)),
    ]
    out = {r.item_id: r.reason for r in run(cands, interest, anchors=[pasta, rome, untitled])}
    assert out["risotto"] == "because you liked \u201cFresh pasta\u201d"
    assert out["venice"] == "because you liked \u201cA weekend in Rome\u201d"
    assert out["opera"] == "because you liked \u201cx-42\u201d"  # no title: the id
    no_anchor = run(cands, interest)
    assert {r.reason for r in no_anchor} == {"matches your interests"}


def test_deterministic_tie_break_by_item_id() -> None:
    v = unit(1, 1, 0)
    cands = [item(i, v) for i in ["d", "b", "a", "e", "c"]]
    expected = ["a", "b", "c", "d", "e"]
    for seed in range(5):
        shuffled = cands[:]
        random.Random(seed).shuffle(shuffled)
        assert ids(run(shuffled, {"text": unit(1, 0, 0)})) == expected
        assert ids(run(shuffled, {})) == expected


def test_to_wire() -> None:
    r = RankedItem("a", 0.123456789, "trending now")
    assert r.to_wire() == {"item_id": "a", "score": 0.123457, "reason": "trending now"}
