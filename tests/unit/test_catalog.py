"""The catalog (ranking/catalog.py): rows that never move, compact unit vectors per modality,
lookups by hash, the published item side (slots and the dense "history" matrix), and the
trending and fresh lists, with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from recstream.ranking.catalog import Catalog, CatalogParams
from recstream.ranking.item_side import NO_TREND, CoocParams, ItemRow
from recstream.ranking.user_state import item_hash

DIMS = {"text": 4, "image": 3}


def v(*xs: float) -> np.ndarray:
    return np.asarray(xs, np.float32)


def side(
    entries: dict[str, float] | None = None,
    *,
    trend: float = NO_TREND,
    count: float = 0.0,
    hot: float = NO_TREND,
) -> ItemRow:
    """An item-side row with these neighbours (by id) and weights, sorted by hash."""
    pairs = sorted((item_hash(i), w) for i, w in (entries or {}).items())
    return ItemRow(
        trend,
        count,
        np.asarray([p for p, _ in pairs], np.uint64),
        np.asarray([w for _, w in pairs], np.float32),
        hot,
    )


def filled(ids: str, cooc: CoocParams | None = None, **params: int) -> Catalog:
    cat = Catalog({"text": 2}, cooc or CoocParams(), CatalogParams(**params))
    for i in ids:
        cat.upsert(i, {"text": v(1, 0)})
    return cat


# -- items ------------------------------------------------------------------------------------


def test_upsert_replace_delete_and_revive() -> None:
    cat = Catalog(DIMS)
    v0 = cat.version
    assert cat.upsert("a", {"text": v(3, 4, 0, 0)}, title="A", tags=["x"]) == 0
    assert cat.upsert("b", {"text": v(0, 0, 1, 0), "image": v(0, 2, 0)}, title="B") == 1
    assert cat.upsert("c", {"text": v(1, 0, 0, 0)}) == 2
    assert len(cat) == 3 and cat.ids == ["a", "b", "c"] and cat.version > v0
    assert cat.hashes[:3].tolist() == [item_hash(i) for i in "abc"]
    assert cat.upsert("b", {"text": v(0, 0, 0, 5)}, title="B2", tags=["y"]) == 1  # same row
    assert len(cat) == 3 and cat.titles[1] == "B2" and cat.tags[1] == ("y",)
    assert cat.vectors(1).keys() == {"text"}  # the image is gone with the new version
    np.testing.assert_array_equal(cat.vectors(1)["text"], [0, 0, 0, 1])
    before = cat.version
    cat.delete("b")
    assert not cat.live[1] and cat.live_rows().tolist() == [0, 2] and cat.version > before
    assert cat.rows_of(np.asarray([item_hash("b")])).tolist() == [1]  # the row stays its own
    cat.delete("b")
    cat.delete("never")  # unknown or already deleted: nothing
    assert cat.upsert("b", {"text": v(0, 1, 0, 0)}) == 1  # published again: revived
    assert cat.live_rows().tolist() == [0, 1, 2] and len(cat) == 3


def test_vectors_are_unit_and_compact_per_modality() -> None:
    cat = Catalog(DIMS)
    cat.upsert("a", {"text": v(3, 4, 0, 0), "image": v(0, 0, 2)})
    cat.upsert("b", {"text": v(0, 1, 0, 0)})  # no image
    cat.upsert("c", {"text": v(0, 0, 0, 0), "image": v(1, 1, 0)})  # a zero vector: absent
    cat.upsert("d", {"text": v(1, 2, 3), "image": v(0, 1, 0)})  # the wrong size: absent
    assert cat.n_vec == {"text": 2, "image": 3}
    assert cat.midx[:, :4].tolist() == [[0, 1, -1, -1], [0, -1, 1, 2]]
    np.testing.assert_allclose(cat.vec["text"][:2], [[0.6, 0.8, 0, 0], [0, 1, 0, 0]])
    r = 2**-0.5
    np.testing.assert_allclose(cat.vec["image"][:3], [[0, 0, 1], [r, r, 0], [0, 1, 0]], 1e-6)
    rows = np.arange(4)
    assert cat.has("text", rows).tolist() == [True, True, False, False]
    assert cat.has("image", rows).tolist() == [True, False, True, True]
    assert cat.vectors(1).keys() == {"text"} and cat.vectors(2).keys() == {"image"}
    np.testing.assert_allclose(cat.vectors(0)["image"], [0, 0, 1])
    # a replaced vector keeps its place; a new one takes the next
    cat.upsert("a", {"text": v(0, 0, 2, 0), "image": v(0, 0, -1)})
    cat.upsert("b", {"text": v(0, 1, 0, 0), "image": v(5, 0, 0)})
    assert cat.midx[:, :2].tolist() == [[0, 1], [0, 3]] and cat.n_vec["image"] == 4
    np.testing.assert_allclose(cat.vec["text"][0], [0, 0, 1, 0])
    np.testing.assert_allclose(cat.vec["image"][[0, 3]], [[0, 0, -1], [1, 0, 0]])


@pytest.mark.parametrize("n", [30, 200, 1500])
def test_rows_of_known_and_unknown_hashes(n: int) -> None:
    """Up to 64 hashes are looked up one by one, more through the sorted indexes (the main one,
    rebuilt past 1,024 new items, and the one of items added since)."""
    rng = np.random.default_rng(n)
    cat = Catalog({"text": 2}, capacity=16)
    ids = [f"item-{i}" for i in range(n)]
    vecs = rng.standard_normal((n, 2)).astype(np.float32)
    for i, vec in zip(ids, vecs, strict=True):
        cat.upsert(i, {"text": vec})
    cat.upsert(ids[3], {"text": vecs[3]})  # again: not indexed twice
    known = np.asarray([item_hash(i) for i in ids], np.uint64)
    unknown = np.asarray([item_hash(f"other-{i}") for i in range(80)], np.uint64)
    q = np.concatenate([known, unknown])
    want = np.concatenate([np.arange(n), np.full(80, -1)])
    order = rng.permutation(len(q))
    q, want = q[order], want[order]
    for size in (0, 1, 10, 64, 65, 100, len(q)):
        got = cat.rows_of(q[:size])
        assert got.dtype == np.int64 and got.tolist() == want[:size].tolist()
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    np.testing.assert_allclose(cat.vec["text"][cat.midx[0, :n]], unit, rtol=1e-6)


# -- the item side ----------------------------------------------------------------------------


def test_set_side_publishes_the_strongest_known_neighbours() -> None:
    cooc = CoocParams(top_n=2, history_top_n=4, history_alpha=0.5)  # slots of 4
    cat = filled("xabcdef", cooc)
    row = {i: cat.row_of[item_hash(i)] for i in "xabcdef"}
    for i, count in {"a": 4.0, "b": 16.0, "d": 1.0}.items():  # c: no count yet
        cat.set_side(item_hash(i), side(count=count))
    cat.set_side(item_hash("x"), side({"b": 3.0, "c": 3.0, "d": 2.0, "zz": 5.0}, count=3.0))
    s = int(cat.slot[row["x"]])
    assert s >= 0 and cat.count[row["x"]] == 3.0 and cat.nb_len[s] == 3  # zz: not an item
    first, second = sorted(["b", "c"], key=item_hash)  # equal weights: by hash
    assert cat.nb[s, :3].tolist() == [row[first], row[second], row["d"]]
    assert cat.nb_w[s, :3].tolist() == [3.0, 3.0, 2.0]
    nb, w = cat.neighbours(row["x"], 2)  # the first top_n
    assert nb.tolist() == [row[first], row[second]] and w.tolist() == [3.0, 3.0]
    assert [len(a) for a in cat.neighbours(row["a"], 2)] == [0, 0]  # no row published
    # more entries than a slot holds: the strongest 4, strongest first
    cat.set_side(item_hash("a"), side({"b": 1.0, "c": 6.0, "d": 2.0, "e": 5.0, "f": 4.0}))
    nb, w = cat.neighbours(row["a"], 10)
    assert nb.tolist() == [row[i] for i in "cefd"] and w.tolist() == [6.0, 5.0, 4.0, 2.0]


def test_a_side_before_its_item_applies_when_the_item_arrives() -> None:
    cat = filled("ab")
    cat.set_side(item_hash("late"), side({"a": 2.0, "b": 1.0}, trend=7.0, count=2.0))
    assert cat.rows_of(np.asarray([item_hash("late")])).tolist() == [-1]
    row = cat.upsert("late", {"text": v(0, 1)})
    assert cat.trend[row] == 7.0 and cat.count[row] == 2.0
    assert cat.neighbours(row, 5)[0].tolist() == [0, 1]
    assert cat.trending.tolist() == [row]


@pytest.mark.parametrize("seed", range(4))
def test_moving_the_changed_entries_publishes_what_choosing_again_does(seed: int) -> None:
    """``set_side(..., changed)`` (kernels.publish_changes) against ``set_side`` from the whole
    row, over random growing rows: neighbours not yet in the catalog (skipped, then published
    whole), ties of weight, rows longer than a slot and trimmed (max_row), and the dense
    history, kept equal to the slots."""
    from recstream.ranking.item_side import ItemSide, Update

    rng = np.random.default_rng(seed)
    cooc = CoocParams(top_n=3, history_top_n=6, max_row=12)
    ids = [f"i{n}" for n in range(30)]
    moved, whole = filled("", cooc), filled("", cooc)
    for cat in (moved, whole):
        for i in ids[:24]:  # the last six arrive later: unknown neighbours until then
            cat.upsert(i, {"text": v(1, 0)})
    side = ItemSide(cooc, 3_600_000.0, 600_000.0)
    for step in range(300):
        if step == 150:
            for cat in (moved, whole):
                for i in ids[24:]:
                    cat.upsert(i, {"text": v(0, 1)})
        item = ids[int(rng.integers(24))]
        n = int(rng.integers(1, 4))
        nbs = rng.choice([i for i in ids if i != item], n, replace=False)
        pairs = tuple((item_hash(str(i)), float(rng.integers(1, 4)) / 2) for i in nbs)
        for h, changed in side.apply([Update(item_hash(item), 0.0, step, pairs)]).items():
            moved.set_side(h, side.rows[h], changed)
            whole.set_side(h, side.rows[h])
    assert moved.n_slots == whole.n_slots > 10
    for s in range(whole.n_slots):
        n = int(whole.nb_len[s])
        assert int(moved.nb_len[s]) == n
        assert moved.nb[s, :n].tolist() == whole.nb[s, :n].tolist()
        assert moved.nb_w[s, :n].tolist() == whole.nb_w[s, :n].tolist()
    assert whole.dense_hist is not None and moved.dense_hist is not None
    assert (moved.dense_hist == whole.dense_hist).all()
    assert (moved.dense_hist == dense_from_slots(moved)).all()
    assert max(len(r.nb) for r in side.rows.values()) > cooc.top_n  # rows outgrew the slots


def dense_from_slots(cat: Catalog) -> np.ndarray:
    """What the slots say: column ``row`` holds the row's first history_top_n entries."""
    want = np.zeros((cat.capacity, cat.capacity), np.float32)
    for row in range(cat.n):
        s = int(cat.slot[row])
        if s >= 0:
            m = min(int(cat.nb_len[s]), cat.cooc.history_top_n)
            want[cat.nb[s, :m], row] = cat.nb_w[s, :m]
    return want


def test_the_dense_history_matrix_equals_the_slots() -> None:
    rng = np.random.default_rng(5)
    ids = [f"i{n}" for n in range(40)]
    cat = Catalog({"text": 2}, CoocParams(top_n=6, history_top_n=4, history_alpha=0.25))
    counts = {i: float(rng.integers(0, 9)) for i in ids}
    for i in ids:
        cat.upsert(i, {"text": v(1, 0)})
        cat.set_side(item_hash(i), side(count=counts[i]))
    for rnd in range(4):  # publish, then republish with fewer, other or more entries
        for i in map(str, rng.choice(ids, 25, replace=False)):
            k = int(rng.integers(1, 9)) if rnd != 1 else int(rng.integers(1, 3))
            nbs = map(str, rng.choice([*ids, "unknown-1", "unknown-2"], k, replace=False))
            ws = {n: float(rng.integers(1, 5)) for n in nbs}
            cat.set_side(item_hash(i), side(ws, count=counts[i]))
        assert cat.dense_hist is not None
        np.testing.assert_array_equal(cat.dense_hist, dense_from_slots(cat))
    assert 0 < (cat.dense_hist != 0).sum() <= 4 * 40
    cat.set_side(item_hash("i0"), side({"i1": 1.0}, count=counts["i0"]))
    cat.set_side(item_hash("i0"), side(count=counts["i0"]))  # no entries left
    assert len(cat.neighbours(0, 10)[0]) == 0 and not cat.dense_hist[:, 0].any()
    np.testing.assert_array_equal(cat.dense_hist, dense_from_slots(cat))


def test_dense_history_only_up_to_dense_limit() -> None:
    small = Catalog({"text": 2}, params=CatalogParams(dense_limit=16))
    assert small.dense_hist is None  # its 1,024 rows of capacity are past the limit
    cat = Catalog({"text": 2}, params=CatalogParams(dense_limit=32), capacity=16)
    for n in range(32):
        cat.upsert(f"i{n}", {"text": v(1, 0)})
    cat.set_side(item_hash("i0"), side({"i1": 1.0}))
    assert cat.dense_hist is not None and cat.dense_hist[1, 0] == 1.0
    cat.upsert("i32", {"text": v(1, 0)})  # past the limit: the rows are read instead
    assert cat.dense_hist is None
    cat.set_side(item_hash("i2"), side({"i32": 2.0}))
    assert cat.neighbours(2, 5)[0].tolist() == [32]


def test_count_powers_follow_counts_as_the_catalog_grows() -> None:
    cat = Catalog({"text": 2}, capacity=16)
    counts = []
    for n in range(40):
        cat.upsert(f"i{n}", {"text": v(1, 0)})
        counts.append(float(n % 7))
        cat.set_side(item_hash(f"i{n}"), side(count=counts[-1]))
        if n == 10:
            cat.count_powers(0.5)  # kept current from here on
    inv, inv0 = cat.count_powers(0.5, 0.0)
    want = np.maximum(counts, 1.0) ** -0.5
    np.testing.assert_allclose(inv[:40], want)
    assert (inv0[:40] == 1.0).all() and len(inv) == cat.capacity


# -- ready lists and content neighbours -------------------------------------------------------


def test_trending_is_the_best_live_rows_by_trend() -> None:
    cat = filled("pqrst", list_size=3)
    row = {i: cat.row_of[item_hash(i)] for i in "pqrst"}
    for i, t in {"p": 1.0, "q": 5.0, "r": 3.0, "s": 4.0}.items():  # t: no interaction
        cat.set_side(item_hash(i), side(trend=t, count=1.0))
    assert cat.trending.tolist() == [row["q"], row["s"], row["r"]]
    cat.set_side(item_hash("p"), side(trend=10.0, count=2.0))
    assert cat.trending.tolist() == [row["p"], row["q"], row["s"]]
    cat.delete("q")
    assert row["q"] not in cat.trending.tolist()
    cat.upsert("q", {"text": v(1, 0)})  # revived: back where its trend puts it
    assert cat.trending.tolist() == [row["p"], row["q"], row["s"]]
    cat.delete("s")
    cat.set_side(item_hash("s"), side(trend=20.0, count=3.0))  # a dead row is never listed
    assert row["s"] not in cat.trending.tolist()
    cat.upsert("s", {"text": v(1, 0)})
    assert cat.trending.tolist() == [row["s"], row["p"], row["q"]]


def test_hottest_is_the_best_live_rows_by_hot_trend() -> None:
    """The minutes-scale trend has its own list, which can differ from the hourly one."""
    cat = filled("pqrst", list_size=3)
    row = {i: cat.row_of[item_hash(i)] for i in "pqrst"}
    for i, (t, h) in {"p": (9.0, 1.0), "q": (1.0, 5.0), "r": (2.0, 3.0), "s": (3.0, 4.0)}.items():
        cat.set_side(item_hash(i), side(trend=t, count=1.0, hot=h))
    assert cat.hottest.tolist() == [row["q"], row["s"], row["r"]]
    assert cat.trending.tolist() == [row["p"], row["s"], row["r"]]
    cat.set_side(item_hash("p"), side(trend=9.5, count=2.0, hot=10.0))
    assert cat.hottest.tolist() == [row["p"], row["q"], row["s"]]
    cat.delete("q")
    assert row["q"] not in cat.hottest.tolist()
    cat.upsert("q", {"text": v(1, 0)})  # revived: back where its hot trend puts it
    assert cat.hottest.tolist() == [row["p"], row["q"], row["s"]]
    cat.delete("s")
    cat.set_side(item_hash("s"), side(trend=9.0, count=3.0, hot=20.0))  # dead: never listed
    assert row["s"] not in cat.hottest.tolist()
    cat.upsert("s", {"text": v(1, 0)})
    assert cat.hottest.tolist() == [row["s"], row["p"], row["q"]]


def test_popular_is_the_best_live_rows_by_interactions_over_all_time() -> None:
    cat = filled("pqrst", list_size=3)
    row = {i: cat.row_of[item_hash(i)] for i in "pqrst"}
    for i, c in {"p": 1.0, "q": 5.0, "r": 3.0, "s": 4.0}.items():  # an old trend: gone now
        cat.set_side(item_hash(i), side(trend=-50.0 + c, count=c))
    assert cat.popular.tolist() == [row["q"], row["s"], row["r"]]
    cat.set_side(item_hash("p"), side(trend=-40.0, count=9.0))
    assert cat.popular.tolist() == [row["p"], row["q"], row["s"]]
    cat.delete("q")
    assert row["q"] not in cat.popular.tolist()
    cat.upsert("q", {"text": v(1, 0)})  # revived: back where its count puts it
    assert cat.popular.tolist() == [row["p"], row["q"], row["s"]]
    cat.delete("s")
    cat.set_side(item_hash("s"), side(trend=-30.0, count=20.0))  # a dead row is never listed
    assert row["s"] not in cat.popular.tolist()
    cat.upsert("s", {"text": v(1, 0)})
    assert cat.popular.tolist() == [row["s"], row["p"], row["q"]]


def test_fresh_is_the_newest_by_publication_time() -> None:
    cat = Catalog({"text": 2}, params=CatalogParams(list_size=3))
    for i, at in {"a": 10, "b": 30, "c": 20, "d": None, "e": 40, "f": 5}.items():
        cat.upsert(i, {"text": v(1, 0)}, published_at=at)
    assert [cat.ids[r] for r in cat.fresh] == ["e", "b", "c"]  # d: no time, never listed
    cat.upsert("c", {"text": v(1, 0)}, published_at=50)  # republished later
    assert [cat.ids[r] for r in cat.fresh] == ["c", "e", "b"]
    cat.delete("e")
    assert [cat.ids[r] for r in cat.fresh] == ["c", "b"]
    cat.upsert("g", {"text": v(1, 0)}, published_at=35)
    assert [cat.ids[r] for r in cat.fresh] == ["c", "g", "b"]


def test_content_neighbours_are_resolved_when_read() -> None:
    cat = Catalog({"text": 2}, params=CatalogParams(content_k=3))
    nbs = [("b", 0.9), ("zz", 0.8), ("c", 0.7), ("d", 0.6)]  # zz: not an item; d: past k
    cat.upsert("a", {"text": v(1, 0)}, neighbours=nbs)
    cat.upsert("b", {"text": v(1, 0)})
    cat.upsert("c", {"text": v(1, 0)}, neighbours=[("a", 0.5)])  # published after a: found
    cat.upsert("d", {"text": v(1, 0)})
    owner, nbr, sims = cat.content_neighbours(np.asarray([0, 1, 2]))
    assert owner.tolist() == [0, 0, 2] and nbr.tolist() == [1, 2, 0]
    np.testing.assert_allclose(sims, [0.9, 0.7, 0.5])
    assert [len(a) for a in cat.content_neighbours(np.asarray([1, 3]))] == [0, 0, 0]
