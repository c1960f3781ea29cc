"""Item-to-item co-occurrence (ranking/collab.py): pair weights, the bounded item row, and the
one-process item side, with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.collab import CoocParams, CoocTable, cooc_pairs, count_after, row_after, top_neighbours

P = CoocParams(window=3, decay=0.5, backward=0.25, max_row=8, top_n=3)


def test_pairs_forward_and_backward_with_distance_decay() -> None:
    recent = [("a", 1.0), ("b", 1.0), ("c", 1.0)]  # newest last
    got = cooc_pairs(recent, "x", 1.0, P)
    assert got == [
        ("c", "x", 1.0),
        ("x", "c", 0.25),
        ("b", "x", 0.5),
        ("x", "b", 0.125),
        ("a", "x", 0.25),
        ("x", "a", 0.0625),
    ]


def test_pairs_skip_negatives_self_and_respect_the_window() -> None:
    recent = [("a", 1.0), ("b", 1.0), ("skipped", -0.5), ("x", 2.0), ("c", 1.0), ("d", 1.0)]
    rows = [r for r, nb, _ in cooc_pairs(recent, "x", 1.0, P) if nb == "x"]
    assert rows == ["d", "c", "b"]  # "x" itself and the skipped item make no pair; window 3
    assert cooc_pairs(recent, "x", -2.0, P) == []  # a dislike pairs with nothing
    assert cooc_pairs(recent, "x", 0.0, P) == []
    assert cooc_pairs([], "x", 1.0, P) == []


def test_row_after_adds_and_bounds_deterministically() -> None:
    row = row_after({}, [("a", 1.0), ("b", 2.0), ("a", 0.5)], max_row=8)
    assert row == {"a": 1.5, "b": 2.0}
    big = row_after({}, [(f"i{n}", float(n)) for n in range(9)], max_row=8)
    assert len(big) == 6  # past the bound: the weakest quarter dropped, 3/4 of max kept
    assert set(big) == {f"i{n}" for n in range(3, 9)}
    tie = row_after({}, [(f"t{n}", 1.0) for n in range(9)], max_row=8)
    assert set(tie) == {f"t{n}" for n in range(6)}  # equal weights: by id
    assert top_neighbours(row, 1) == [("b", 2.0)]
    assert top_neighbours({"x": 1.0, "a": 1.0, "m": 3.0}, 5) == [("m", 3.0), ("a", 1.0), ("x", 1.0)]


def test_count_after_counts_positive_events() -> None:
    assert count_after(0.0, 1.0) == 1.0
    assert count_after(3.0, 0.4) == 4.0
    assert count_after(3.0, -0.5) == 3.0


def test_table_equals_dense_sum_of_the_same_pairs() -> None:
    """The item side in dicts (what the stream keeps per item) and the dense matrix the
    harness keeps agree while no row reaches its bound."""
    rng = np.random.default_rng(1)
    items = [f"i{n}" for n in range(12)]
    params = CoocParams(window=4, decay=0.8, backward=0.5, max_row=100, top_n=12)
    table = CoocTable.empty(params)
    dense = np.zeros((12, 12))
    recent: dict[int, list[tuple[str, float]]] = {}
    for _ in range(300):
        u = int(rng.integers(0, 5))
        it = items[int(rng.integers(0, 12))]
        w = float(rng.choice([1.0, 2.0, -0.5]))
        pairs = cooc_pairs(recent.get(u, []), it, w, params)
        table.apply(it, w, pairs)
        for r, nb, pw in pairs:
            dense[items.index(r), items.index(nb)] += pw
        rec = [p for p in recent.get(u, []) if p[0] != it]
        recent[u] = [*rec, (it, w)][-8:]
    for n, it in enumerate(items):
        row = table.rows.get(it, {})
        for m, nb in enumerate(items):
            assert row.get(nb, 0.0) == pytest.approx(dense[n, m])
        assert [w for _, w in table.neighbours(it)] == sorted(row.values(), reverse=True)
