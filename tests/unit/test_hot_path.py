"""The stream's per-event path computes what the plain definitions do (ranking/features.py,
candidates.py, seen.py, memo.py): the faster forms (survivor-only Bloom gathers, the seeds'
rows resolved once per candidate set through int codes, one bincount for the co-occurrence
candidates, one normalisation for all seeds' vectors) are checked against straightforward
reference code on random data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recstream.ranking import seen
from recstream.ranking.candidates import CandidateSet
from recstream.ranking.collab import collab_candidates, pack_row, unpack_row
from recstream.ranking.features import (
    ScoreParams,
    Seed,
    feature_matrix,
    interest_units,
    recency_weights,
    score_candidates,
    short_interest,
)
from recstream.ranking.memo import ITEM_CODES, Interner
from recstream.ranking.state import UserState
from recstream.ranking.store import StoredItem

HOUR = 3_600_000
NOW = 1_700_000_000_000
SP = ScoreParams(
    prior=(0.5, 0.5, 1.0, 0.3, 0.1, 1.0),
    modality_weights={"text": 1.0},
    trending_half_life_ms=24 * HOUR,
    freshness_half_life_ms=48 * HOUR,
)


def test_contains_cols_finds_the_entries_contains_many_finds() -> None:
    rng = np.random.default_rng(0)
    bits = seen.empty(6144)
    for n in range(300):
        bits = seen.add(bits, f"taken-{n}")
    ids = [f"taken-{n}" for n in range(0, 600, 3)] + [f"other-{n}" for n in range(3000)]
    ids = [ids[i] for i in rng.permutation(len(ids))]
    pos = seen.positions_matrix(ids, 6144)
    want = np.flatnonzero(seen.contains_many(bits, pos))
    got = seen.contains_cols(seen.flags(bits), np.ascontiguousarray(pos.T.astype(np.uint16)))
    assert got.tolist() == want.tolist()
    assert len(want) >= 100  # the 100 taken ones at least (and a few false positives)


def test_interner_codes_are_stable_until_a_reset() -> None:
    codes = Interner(limit=6)
    ids = ["a", "b", "c"]
    first = codes.codes(ids, 2)
    assert first.tolist() == [0, 1]
    assert codes.codes(ids).tolist() == [0, 1, 2]  # a longer prefix: extended
    assert codes.codes(ids, 2) is not None and codes.codes(["c", "a"]).tolist() == [2, 0]
    assert codes.names == ["a", "b", "c"] and codes.generation == 0
    codes.reserve(3)  # 3 + 3 <= 6: nothing forgotten
    assert codes.generation == 0
    codes.reserve(4)
    assert codes.generation == 1 and codes.names == [] and codes.code == {}
    assert codes.codes(["c"]).tolist() == [0]
    assert codes.codes(ids).tolist() == [1, 2, 0]  # the memo went with the reset


def _items(n: int, rng: np.random.Generator) -> list[StoredItem]:
    return [
        StoredItem(
            f"i{k}",
            f"Title {k}",
            ("tag",),
            None,
            float(rng.normal()),
            vectors={"text": rng.normal(size=8).astype(np.float32)},
        )
        for k in range(n)
    ]


def _seeds(rng: np.random.Generator, n_items: int, n_seeds: int) -> dict[str, Seed]:
    out = {}
    for s in range(n_seeds):
        nb = rng.choice(n_items + 20, size=30, replace=False)  # some ids are not candidates
        top = sorted(
            ((f"i{k}", float(rng.integers(1, 50)) / 4) for k in nb),
            key=lambda t: (-t[1], t[0]),
        )
        out[f"s{s}"] = Seed(
            f"s{s}",
            vectors={"text": rng.normal(size=8).astype(np.float32)},
            cf_top=top,
            cf_count=float(rng.integers(0, 40)),
        )
    return out


def test_seed_rows_resolved_once_per_set_score_as_explicit_neighbours() -> None:
    """score_candidates resolves the seeds' rows to candidate rows through the set's seed
    table; the features equal feature_matrix's with the neighbours resolved one by one, for a
    second scoring with other seeds on the same set too, and after the id codes were reset
    between the two."""
    rng = np.random.default_rng(3)
    items = _items(60, rng)
    cs = CandidateSet.from_items(items, {"text": 8})
    seeds = _seeds(rng, 60, 12)
    recent = [(s, 1.0) for s in seeds]
    for round_ in range(3):
        st = UserState(recent=recent[round_ : round_ + 9])
        got = score_candidates(cs, st, SP, seeds, NOW)
        rec = recency_weights(st.recent, SP)
        nbs = {i: cs.neighbour_arrays(seeds[i].cf_top) for i, _ in rec}
        short = {
            "text": sum(np.float32(a) * interest_units(seeds[i].vectors)["text"] for i, a in rec)
        }
        want = feature_matrix(
            cs, interest={}, short_interest=short, seeds=rec, neighbours=nbs,
            seed_counts={i: seeds[i].cf_count for i, _ in rec}, now_ms=NOW, params=SP,
        )  # fmt: skip
        np.testing.assert_allclose(got.features, want, rtol=1e-5, atol=1e-6)
        assert got.features[:, 2].max() == pytest.approx(1.0)  # cf: something was summed
        if round_ == 1:
            ITEM_CODES.reserve(ITEM_CODES.limit + 1)  # forget every code: the set re-resolves


def test_short_interest_is_the_recency_weighted_sum_of_unit_vectors() -> None:
    rng = np.random.default_rng(5)
    anchors = [
        Seed(f"a{n}", vectors={"text": rng.normal(size=6), "image": rng.normal(size=3)})
        for n in range(5)
    ] + [Seed("none", vectors={"text": np.zeros(6)}), Seed("img", vectors={})]
    a = [1.0, 0.8, 0.64, 0.5, 0.4, 0.3, 0.2]
    got = short_interest(anchors, a)
    for m in ("text", "image"):
        want = sum(x * interest_units(s.vectors)[m] for s, x in zip(anchors[:5], a, strict=False))
        np.testing.assert_allclose(got[m], want, rtol=1e-5, atol=1e-6)
    assert "text" not in anchors[5].units  # a zero vector has no direction


def test_collab_candidates_equal_the_dict_of_running_totals() -> None:
    rng = np.random.default_rng(7)
    for trial in range(20):
        seeds = _seeds(rng, 40, 10)
        recent = [(s, float(rng.choice([1.0, -0.5, 2.0]))) for s in seeds]
        exclude = {f"i{k}" for k in rng.choice(40, size=5, replace=False)} | {"s1"}
        limit = int(rng.integers(3, 25))
        total: dict[str, float] = {}
        for item_id, a in recency_weights(recent, SP):
            seed = seeds[item_id]
            scale = a / max(seed.cf_count, 1.0) ** SP.cf_alpha
            for nb, w in seed.cf_top[:limit]:
                total[nb] = total.get(nb, 0.0) + w * scale
        for i in exclude:
            total.pop(i, None)
        want = sorted(total, key=lambda i: (-total[i], i))[:limit]
        assert collab_candidates(recent, seeds, exclude, limit, SP) == want, trial


def test_packed_rows_give_the_history_sums_of_the_plain_rows() -> None:
    rng = np.random.default_rng(9)
    items = _items(30, rng)
    tops = {
        f"i{k}": [(f"i{j}", float(rng.integers(1, 9))) for j in rng.choice(30, 12, replace=False)]
        for k in range(0, 30, 2)
    }
    rows = {i: unpack_row(pack_row(t, 6144)) for i, t in tops.items()}
    cs = CandidateSet.from_items(items, {"text": 8}, cf_rows=rows)  # type: ignore[arg-type]
    bits = seen.empty(6144)
    taken = {f"i{j}" for j in range(0, 30, 3)}
    for i in taken:
        bits = seen.add(bits, i)
    want = np.zeros(30)
    for i, t in tops.items():
        want[cs.index[i]] = sum(w for nb, w in t if seen.contains(bits, nb))
    np.testing.assert_allclose(cs.history_sums(bits), want)
    assert want.max() > 0


def test_a_modality_no_candidate_has_is_left_out_and_scores_alike() -> None:
    """from_items leaves out a modality none of the candidates has (no [n, d] block of zeros
    per request); scores with the user's image interest are then what a set with an all-zero
    image block (present nowhere) gives: a modality the set lacks adds nothing."""
    rng = np.random.default_rng(9)
    items = [
        StoredItem(f"i{n}", f"t{n}", (), None, 0.0, {"text": rng.normal(size=8)}) for n in range(30)
    ]
    dims = {"text": 8, "image": 5, "audio": 3}
    cs = CandidateSet.from_items(items, dims)
    assert set(cs.vectors) == {"text"} and set(cs.present) == {"text"}
    np.testing.assert_allclose(np.linalg.norm(cs.vectors["text"], axis=1), 1.0, rtol=1e-6)
    zeros = CandidateSet(
        ids=cs.ids,
        vectors={**cs.vectors, "image": np.zeros((30, 5), np.float32)},
        present={**cs.present, "image": np.zeros(30, bool)},
        trend=cs.trend, published_at=cs.published_at, cf_count=cs.cf_count,
    )  # fmt: skip
    st = UserState(interest={"text": rng.normal(size=8), "image": rng.normal(size=5)})
    sp = dataclasses.replace(SP, modality_weights={"text": 1.0, "image": 2.0})
    got = score_candidates(cs, st, sp, {}, NOW)
    want = score_candidates(zeros, st, sp, {}, NOW)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
    # one item with an image: the block is there, present on that row only
    items[4] = StoredItem(
        "i4", "t4", (), None, 0.0, {"text": rng.normal(size=8), "image": np.ones(5)}
    )
    cs2 = CandidateSet.from_items(items, dims)
    assert set(cs2.vectors) == {"text", "image"}
    assert cs2.present["image"].tolist() == [n == 4 for n in range(30)]
    np.testing.assert_allclose(cs2.vectors["image"][4], np.full(5, 1 / np.sqrt(5)), rtol=1e-6)
