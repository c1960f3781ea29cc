"""Item-to-item co-occurrence (ranking/collab.py): pair weights, the bounded item row, and the
one-process item side, with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from recstream.ranking.collab import (
    CoocParams,
    CoocTable,
    cooc_pairs,
    cooc_records,
    count_after,
    history_weight,
    history_weights,
    known_counts_after,
    pack_row,
    row_after,
    top_neighbours,
    unpack_row,
)

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


# -- neighbour counts carried by the pairs, and the "history" weights published from them ----


def test_records_group_pairs_by_row_and_carry_the_fetched_counts() -> None:
    recent = [("a", 1.0), ("b", 1.0)]  # newest last
    rows = cooc_records(recent, "x", 1.0, P, counts={"x": 7.0, "b": 3.0})
    assert rows == {
        "x": [("b", 0.25, 3.0), ("a", 0.125, None)],  # a was not fetched: no count
        "b": [("x", 1.0, 7.0)],
        "a": [("x", 0.5, 7.0)],
    }
    assert cooc_records(recent, "x", -1.0, P, counts={"x": 7.0}) == {"x": []}
    assert cooc_records([], "x", 1.0, P) == {"x": []}  # the event's own record, no pairs


def test_known_counts_keep_the_latest_count_and_follow_the_row_bound() -> None:
    row = {"a": 1.0, "b": 2.0}
    known = known_counts_after({}, [("a", 4.0), ("b", None)], row)
    assert known == {"a": 4.0}  # b's count was not carried
    known = known_counts_after(known, [("a", None), ("b", 9.0)], row)
    assert known == {"a": 4.0, "b": 9.0}  # a pair without a count keeps the known one
    known = known_counts_after(known, [("a", 6.0)], {"a": 1.5})  # b left the bounded row
    assert known == {"a": 6.0}


def test_history_weights_divide_each_entry_by_its_neighbours_count() -> None:
    top = [("pop", 8.0), ("rare", 2.0), ("unknown", 1.0)]
    known = {"pop": 256.0, "rare": 0.0}
    assert history_weights(top, known, 0.5) == [0.5, 2.0, 1.0]  # 8/16; count 0 -> 1; none -> 1
    assert history_weights(top, known, 0.0) == [8.0, 2.0, 1.0]  # alpha 0: the row itself
    assert history_weight(8.0, 256.0, 0.25) == pytest.approx(2.0)
    packed = unpack_row(pack_row(top, 6144, history_weights(top, known, 0.5)))
    assert packed is not None and packed[1].tolist() == [0.5, 2.0, 1.0]
    assert unpack_row(pack_row(top, 6144))[1].tolist() == [8.0, 2.0, 1.0]  # type: ignore[index]


def test_a_neighbour_everybody_takes_weighs_less_in_the_history_row() -> None:
    """x follows "pop" (taken by 16 users) once and "rare" (taken by one) once: raw, the two
    entries of x's row are equal; normalised by the neighbours' counts (carried by the pairs,
    as the user side fetched them), rare's entry is 16 ** 0.5 = 4 times pop's."""
    params = CoocParams(window=1, decay=1.0, backward=1.0, max_row=8, top_n=8, history_alpha=0.5)
    t = CoocTable.empty(params)
    for _ in range(15):  # 15 users take pop alone
        t.record([], "pop", 1.0)
    t.record([], "pop", 1.0)  # user A: pop, then x
    t.record([("pop", 1.0)], "x", 1.0)
    t.record([], "rare", 1.0)  # user B: rare, then x
    t.record([("rare", 1.0)], "x", 1.0)
    assert t.counts == {"pop": 16.0, "x": 2.0, "rare": 1.0}
    assert dict(t.neighbours("x")) == {"pop": 1.0, "rare": 1.0}
    assert t.known["x"] == {"pop": 16.0, "rare": 1.0}
    assert dict(t.history_row("x")) == {"pop": 0.25, "rare": 1.0}
    # pop's row heard x's count before x's first event (0): not normalised (count 1)
    assert t.known["pop"] == {"x": 0.0} and t.history_row("pop") == [("x", 1.0)]
