"""The item side (ranking/item_side.py): co-occurrence pairs of the user side, the bounded item
row, the log-space trend, the row's wire form and the one-process item side, with known
answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recstream.ranking.item_side import (
    NO_TREND,
    CoocParams,
    ItemRow,
    ItemSide,
    Update,
    cooc_pairs,
    trend_after,
    updates_for_event,
)
from recstream.ranking.user_state import item_hash

P = CoocParams(window=3, decay=0.5, backward=0.25, max_row=8, top_n=3)
HL = 1_000.0  # trend half-life in these tests, ms
HOT = 100.0  # hot trend half-life
a, b, c, d, x = (item_hash(n) for n in "abcdx")


def row_dict(row: ItemRow) -> dict[int, float]:
    return dict(zip(row.nb.tolist(), row.w.tolist(), strict=True))


# -- pairs of the user side -------------------------------------------------------------------


def test_pairs_forward_and_backward_with_distance_decay() -> None:
    got = cooc_pairs([a, b, c], [1.0, 1.0, 1.0], x, 1.0, P)  # recent: newest last
    assert got == [
        (c, x, 1.0),
        (x, c, 0.25),
        (b, x, 0.5),
        (x, b, 0.125),
        (a, x, 0.25),
        (x, a, 0.0625),
    ]
    no_back = CoocParams(window=3, decay=0.5, backward=0.0)
    assert cooc_pairs([a, b], [1.0, 1.0], x, 2.0, no_back) == [(b, x, 1.0), (a, x, 0.5)]


def test_pairs_skip_negatives_self_and_respect_the_window() -> None:
    skipped = item_hash("skipped")
    recent = [a, b, skipped, x, c, d]
    recent_w = [1.0, 1.0, -0.5, 2.0, 1.0, 1.0]
    rows = [r for r, nb, _ in cooc_pairs(recent, recent_w, x, 1.0, P) if nb == x]
    assert rows == [d, c, b]  # x itself and the skipped item make no pair; window 3
    ws = [w for r, nb, w in cooc_pairs(recent, recent_w, x, 1.0, P) if nb == x]
    assert ws == [1.0, 0.5, 0.25]  # the distance counts the items paired only
    assert cooc_pairs(recent, recent_w, x, -2.0, P) == []  # a dislike pairs with nothing
    assert cooc_pairs(recent, recent_w, x, 0.0, P) == []
    assert cooc_pairs([], [], x, 1.0, P) == []


def test_updates_for_event_group_the_pairs_by_row() -> None:
    ups = updates_for_event(np.asarray([a, b], np.uint64), [1.0, 1.0], x, 2.0, 77, P)
    assert ups == [
        Update(x, 2.0, 77, ((b, 0.25), (a, 0.125))),  # the event's item first, with its w
        Update(b, 0.0, 77, ((x, 1.0),)),  # then each recent item, in pair order
        Update(a, 0.0, 77, ((x, 0.5),)),
    ]
    # plain ints, also from a state's uint64 array: they are written as JSON (item-activity)
    assert all(type(u.item) is int and {type(nb) for nb, _ in u.pairs} <= {int} for u in ups)
    assert updates_for_event([a], [1.0], x, -0.5, 77, P) == []  # negatives: nothing
    assert updates_for_event([], [], x, 1.0, 5, P) == [Update(x, 1.0, 5, ())]  # no history
    # weights rounded to 6 decimals: the same on every worker
    dec = CoocParams(window=4, decay=0.9, backward=0.0)
    got = updates_for_event([a, b, c, d], [1.0] * 4, x, 1.0, 0, dec)
    assert [u.pairs for u in got[1:]] == [((x, 1.0),), ((x, 0.9),), ((x, 0.81),), ((x, 0.729),)]


def test_updates_for_event_is_cooc_pairs_grouped_by_row() -> None:
    """Random histories (repeats, non-positive weights, long and short windows): the event's
    item first with its weight and the pairs that go to it, then each other row in the order
    cooc_pairs first names it, every weight rounded to 6 places."""
    rng = np.random.default_rng(3)
    items = [item_hash(f"i{n}") for n in range(12)]
    for _ in range(300):
        params = CoocParams(
            window=int(rng.integers(0, 9)), decay=float(rng.random()),
            backward=float(rng.choice([0.0, 0.5, 0.3])),
        )  # fmt: skip
        k = int(rng.integers(0, 15))
        recent = np.asarray(rng.choice(items, k), np.uint64)
        recent_w = rng.choice([1.0, 0.5, 0.0, -1.0], k).astype(np.float32)
        item = items[int(rng.integers(0, len(items)))]
        rows: dict[int, list[tuple[int, float]]] = {item: []}
        for r, nb, pw in cooc_pairs(recent, recent_w, item, 2.0, params):
            rows.setdefault(r, []).append((nb, round(pw, 6)))
        want = [Update(r, 2.0 if r == item else 0.0, 9, tuple(p)) for r, p in rows.items()]
        assert updates_for_event(recent, recent_w, item, 2.0, 9, params) == want


# -- the item row -----------------------------------------------------------------------------


def test_row_sums_weights_and_keeps_neighbours_sorted() -> None:
    row = ItemRow()
    row.apply(Update(x, 0.0, 0, ((a, 1.0), (b, 2.0), (a, 0.5))), P, HL, HOT)
    assert row_dict(row) == {a: 1.5, b: 2.0}
    row.apply(Update(x, 0.0, 0, ((c, 1.0), (b, 0.25))), P, HL, HOT)
    assert row_dict(row) == {a: 1.5, b: 2.25, c: 1.0}
    assert row.nb.dtype == np.uint64 and row.w.dtype == np.float32
    assert row.nb.tolist() == sorted(row.nb.tolist())
    assert row.count == 0.0 and row.trend == NO_TREND  # pairs alone are no interaction


def test_row_past_its_bound_keeps_the_strongest_three_quarters() -> None:
    ids = [item_hash(f"i{n}") for n in range(9)]
    big = ItemRow()
    big.apply(Update(x, 0.0, 0, tuple((h, float(n)) for n, h in enumerate(ids))), P, HL, HOT)
    assert len(big.nb) == 6  # past max_row 8: 3/4 of it kept
    assert set(big.nb.tolist()) == set(ids[3:])
    assert big.nb.tolist() == sorted(big.nb.tolist())
    tie = ItemRow()
    tie.apply(Update(x, 0.0, 0, tuple((h, 1.0) for h in ids)), P, HL, HOT)
    assert tie.nb.tolist() == sorted(ids)[:6]  # equal weights: the smallest hashes
    at_bound = ItemRow()
    at_bound.apply(Update(x, 0.0, 0, tuple((h, 1.0) for h in ids[:8])), P, HL, HOT)
    assert len(at_bound.nb) == 8  # at the bound: nothing dropped
    # replays agree: the same updates in the same order give the same bytes
    rng = np.random.default_rng(3)
    rows = [ItemRow(), ItemRow()]
    for _ in range(30):
        u = Update(x, 1.0, 0, tuple((ids[int(i)], 0.5) for i in rng.integers(0, 9, 3)))
        for r in rows:
            r.apply(u, P, HL, HOT)
    assert rows[0].to_bytes() == rows[1].to_bytes()


def test_trend_orders_by_current_decayed_popularity() -> None:
    k = math.log(2) / HL
    assert trend_after(NO_TREND, 1.0, 0, HL) == 0.0
    assert trend_after(NO_TREND, 4.0, 2_000, HL) == pytest.approx(math.log(4) + 2_000 * k)
    rng = np.random.default_rng(0)
    trends, pops, now = [], [], 10_000
    for _ in range(20):
        t = NO_TREND
        pop = 0.0
        for _ in range(int(rng.integers(1, 6))):
            w, ts = float(rng.choice([0.5, 1.0, 2.0])), int(rng.integers(0, now))
            t = trend_after(t, w, ts, HL)
            pop += w * 0.5 ** ((now - ts) / HL)
        trends.append(t)
        pops.append(pop)
        assert math.exp(t - now * k) == pytest.approx(pop, rel=1e-9)  # ln(pop) + now * k
    assert np.argsort(trends).tolist() == np.argsort(pops).tolist()
    # old weight 4 two half-lives ago (now 1) beats weight 1 half a half-life ago (0.71)
    old = trend_after(NO_TREND, 4.0, 0, HL)
    new = trend_after(NO_TREND, 1.0, int(1.5 * HL), HL)
    assert old > new


def test_count_and_trend_follow_positive_interactions_only() -> None:
    row = ItemRow()
    row.apply(Update(x, 2.0, 1_000, ()), P, HL, HOT)
    row.apply(Update(x, 0.0, 2_000, ((a, 1.0),)), P, HL, HOT)  # a pair only: no interaction
    row.apply(Update(x, 1.0, 2_000, ()), P, HL, HOT)
    assert row.count == 2.0
    assert row.trend == pytest.approx(
        trend_after(trend_after(NO_TREND, 2.0, 1_000, HL), 1.0, 2_000, HL)
    )
    # the hot trend: the same interactions at its own, shorter half-life
    assert row.hot == pytest.approx(
        trend_after(trend_after(NO_TREND, 2.0, 1_000, HOT), 1.0, 2_000, HOT)
    )
    # 2 halved ten times, + 1: the hot one has nearly forgotten the first interaction
    assert math.exp(row.hot - 2_000 * math.log(2) / HOT) == pytest.approx(1 + 2 / 1024)


def test_row_bytes_round_trip() -> None:
    row = ItemRow()
    pairs = ((a, 0.1), (b, 2.5), (2**64 - 1, 3.0))
    row.apply(Update(x, 2.0, 1_700_000_000_000, pairs), P, HL, HOT)
    raw = row.to_bytes()
    assert raw[0] == 2 and len(raw) == 29 + 12 * 3
    back = ItemRow.from_bytes(raw)
    assert (back.trend, back.count, back.hot) == (row.trend, row.count, row.hot)
    assert back.nb.tolist() == row.nb.tolist() and back.w.tolist() == row.w.tolist()
    assert back.nb.dtype == np.uint64 and back.w.dtype == np.float32
    empty = ItemRow.from_bytes(ItemRow().to_bytes())
    assert (empty.trend, empty.count, len(empty.nb)) == (NO_TREND, 0.0, 0)
    # a row written by version 1 (no hot trend) loads, with no hot trend yet
    v1 = b"\x01" + raw[1:21] + raw[29:]
    old = ItemRow.from_bytes(v1)
    assert (old.trend, old.count, old.hot) == (row.trend, row.count, NO_TREND)
    assert old.nb.tolist() == row.nb.tolist() and old.w.tolist() == row.w.tolist()
    with pytest.raises(ValueError, match="unsupported item row version 9"):
        ItemRow.from_bytes(b"\x09" + raw[1:])
    with pytest.raises(ValueError, match="unsupported item row version"):
        ItemRow.from_bytes(b"")


# -- the item side in one process -------------------------------------------------------------


def test_apply_returns_the_changed_items_once_in_first_change_order() -> None:
    side = ItemSide(P, HL, HOT)
    changed = side.apply(
        [Update(b, 1.0, 0, ()), Update(a, 0.0, 0, ((b, 1.0),)), Update(b, 0.0, 0, ((a, 1.0),))]
    )
    assert list(changed) == [b, a]
    # with the neighbours whose weights changed in each row (none in b's first update)
    assert changed[b].tolist() == [a] and changed[a].tolist() == [b]
    assert side.rows[b].count == 1.0 and row_dict(side.rows[b]) == {a: 1.0}
    assert side.apply([]) == {}
    again = side.apply(updates_for_event([a, c], [1.0, 1.0], d, 1.0, 5, P))
    assert list(again) == [d, c, a]
    assert again[d].tolist() == sorted([a, c]) and again[c].tolist() == [d]


def test_side_equals_the_dense_sum_of_the_same_pairs() -> None:
    """The rows the item side keeps equal a dense matrix of every pair added, while no row
    reaches its bound; the counts are the positive events per item."""
    rng = np.random.default_rng(1)
    items = [item_hash(f"i{n}") for n in range(12)]
    params = CoocParams(window=4, decay=0.8, backward=0.5, max_row=100)
    side = ItemSide(params, HL, HOT)
    dense, counts = np.zeros((12, 12)), np.zeros(12)
    recent: dict[int, tuple[list[int], list[float]]] = {}
    for t in range(300):
        u, n = int(rng.integers(0, 5)), int(rng.integers(0, 12))
        w = float(rng.choice([1.0, 2.0, -0.5]))
        rec, rec_w = recent.get(u, ([], []))
        for r, nb, pw in cooc_pairs(rec, rec_w, items[n], w, params):
            dense[items.index(r), items.index(nb)] += round(pw, 6)
        counts[n] += w > 0
        side.apply(updates_for_event(rec, rec_w, items[n], w, t, params))
        keep = [i for i, h in enumerate(rec) if h != items[n]]
        recent[u] = (
            ([rec[i] for i in keep] + [items[n]])[-8:],
            ([rec_w[i] for i in keep] + [w])[-8:],
        )
    for n, h in enumerate(items):
        row = side.rows.get(h, ItemRow())
        got = row_dict(row)
        for m, nb in enumerate(items):
            assert got.get(nb, 0.0) == pytest.approx(dense[n, m], rel=1e-5)
        assert row.count == counts[n]
