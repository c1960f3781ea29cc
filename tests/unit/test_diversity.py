"""Diversity as a setting (ranking.diversity.diversify: maximal marginal relevance), in the stream's
ranking (rank_candidates) and in the harness (its lists, their ranks, ILD@k)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recstream.ranking.candidates import CandidateSet
from recstream.ranking.diversity import diversify, item_sims, ranked_rows
from recstream.ranking.evaluate.metrics import Accumulator, list_ranks
from recstream.ranking.features import ScoreParams
from recstream.ranking.rank import rank_candidates
from recstream.ranking.state import UserState
from recstream.ranking.store import NO_TREND, StoredItem

HOUR = 3_600_000
NOW = 1_700_000_000_000
SP = ScoreParams(
    prior=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # content only: the score is the cosine
    modality_weights={"text": 1.0},
    trending_half_life_ms=24 * HOUR,
    freshness_half_life_ms=48 * HOUR,
)


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def _set(vecs: dict[str, np.ndarray]) -> CandidateSet:
    items = [StoredItem(i, i, (), None, NO_TREND, vectors={"text": v}) for i, v in vecs.items()]
    return CandidateSet.from_items(items, {"text": 3})


# Three near-copies of one item, closest to the user's interest; another item less close,
# and one unrelated to it.
COPIES = {
    "a1": unit(1.0, 0.0, 0.0),
    "a2": unit(1.0, 0.01, 0.0),
    "a3": unit(1.0, 0.0, 0.01),
    "b": unit(0.6, 0.0, 0.8),
    "c": unit(0.0, 1.0, 0.0),
}
INTEREST = {"text": unit(1.0, 0.0, 0.1)}


def test_near_copies_give_way_to_another_item_when_lists_are_diversified() -> None:
    cs = _set(COPIES)
    st = UserState(interest=INTEREST)
    plain, _ = rank_candidates(cs, st, SP, {}, NOW, 2)
    assert [r.item_id for r in plain][0] == "a3" and plain[1].item_id in ("a1", "a2")
    diverse, _ = rank_candidates(cs, st, dataclasses.replace(SP, diversity=0.5), {}, NOW, 2)
    assert [r.item_id for r in diverse] == ["a3", "b"]  # the best first, then the other one
    assert diverse[1].score < plain[1].score  # b scores lower: picked for being different


def test_no_diversity_is_the_score_order() -> None:
    cs = _set(COPIES)
    s = np.array([0.5, 0.9, 0.9, 0.1, 0.0])
    assert ranked_rows(cs, s, 3, SP) == [1, 2, 0]  # ties by item id
    assert diversify(cs, [1, 2, 0], s, 3, SP) == [1, 2, 0]


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
    for trial in range(20):
        n = int(rng.integers(2, 30))
        cs = _set({f"i{j}": rng.normal(size=3).astype(np.float32) for j in range(n)})
        rows = list(rng.permutation(n))
        s = np.sort(rng.random(n))[::-1].copy()  # rows are passed best first
        scores = np.empty(n)
        scores[rows] = s
        got = diversify(cs, rows, scores, 10, dataclasses.replace(SP, diversity=lam))
        sim = item_sims(cs, np.asarray(rows), SP.modality_weights)
        rel = (s - s.min()) / (s.max() - s.min())
        want = [rows[p] for p in _reference_mmr(sim, rel, lam, 10)]
        assert got == want, trial


def test_item_sims_are_the_cosines_over_shared_modalities() -> None:
    items = [
        StoredItem("x", None, (), None, NO_TREND, vectors={"text": unit(1, 0, 0)}),
        StoredItem("y", None, (), None, NO_TREND, vectors={"text": unit(1, 1, 0)}),
        StoredItem("z", None, (), None, NO_TREND, vectors={}),
    ]
    cs = CandidateSet.from_items(items, {"text": 3})
    sim = item_sims(cs, np.arange(3), {"text": 1.0})
    np.testing.assert_allclose(sim[0, 1], np.sqrt(0.5), rtol=1e-6)
    assert sim[0, 2] == 0.0 and sim[2, 2] == 0.0  # nothing shared: 0


def test_list_ranks_count_only_what_the_list_shows() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    cand = np.ones(5, dtype=bool)
    # the model lists items 0, 3 (diversified past 1 and 2)
    assert list_ranks([0, 3], scores, cand, [3, 1, 4]) == [1, 2, 4]


def test_ild_is_the_mean_pairwise_distance_of_a_list() -> None:
    v = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(1, 1, 0)])
    acc = Accumulator(3, 3, v)
    acc.add([0], [], [0, 1, 2])
    # 1 - mean cosine of the pairs: (0 + 0.7071 + 0.7071) / 3
    assert acc.result()["ILD@3"] == pytest.approx(1 - 2 * np.sqrt(0.5) / 3, rel=1e-6)
    assert "ILD@3" not in Accumulator(3, 3).result()


def test_the_harness_measures_diversified_lists() -> None:
    """recstream evaluate with diversity on: the harness ranks the targets by the lists the
    stream would show (diversity.ranked_rows over the catalog), and those lists are further
    apart (ILD@10) than the score order's."""
    from recstream.ranking.evaluate.data import build
    from recstream.ranking.evaluate.models import RecstreamModel, ranking_settings
    from recstream.ranking.evaluate.protocols import prequential

    rng = np.random.default_rng(5)
    n_items, rows = 60, []
    for u in range(40):
        for j, i in enumerate(rng.choice(n_items, 12, replace=False)):
            rows.append((f"u{u}", f"i{i}", float(1_700_000_000 + 60 * j + u), "like", np.nan))
    data = build(rows)
    # clusters of near-copies: 6 directions, 10 items around each
    centres = rng.normal(size=(6, 8))
    vec = np.stack([centres[k % 6] + 0.05 * rng.normal(size=8) for k in range(data.n_items)])
    vec = (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float32)
    out = {}
    for lam in (0.0, 0.7):
        settings = ranking_settings([f"diversity={lam}"])
        model = RecstreamModel(data, settings, vec)
        out[lam] = prequential(data, [model], k=10, progress=False, item_vectors=vec)["recstream"]
    assert out[0.7]["ILD@10"] > out[0.0]["ILD@10"] + 0.05
    assert 0 < out[0.7]["HR@10"] <= 1 and out[0.7]["n"] == out[0.0]["n"]
