"""The compiled kernels (ranking/kernels.py) against their plain numpy definitions on random
data, and the scoring kernel (through ranking.scoring.score) against a straightforward
reference of the six features written out here."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from recstream.ranking import kernels, seen
from recstream.ranking.catalog import Catalog, CatalogParams
from recstream.ranking.item_side import NO_TREND, CoocParams, ItemRow
from recstream.ranking.learner import user_step
from recstream.ranking.scoring import FEATURES, Pairs, ScoreParams, resolve_users, score
from recstream.ranking.user_state import StateParams, UserState, apply_event, item_digest, item_hash

HASHES = np.asarray([item_hash(f"h{i}") for i in range(200)], np.uint64)  # half past 2**63


def test_dots_first_rows_and_dots_pairs() -> None:
    rng = np.random.default_rng(0)
    mat = rng.standard_normal((50, 16)).astype(np.float32)
    vecs = rng.standard_normal((3, 16)).astype(np.float32)
    got = kernels.dots_first_rows(mat, 40, vecs)
    assert got.shape == (3, 40) and got.dtype == np.float32
    np.testing.assert_allclose(got, vecs @ mat[:40].T, rtol=1e-5, atol=1e-5)
    rows, which = rng.integers(0, 50, 200), rng.integers(0, 3, 200)
    got = kernels.dots_pairs(mat, rows, vecs, which)
    np.testing.assert_allclose(got, (mat[rows] * vecs[which]).sum(1), rtol=1e-5, atol=1e-5)


def test_bloom_rows_and_bloom_first_rows() -> None:
    rng = np.random.default_rng(1)
    flags = rng.random(256) < 0.7
    pos = rng.integers(0, 256, (80, 4))
    rows = rng.integers(0, 80, 300)
    every = flags[pos].all(1)
    assert 5 < every.sum() < 75  # both outcomes occur
    assert kernels.bloom_rows(flags, pos, rows).tolist() == every[rows].tolist()
    assert kernels.bloom_first_rows(flags, pos, 60).tolist() == np.flatnonzero(every[:60]).tolist()


def test_column_sums() -> None:
    rng = np.random.default_rng(2)
    dense = rng.random((30, 40)).astype(np.float32)
    cols = rng.integers(0, 30, 25)  # with repeats
    got = kernels.column_sums(dense, cols, 35)
    np.testing.assert_allclose(got, dense[cols, :35].astype(np.float64).sum(0), rtol=1e-12)
    assert kernels.column_sums(dense, cols[:0], 35).tolist() == [0.0] * 35


def test_merge_row() -> None:
    rng = np.random.default_rng(3)
    for n, m in [(0, 0), (0, 5), (7, 0), (40, 30), (60, 60)]:
        nb = np.sort(rng.choice(HASHES[:80], n, replace=False))
        add_nb = np.sort(rng.choice(HASHES[:80], m, replace=False))
        w = rng.random(n).astype(np.float32)
        add_w = rng.random(m).astype(np.float32)
        want: dict[int, np.float32] = dict(zip(nb.tolist(), w, strict=True))
        for h, x in zip(add_nb.tolist(), add_w, strict=True):
            want[h] = want[h] + x if h in want else x
        got_nb, got_w = kernels.merge_row(nb, w, add_nb, add_w)
        assert got_nb.dtype == np.uint64 and got_w.dtype == np.float32
        assert got_nb.tolist() == sorted(want)
        assert got_w.tolist() == [float(want[h]) for h in sorted(want)]


def test_add_to_row_is_merge_rows_sum_in_place() -> None:
    rng = np.random.default_rng(5)
    nb = np.sort(rng.choice(HASHES[:80], 30, replace=False))
    w = rng.random(30).astype(np.float32)
    for h in (nb[0], nb[17], nb[-1]):
        want_nb, want_w = kernels.merge_row(nb, w, np.asarray([h]), np.asarray([0.3], np.float32))
        assert kernels.add_to_row(nb, w, h, 0.3)
        assert nb.tolist() == want_nb.tolist() and w.tolist() == want_w.tolist()
    absent = [h for h in HASHES[:80].tolist() if h not in set(nb.tolist())]
    before = w.copy()
    for h in (min(absent), max(absent), absent[len(absent) // 2]):
        assert not kernels.add_to_row(nb, w, np.uint64(h), 1.0)
    assert w.tolist() == before.tolist()
    assert not kernels.add_to_row(nb[:0], w[:0], nb[0], 1.0)


def test_top_pairs_best_first_ties_by_hash_without_infinities() -> None:
    rng = np.random.default_rng(4)
    sizes, ks = [0, 5, 30, 50, 12], np.asarray([3, 4, 10, 60, 0])
    r = np.concatenate([np.sort(rng.choice(200, n, replace=False)) for n in sizes])
    start = np.concatenate([[0], np.cumsum(sizes)])
    scores = rng.integers(0, 5, len(r)).astype(np.float64)  # many ties
    scores[rng.random(len(r)) < 0.2] = -np.inf
    got = kernels.top_pairs(scores, HASHES, r, start, ks)
    assert got.shape == (5, 60)
    for b in range(5):
        ps = [p for p in range(start[b], start[b + 1]) if np.isfinite(scores[p])]
        want = sorted(ps, key=lambda p: (-scores[p], int(HASHES[r[p]])))[: ks[b]]
        assert got[b].tolist() == want + [-1] * (60 - len(want))
    assert (got[3] >= 0).sum() == np.isfinite(scores[start[3] : start[4]]).sum() < 60


NO_DENSE = np.zeros((1, 1), np.float32)


def test_quantize() -> None:
    rng = np.random.default_rng(5)
    for n in range(300):
        v = (rng.standard_normal(64) * rng.random() ** 3).astype(np.float32)
        if n % 7 == 0:
            v = np.round(v * 4) / 4  # exact halves: rint rounds them to even
        if n % 11 == 0:
            v[:] = 0
        q, scale = kernels.quantize(v)
        top = float(np.max(np.abs(v)))
        want_scale = np.float32(top / 127.0)
        assert scale == want_scale and q.dtype == np.int8
        if want_scale == 0:
            assert not q.any()
        else:
            want = np.clip(np.rint(v / want_scale), -127, 127).astype(np.int8)
            np.testing.assert_array_equal(q, want)


def test_fold_interest_is_the_decayed_sum_quantized_and_back() -> None:
    """kernels.fold_interest against its numpy definition: old * decay + w * vec (either part
    absent), through quantize and back, bit for bit."""
    rng = np.random.default_rng(9)
    for n in range(200):
        old = rng.standard_normal(48).astype(np.float32)
        vec = (rng.standard_normal(48) / 7).astype(np.float32)
        decay = np.float32(rng.random())
        w = np.float32(rng.choice([1.0, 0.5, -1.0, 2.5]))
        has_old, has_vec = [(True, True), (True, False), (False, True)][n % 3]
        if has_old and has_vec:
            want = old * decay + w * vec
        elif has_old:
            want = old * decay
        else:
            want = w * vec
        q, scale = kernels.quantize(want.astype(np.float32))
        want = q.astype(np.float32) * np.float32(scale)
        # an absent part is passed as zeros (ranking.user_state.apply_event)
        zeros = np.zeros(48, np.float32)
        got = kernels.fold_interest(old if has_old else zeros, decay, w, vec if has_vec else zeros)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def _top_summed_reference(u, r, w, n_users, limits, live, ex_u, ex_row):
    key = u * (1 << 32) + r
    uniq, inv = np.unique(key, return_inverse=True)
    total = np.bincount(inv, weights=w, minlength=len(uniq))
    uu, rr = uniq >> 32, uniq & ((1 << 32) - 1)
    ok = live[rr] & ~np.isin(uniq, ex_u * (1 << 32) + ex_row)
    uu, rr, total = uu[ok], rr[ok], total[ok]
    order = np.lexsort((rr, -total, uu))
    uu, rr = uu[order], rr[order]
    starts = np.searchsorted(uu, np.arange(n_users + 1))
    sel = np.arange(len(uu)) - starts[uu] < np.asarray(limits)[uu]
    return uu[sel], rr[sel]


@pytest.mark.parametrize("grouped", [True, False])
def test_top_summed(grouped: bool) -> None:
    """Each user's best rows by summed weight, exclusions and dead rows dropped, ties by row
    (weights in quarters: many ties at every limit)."""
    rng = np.random.default_rng(6)
    cap, n_users = 300, 7
    live = rng.random(cap) < 0.9
    u = np.sort(rng.integers(0, n_users, 2000)) if grouped else rng.integers(0, n_users, 2000)
    r = rng.integers(0, cap, 2000)
    w = rng.integers(1, 8, 2000) / 4.0
    ex_u = np.sort(rng.integers(0, n_users, 60))
    ex_row = rng.integers(0, cap, 60)
    limits = np.asarray([0, 1, 5, 40, 300, 17, 3], np.int64)
    total, mark = np.zeros(cap), np.zeros(cap, np.int8)
    got = kernels.top_summed(u, r, w, n_users, limits, live, ex_u, ex_row, total, mark)
    want = _top_summed_reference(u, r, w, n_users, limits, live, ex_u, ex_row)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert not total.any() and not mark.any()  # the scratch is left zero


def table(hashes: np.ndarray, rows: np.ndarray, size: int = 512) -> tuple[np.ndarray, ...]:
    """A hash table of hashes[i] -> rows[i], filled one put at a time."""
    keys, out = kernels.table_build(hashes[:0], size)
    for h, r in zip(hashes, rows, strict=True):
        kernels.table_put(keys, out, h, int(r))
    return keys, out


@pytest.mark.parametrize("n_users", [0, 1, 7])
def test_unique_pairs_is_numpy_unique_of_the_pair_keys(n_users: int) -> None:
    rng = np.random.default_rng(n_users)
    n = 40 * n_users
    u = rng.integers(0, max(n_users, 1), n)  # ungrouped, a user may have no pairs
    r = rng.integers(0, 30, n)  # many repeats
    key = np.unique(u * (1 << 32) + r)
    uu, rr, starts = kernels.unique_pairs(u, r, n_users)
    np.testing.assert_array_equal(uu, key >> 32)
    np.testing.assert_array_equal(rr, key & ((1 << 32) - 1))
    np.testing.assert_array_equal(starts, np.searchsorted(key >> 32, np.arange(n_users + 1)))
    pairs = Pairs.build(n_users, u, r)
    np.testing.assert_array_equal(pairs.r, rr)
    assert pairs.u.dtype == np.intp and pairs.starts.dtype == np.intp


def test_lookup_rows() -> None:
    queries = np.concatenate([HASHES, np.asarray([1, 2**64 - 1], np.uint64)])
    want = [i if i < 180 else -1 for i in range(200)] + [-1, -1]
    # 180 keys in 256 slots: probing past collisions; and built at once, and one by one
    for keys, rows in (kernels.table_build(HASHES[:180], 256),
                       kernels.table_build(HASHES[:180], 1024),
                       table(HASHES[:180], np.arange(180), 256)):  # fmt: skip
        assert (rows >= 0).sum() == 180
        assert kernels.lookup_rows(keys, rows, queries).tolist() == want
    keys, rows = table(HASHES[:10], np.arange(10), 16)
    kernels.table_put(keys, rows, HASHES[3], 42)  # a put of a known hash moves it
    assert kernels.lookup_rows(keys, rows, HASHES[:4]).tolist() == [0, 1, 2, 42]


def test_users_rows() -> None:
    """Per user of a batch: seeds, the first len(decay) positive items newest first, those in
    the catalog kept and weighted decay[d - 1] by their place among the user's kept;
    exclusions, the sorted catalog rows of the user's recent and disliked items."""
    rng = np.random.default_rng(9)
    index = kernels.table_build(HASHES[:180], 256)
    row = {int(h): i for i, h in enumerate(HASHES[:180])}
    decay = 0.8 ** np.arange(6, dtype=np.float64)
    for _ in range(20):
        users = []
        for _ in range(int(rng.integers(0, 5))):
            n = int(rng.integers(0, 13))  # some beyond the catalog (rows 180+), some users empty
            users.append((rng.choice(HASHES, n, replace=False),
                          rng.choice([-1.0, 0.0, 0.5, 1.0], n).astype(np.float32),
                          rng.choice(HASHES, int(rng.integers(0, 4)), replace=False)))  # fmt: skip
        starts = [np.cumsum([0] + [len(u[k]) for u in users]) for k in (0, 2)]
        flat = [np.concatenate([u[k] for u in users] or [np.zeros(0, dt)])
                for k, dt in ((0, np.uint64), (1, np.float32), (2, np.uint64))]  # fmt: skip
        s_start, rows, ws, a, x_start, ex = kernels.users_rows(
            flat[0], flat[1], starts[0], flat[2], starts[1], decay, *index
        )
        assert len(s_start) == len(x_start) == len(users) + 1
        for b, (recent, recent_w, disliked) in enumerate(users):
            got = slice(s_start[b], s_start[b + 1])
            positive = [i for i in range(len(recent) - 1, -1, -1) if recent_w[i] > 0]
            kept = [i for i in positive[: len(decay)] if int(recent[i]) in row]
            assert rows[got].tolist() == [row[int(recent[i])] for i in kept]
            assert ws[got].tolist() == [float(recent_w[i]) for i in kept]
            assert a[got].tolist() == decay[: len(kept)].tolist()
            both = [*recent.tolist(), *disliked.tolist()]
            want = sorted(row[int(h)] for h in both if int(h) in row)
            assert ex[x_start[b] : x_start[b + 1]].tolist() == want


def test_bpr_gradient() -> None:
    rng = np.random.default_rng(4)
    w = rng.normal(size=8)
    taken = rng.random(8).astype(np.float32)
    passed = rng.random((5, 8)).astype(np.float32)
    diff = taken.astype(np.float64)[None, :] - passed.astype(np.float64)
    g = 1.0 / (1.0 + np.exp(np.clip(diff @ w, -30, 30)))
    np.testing.assert_allclose(
        kernels.bpr_gradient(w, taken, passed), (g[:, None] * diff).mean(0), rtol=1e-12
    )
    assert kernels.bpr_gradient(w, taken, passed[:0]).tolist() == [0.0] * 8


def test_weigh_keeps_exclusions() -> None:
    feats = np.arange(24, dtype=np.float32).reshape(3, 8) / 24
    scores = np.asarray([0.0, -np.inf, 5.0, 7.0])
    w = np.linspace(-1, 1, 8).astype(np.float32)
    kernels.weigh(feats, w, 0, 3, scores)
    want = feats.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose(scores[[0, 2]], want[[0, 2]], rtol=1e-6)
    assert scores[1] == -np.inf and scores[3] == 7.0  # excluded kept; outside lo:hi untouched


def test_publish_row() -> None:
    rng = np.random.default_rng(5)
    rows = rng.permutation(60)  # the rows of HASHES[:60]; the rest are not in the catalog
    keys, slots = table(HASHES[:60], rows)
    nb = np.sort(rng.choice(HASHES[:80], 30, replace=False))
    w = rng.integers(1, 6, 30).astype(np.float32)  # ties
    out_nb, out_w = np.zeros(12, np.int32), np.zeros(12, np.float32)
    m = kernels.publish_row(
        nb,
        w,
        12,
        keys,
        slots,
        out_nb,
        out_w,
        0,
        NO_DENSE,
        False,
        0,
        12,
    )
    row_of = {int(HASHES[i]): int(rows[i]) for i in range(60)}
    top = sorted(range(30), key=lambda i: (-w[i], int(nb[i])))[:12]
    want = [(row_of[int(nb[i])], w[i]) for i in top if int(nb[i]) in row_of]
    assert 0 < m == len(want) < 12
    assert out_nb[:m].tolist() == [x for x, _ in want]
    assert out_w[:m].tolist() == [float(y) for _, y in want]
    # a row much longer than what it publishes is selected, not sorted whole: the same answer
    long_nb = np.sort(rng.choice(HASHES[:80], 70, replace=False))
    long_w = rng.integers(1, 4, 70).astype(np.float32)  # many ties at the threshold
    for top in (3, 5, 12):
        out_nb, out_w = np.zeros(top, np.int32), np.zeros(top, np.float32)
        m = kernels.publish_row(
            long_nb, long_w, top, keys, slots, out_nb, out_w, 0, NO_DENSE, False, 0, top,
        )  # fmt: skip
        first = sorted(range(70), key=lambda i: (-long_w[i], int(long_nb[i])))[:top]
        want = [(row_of[int(long_nb[i])], long_w[i]) for i in first if int(long_nb[i]) in row_of]
        assert out_nb[:m].tolist() == [x for x, _ in want]
        assert out_w[:m].tolist() == [float(y) for _, y in want]


# -- the scoring kernel -----------------------------------------------------------------------

NOW = 1_700_000_000_000
HOUR = 3_600_000
N, BITS = 300, 512
DIMS = {"text": 8, "image": 4}
COOC = CoocParams(top_n=5, history_top_n=8, history_alpha=0.25)  # slots of 8
TOP = 8
SP = ScoreParams(
    prior=(1.0, 0.8, 0.6, 0.4, 0.3, 0.5, 0.2, 0.35),
    modality_weights={"text": 1.0, "image": 0.5},
    trending_half_life_ms=24 * HOUR,
    freshness_half_life_ms=72 * HOUR,
    cf_alpha=0.5,
    cf_beta=0.3,
    recency_decay=0.8,
    recent_window=6,
    history_beta=0.7,
    session_half_life_ms=40 * HOUR,
)
WEIGHTS = {"view": 0.5, "click": 1.0, "like": 2.0, "skip": -0.5, "dislike": -2.0}


@dataclass
class Item:
    id: str
    vecs: dict[str, np.ndarray]  # unit vectors
    pub: int | None
    side: ItemRow


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x)).astype(np.float32)


def make_items(rng: np.random.Generator) -> list[Item]:
    """N items, every fourth without an image, every seventh without a publication time, a
    few published in the future; rows of up to TOP neighbours, some not in the catalog."""
    out = []
    k = math.log(2) / SP.trending_half_life_ms
    k_hot = math.log(2) / SP.hot_half_life_ms
    for i in range(N):
        vecs = {"text": unit(rng.standard_normal(8))}
        if i % 4:
            vecs["image"] = unit(rng.standard_normal(4))
        pub = None if i % 7 == 0 else NOW - int(rng.integers(-HOUR, 200 * HOUR))
        trend = NO_TREND if i % 5 == 0 else NOW * k + float(rng.normal(0, 2))
        hot = NO_TREND if i % 3 == 0 else NOW * k_hot + float(rng.normal(-1, 2))
        nbs = rng.choice(N + 20, int(rng.integers(0, TOP + 1)), replace=False)
        pairs = sorted((item_hash(f"item-{j}"), float(rng.integers(1, 6))) for j in nbs)
        side = ItemRow(
            trend,
            float(rng.integers(0, 30)),
            np.asarray([h for h, _ in pairs], np.uint64),
            np.asarray([w for _, w in pairs], np.float32),
            hot,
        )
        out.append(Item(f"item-{i}", vecs, pub, side))
    return out


def build(items: list[Item], dense_limit: int, rng: np.random.Generator) -> Catalog:
    cat = Catalog(DIMS, COOC, CatalogParams(seen_bits=BITS, dense_limit=dense_limit))
    for it in items:
        cat.upsert(it.id, it.vecs, published_at=it.pub)
        cat.set_side(item_hash(it.id), ItemRow(it.side.trend, it.side.count, hot=it.side.hot))
    for it in items[::3]:  # a stale row first, replaced below
        stale = np.sort(rng.choice(N, 6, replace=False)).astype(np.uint64)
        stale_h = np.sort(np.asarray([item_hash(f"item-{j}") for j in stale], np.uint64))
        cat.set_side(
            item_hash(it.id), ItemRow(it.side.trend, it.side.count, stale_h, np.ones(6, np.float32))
        )
    for it in items:
        cat.set_side(item_hash(it.id), it.side)
    return cat


def make_users(items: list[Item], rng: np.random.Generator) -> list[UserState]:
    p = StateParams(event_weights=WEIGHTS, half_life_ms=48 * HOUR, seen_filter_bits=BITS)
    states = [UserState()]  # nothing yet
    for n, types in [(1, ["like"]), (15, list(WEIGHTS)), (40, list(WEIGHTS)), (6, ["skip"])]:
        s, ts = UserState(), NOW - 100 * HOUR
        for _ in range(n):
            it = items[int(rng.integers(0, N))]
            ts += int(rng.integers(0, 2 * HOUR))
            etype = str(rng.choice(types))
            s = apply_event(
                s, item=item_hash(it.id), item_digest16=item_digest(it.id), item_vectors=it.vecs,
                event_type=etype, ts=ts, value=None, params=p,
            )  # fmt: skip
        states.append(s)
    states[3].weights = np.asarray([0.1, -0.2, 0.3, 0.0, 0.05, -0.1, 0.2, -0.3], np.float32)
    states[4].weights = np.asarray([0.1, -0.2, 0.3, 0.0, 0.05, -0.1, 0.2], np.float32)  # old
    return states


def reference(items: list[Item], states: list[UserState], pairs: Pairs) -> tuple:
    """Raw features, scaled features and scores of the pairs by their definitions, and each
    pair's cf terms by seed (its index among all the users' seeds)."""
    row_of = {item_hash(it.id): r for r, it in enumerate(items)}
    # scoring reads the catalog's int8 codes of the unit vectors: code * scale
    coded = [{m: np.float32(q_s[1]) * q_s[0].astype(np.float32)
              for m, v in it.vecs.items()
              for q_s in [kernels.quantize(np.float32(v) / np.float32(np.linalg.norm(v)))]}
             for it in items]  # fmt: skip
    count = [max(it.side.count, 1.0) for it in items]
    published = []  # per row: its strongest TOP entries in the catalog: (row, w, history w)
    for it in items:
        es = sorted(
            zip(it.side.nb.tolist(), it.side.w.tolist(), strict=True), key=lambda e: (-e[1], e[0])
        )
        known = [(row_of[h], w) for h, w in es[:TOP] if h in row_of]
        published.append([(j, w, w / count[j] ** COOC.history_alpha) for j, w in known])
    k_tr = math.log(2) / SP.trending_half_life_ms
    k_hot = math.log(2) / SP.hot_half_life_ms
    nf = len(FEATURES)
    raw, feats = np.zeros((len(pairs), nf)), np.zeros((len(pairs), nf))
    scores = np.zeros(len(pairs))
    terms: list[dict[int, float]] = [{} for _ in range(len(pairs))]
    mass = np.zeros((len(states), nf))  # per feature (cf, history): the weight behind it
    base = 0  # the user's first seed among all seeds
    for b, st in enumerate(states):
        lo, hi = int(pairs.starts[b]), int(pairs.starts[b + 1])
        newest = zip(st.recent[::-1].tolist(), st.recent_w[::-1].tolist(), strict=True)
        seeds = [row_of[h] for h, w in newest if w > 0][: SP.recent_window]
        a = [SP.recency_decay**d for d in range(len(seeds))]
        long = {m: unit(v) for m, v in st.interest.items() if np.linalg.norm(v) > 1e-9}
        short = {}
        for m in DIMS:
            vs = [a[d] * coded[j][m] for d, j in enumerate(seeds) if m in coded[j]]
            if vs and np.linalg.norm(sum(vs)) > 1e-9:
                short[m] = unit(sum(vs))
        taken = [bool(st.seen_filter) and seen.contains(st.seen_filter, it.id) for it in items]
        for p in range(lo, hi):
            r = int(pairs.r[p])
            it = items[r]
            # weighted mean over the user's modalities, one the item lacks counting 0
            for f, user in ((0, long), (1, short)):
                both = [m for m in DIMS if m in user and m in it.vecs]
                den = sum(SP.modality_weights[m] for m in DIMS if m in user)
                num = sum(SP.modality_weights[m] * float(user[m] @ coded[r][m]) for m in both)
                raw[p, f] = num / den if den else 0.0
            for d, s in enumerate(seeds):
                for j, w, _ in published[s][: COOC.top_n]:
                    if j == r:
                        terms[p][base + d] = a[d] * w / count[s] ** SP.cf_alpha
                        mass[b, 2] += a[d] * w  # the co-occurrence weight behind the user's cf
            raw[p, 2] = sum(terms[p].values()) / count[r] ** SP.cf_beta
            raw[p, 3] = np.logaddexp(0.0, it.side.trend - NOW * k_tr)  # softplus
            if it.pub is not None:
                raw[p, 4] = 0.5 ** (max(NOW - it.pub, 0) / SP.freshness_half_life_ms)
            hist = [hw for j, _, hw in published[r][: COOC.history_top_n] if taken[j]]
            raw[p, 5] = sum(hist) / count[r] ** SP.history_beta
            mass[b, 5] += sum(hist)  # and behind the user's history
            raw[p, 6] = math.log1p(it.side.count)  # popular: all-time interactions
            raw[p, 7] = np.logaddexp(0.0, it.side.hot - NOW * k_hot)  # hot: softplus
        base += len(seeds)
        feats[lo:hi] = raw[lo:hi]
        for f in (2, 3, 5, 6, 7):  # divided by the user's max among their pairs
            top = raw[lo:hi, f].max(initial=0.0)
            if f in (3, 7):  # popularity: never by less than one interaction's worth
                top = max(top, math.log(2))
            if f in (2, 5) and top > 0:  # cf, history: the best counts m / (m + 1) of itself
                top *= (mass[b, f] + 1) / mass[b, f]
            feats[lo:hi, f] /= top if top > 0 else 1.0
        # the short-term features, by the time since the user's last event (after the scaling)
        fade = 0.5 ** ((NOW - st.last_ts if st.n_events else 0) / SP.session_half_life_ms)
        raw[lo:hi, 1:3] *= fade
        feats[lo:hi, 1:3] *= fade
        w = np.asarray(SP.prior) + (st.weights if len(st.weights) == nf else 0.0)
        scores[lo:hi] = feats[lo:hi] @ w
        for p in range(lo, hi):
            it = items[int(pairs.r[p])]
            if st.has_seen(it.id) or item_hash(it.id) in st.disliked.tolist():
                scores[p] = -np.inf
    return raw, feats, scores, terms, mass


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "subset"])
@pytest.mark.parametrize("dense_limit", [4096, 16], ids=["dense", "rows"])
def test_score_pairs_matches_the_reference(dense_limit: int, whole: bool) -> None:
    rng = np.random.default_rng(11)
    items = make_items(rng)
    states = make_users(items, rng)
    cat = build(items, dense_limit, rng)
    assert (cat.dense_hist is None) == (dense_limit == 16)
    if whole:
        pairs = Pairs.whole(len(states), cat.live_rows())
    else:  # a random third of the catalog, and the user's own latest items
        us = [np.full(100 + len(st.recent), b) for b, st in enumerate(states)]
        rs = [np.concatenate([rng.integers(0, N, 100), cat.rows_of(st.recent)]) for st in states]
        pairs = Pairs.build(len(states), np.concatenate(us), np.concatenate(rs))
    users = resolve_users(cat, states, SP, now_ms=NOW)
    sc = score(cat, users, pairs, NOW, SP, top_n=COOC.top_n, history_top_n=COOC.history_top_n)
    raw, feats, scores, terms, mass = reference(items, states, pairs)
    assert (raw != 0).any(0).all()  # every feature is exercised
    np.testing.assert_allclose(sc.raw, raw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sc.features, feats, rtol=1e-4, atol=1e-5)
    out = np.isneginf(scores)
    assert 0 < out.sum() < len(out)
    assert np.isneginf(sc.scores).tolist() == out.tolist()
    np.testing.assert_allclose(sc.scores[~out], scores[~out], rtol=1e-4, atol=1e-5)
    for b in range(len(states)):
        lo, hi = pairs.starts[b], pairs.starts[b + 1]
        for f in (2, 3, 5):
            top = raw[lo:hi, f].max(initial=0.0) / (users.session[b] if f == 2 else 1.0)
            if f in (2, 5) and top > 0:
                top *= (mass[b, f] + 1) / mass[b, f]
            assert sc.scales[b, f] == pytest.approx(top if top > 0 else 1.0, rel=1e-5)
    for p in range(len(pairs)):  # the seed with the largest cf term
        if terms[p]:
            assert terms[p][int(sc.best_seed[p])] == pytest.approx(max(terms[p].values()))
        else:
            assert sc.best_seed[p] == -1
    # users scored for a list: their excluded pairs' content and recent features are left 0,
    # everything else (scores, divisors, the other features) as before
    listing = np.arange(len(states)) % 2 == 1
    ls = score(cat, users, pairs, NOW, SP, top_n=COOC.top_n, history_top_n=COOC.history_top_n,
               listing=listing)  # fmt: skip
    skipped = out & listing[pairs.u]
    assert skipped.any() and (sc.raw[skipped, :2] != 0).any()
    np.testing.assert_array_equal(ls.raw[skipped, :2], 0.0)
    np.testing.assert_array_equal(ls.raw[~skipped], sc.raw[~skipped])
    np.testing.assert_array_equal(ls.raw[skipped, 2:], sc.raw[skipped, 2:])
    np.testing.assert_array_equal(ls.scores, sc.scores)
    np.testing.assert_array_equal(ls.scales, sc.scales)
    np.testing.assert_array_equal(ls.best_seed, sc.best_seed)


def test_the_cached_popularity_follows_the_rows_trends_and_the_time() -> None:
    """The kernel keeps each row's popularity features for the time it last scored at
    (Catalog.pop_*): a trend written in between (set_side), another time or another half-life
    gives what a catalog that never scored gives."""
    rng = np.random.default_rng(11)
    items = make_items(rng)
    states = make_users(items, rng)
    cat = build(items, 4096, rng)
    pairs = Pairs.whole(len(states), cat.live_rows())

    def feats(c: Catalog, now: int, sp: ScoreParams = SP) -> np.ndarray:
        users = resolve_users(c, states, sp, now_ms=now)
        return score(c, users, pairs, now, sp, top_n=COOC.top_n,
                     history_top_n=COOC.history_top_n).raw[:, [3, 7]]  # fmt: skip

    first = feats(cat, NOW)
    assert cat.pop_ok[pairs.r].all() and (first > 0).any()
    row = int(np.argmax(cat.trend))
    h = int(cat.hashes[row])
    side = ItemRow(
        float(cat.trend[row]) + 3.0, float(cat.count[row]), hot=float(cat.hot[row]) + 2.0
    )
    for c in (cat, fresh := build(items, 4096, np.random.default_rng(11))):
        c.set_side(h, side)
    assert not cat.pop_ok[row]
    assert feats(cat, NOW).tolist() == feats(fresh, NOW).tolist()
    assert feats(cat, NOW)[pairs.r == row].tolist() != first[pairs.r == row].tolist()
    later = build(items, 4096, np.random.default_rng(11))
    later.set_side(h, side)
    assert feats(cat, NOW + 3_600_000).tolist() == feats(later, NOW + 3_600_000).tolist()
    slow = ScoreParams(**{**SP.__dict__, "trending_half_life_ms": SP.trending_half_life_ms * 4})
    other = build(items, 4096, np.random.default_rng(11))
    other.set_side(h, side)
    assert feats(cat, NOW, slow).tolist() == feats(other, NOW, slow).tolist()


def test_by_weight_is_a_stable_sort_by_weight_descending() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        n = int(rng.integers(0, 60))
        w = rng.choice([-2.5, -0.0, 0.0, 1e-30, 0.5, 0.5, 3.0, 1e30], n).astype(np.float32)
        w[: n // 3] = rng.normal(size=n // 3).astype(np.float32)
        idx = np.sort(rng.choice(max(n, 1), min(n, 40), replace=False)) if n else np.zeros(0, int)
        want = idx[np.argsort(-w[idx], kind="stable")]
        assert kernels._by_weight(w, idx.astype(np.int64)).tolist() == want.tolist()


def test_placed() -> None:
    """The numpy definition: drop the row; keep a full list whose last beats it; else insert it
    after the rows of an equal key and cut to size."""
    rng = np.random.default_rng(8)
    for _ in range(300):
        key = rng.choice([0.0, 1.0, 2.0, 2.0, 3.0, 5.0], 30) + rng.choice([0, 0, 0.25], 30)
        size = int(rng.integers(1, 8))
        pool = rng.choice(30, int(rng.integers(0, size + 1)), replace=False)
        ranked = pool[np.argsort(-key[pool], kind="stable")].astype(np.int32)
        row = (
            int(rng.choice(ranked)) if len(ranked) and rng.random() < 0.4 else int(rng.integers(30))
        )
        key[row] += rng.choice([0.0, 1.0, 2.5])  # a written row's key grows
        t = ranked[ranked != row]
        if len(t) >= size and key[row] <= key[t[-1]]:
            want = t
        else:
            at = int(np.searchsorted(-key[t], -key[row], side="right"))
            want = np.insert(t, at, row)[:size]
        got = kernels.placed(ranked, key, row, size)
        assert got.dtype == np.int32 and got.tolist() == want.tolist()


def test_learner_gradients_is_bpr_gradient_of_each_learners_clipped_features_and_its_step() -> None:
    rng = np.random.default_rng(7)
    f = len(FEATURES)
    rows_of = [np.sort(rng.choice(50, n, replace=False)) for n in (6, 1, 9, 4)]
    start = np.concatenate([[0], np.cumsum([len(x) for x in rows_of])])
    r = np.concatenate(rows_of).astype(np.int64)
    raw = (rng.random((len(r), f)) * 3).astype(np.float32)  # some above their divisors
    scales = (rng.random((4, f)) + 0.5).astype(np.float32)
    weights = rng.normal(size=(4, f)).astype(np.float32)
    taken = np.asarray([x[2] if len(x) > 2 else x[0] for x in rows_of], np.int64)
    # negatives in draw order (not sorted); learner 1 has none
    negs = [rng.permutation(x[x != t])[:5] for x, t in zip(rows_of, taken, strict=True)]
    negs[1] = negs[1][:0]
    neg_start = np.concatenate([[0], np.cumsum([len(x) for x in negs])])
    deltas = rng.normal(size=(4, f)) / 10
    got, steps = kernels.learner_gradients(
        raw, start, r, taken, np.concatenate(negs).astype(np.int64), neg_start, scales, weights,
        deltas, 0.05, 0.01,
    )  # fmt: skip
    assert steps.dtype == np.float32
    for j, rows in enumerate(rows_of):
        feats = np.minimum(raw[start[j] : start[j + 1]] / scales[j], 1.0)
        if not len(negs[j]):
            np.testing.assert_array_equal(got[j], 0.0)
            np.testing.assert_array_equal(steps[j], 0.0)
            continue
        want = kernels.bpr_gradient(
            weights[j], feats[np.flatnonzero(rows == taken[j])[0]],
            feats[np.searchsorted(rows, negs[j])],
        )  # fmt: skip
        np.testing.assert_array_equal(got[j], want)
        # the user's step, as learner.user_step takes it
        np.testing.assert_array_equal(steps[j], user_step(deltas[j], want, 0.05, 0.01))


def reference_terms(contrib: np.ndarray, cf_seed: np.ndarray, anchor: np.ndarray) -> list[int]:
    out = []
    for n, ts in enumerate(np.argsort(-contrib, axis=1, kind="stable").tolist()):
        chosen = -1
        for t in ts:
            if contrib[n, t] <= 0:
                break
            if (t == 2 and cf_seed[n] < 0) or (t in (0, 1) and anchor[n] < 0):
                continue
            chosen = t
            break
        out.append(chosen)
    return out


def test_reason_terms_tries_terms_by_contribution_as_a_stable_argsort() -> None:
    rng = np.random.default_rng(3)
    f = len(FEATURES)
    # ties (a coarse grid), zeros of both signs, negatives, a row with nothing positive
    contrib = (np.round(rng.normal(size=(400, f)) * 2) / 2).astype(np.float32)
    contrib[5] = -1.0
    contrib[6] = 0.0
    contrib[7, :] = -0.0
    contrib[7, 3] = 0.5
    cf_seed = rng.integers(-1, 3, 400)
    anchor = rng.integers(-1, 3, 400)
    got = kernels.reason_terms(contrib, cf_seed, anchor).tolist()
    assert got == reference_terms(contrib, cf_seed, anchor)
    assert got[5] == got[6] == -1 and got[7] == 3
    assert {2, 0, 1} & set(got) and -1 in got


def one_link(owner: str, to: str, weight: float, away_ms: int = 0) -> dict[str, np.ndarray]:
    """Items "seed", "linked" and "other"; ``owner``'s published row holds ``to`` at
    ``weight`` (every count 1), a user liked "seed" and nothing else, scored ``away_ms`` after
    that: per item, the features of its pair."""
    cat = Catalog(DIMS, COOC, CatalogParams(seen_bits=BITS))
    ids = ["seed", "linked", "other"]
    rng = np.random.default_rng(5)
    for i in ids:
        cat.upsert(i, {"text": rng.normal(size=8).astype(np.float32)}, published_at=None)
    h = {i: item_hash(i) for i in ids}
    for i in ids:
        link = (np.asarray([h[to]], np.uint64), np.asarray([weight], np.float32))
        cat.set_side(h[i], ItemRow(NO_TREND, 1.0, *link) if i == owner else ItemRow(NO_TREND, 1.0))
    p = StateParams(event_weights=WEIGHTS, half_life_ms=48 * HOUR, seen_filter_bits=BITS)
    st = apply_event(
        UserState(), item=h["seed"], item_digest16=item_digest("seed"),
        item_vectors={"text": cat.vectors(cat.row_of[h["seed"]])["text"]}, event_type="like",
        ts=NOW, value=None, params=p,
    )  # fmt: skip
    users = resolve_users(cat, [st], SP, now_ms=NOW + away_ms)
    pairs = Pairs.whole(1, cat.live_rows())
    sc = score(cat, users, pairs, NOW + away_ms, SP, top_n=COOC.top_n,
               history_top_n=COOC.history_top_n)  # fmt: skip
    return {i: sc.features[int(np.flatnonzero(pairs.r == cat.row_of[h[i]])[0])] for i in ids}


@pytest.mark.parametrize("weight", [1.0, 50.0])
def test_cf_counts_the_co_occurrence_behind_it(weight: float) -> None:
    """A user whose one seed co-occurred with one item once gets that item's cf at a half of
    the user's scale (one co-occurrence: as likely chance as association), not the full 1 that
    dividing by the user's best alone gives; fifty co-occurrences count for nearly all of it."""
    got = one_link("seed", "linked", weight)
    cf = FEATURES.index("cf")
    assert got["linked"][cf] == pytest.approx(weight / (weight + 1))
    assert got["other"][cf] == 0.0


@pytest.mark.parametrize("weight", [1.0, 50.0])
def test_history_counts_the_co_occurrence_behind_it(weight: float) -> None:
    """As cf: an item whose row links it once to the one item the user has seen gets history
    at a half of the user's scale, not the full 1 of the user's best alone; fifty
    co-occurrences count for nearly all of it."""
    got = one_link("linked", "seed", weight)
    hist = FEATURES.index("history")
    assert got["linked"][hist] == pytest.approx(weight / (weight + 1))
    assert got["other"][hist] == 0.0


@pytest.mark.parametrize("half_lives", [1, 3])
def test_short_term_features_fade_while_the_user_is_away(half_lives: int) -> None:
    """Scored ``half_lives`` session half-lives after the user's one like, the short-term
    features (recent: cosine with the latest items; cf: their co-occurrences) count 0.5 **
    half_lives of what they count at once; the long-term ones (content, history) do not
    change."""
    now = one_link("seed", "linked", 3.0)
    later = one_link("seed", "linked", 3.0, away_ms=int(half_lives * SP.session_half_life_ms))
    recent, cf = FEATURES.index("recent"), FEATURES.index("cf")
    for i in ("linked", "other"):
        assert now[i][recent] != 0.0
        assert later[i][recent] == pytest.approx(now[i][recent] * 0.5**half_lives, rel=1e-5)
        for f in ("content", "history"):
            assert later[i][FEATURES.index(f)] == pytest.approx(now[i][FEATURES.index(f)])
    assert now["linked"][cf] == pytest.approx(0.75)
    assert later["linked"][cf] == pytest.approx(0.75 * 0.5**half_lives, rel=1e-5)


@pytest.mark.parametrize("n", [1, 7, 64, 1000])
def test_the_fenwick_tree_draws_as_the_cumulative_sums_do(n: int) -> None:
    """After a build and random updates (counts only grow, some rows stay 0), the tree's
    total is the values' sum and each draw is numpy's searchsorted over their cumulative
    sums: index i with probability values[i] / total, never one whose value is 0."""
    rng = np.random.default_rng(n)
    values = np.where(rng.random(n) < 0.3, 0.0, rng.integers(1, 50, n).astype(np.float64))
    tree = kernels.fenwick_build(values)
    for _ in range(3 * n):
        i = int(rng.integers(n))
        if values[i]:
            d = float(rng.integers(1, 5))
            values[i] += d
            kernels.fenwick_add(tree, i, d)
    total = kernels.fenwick_total(tree)
    assert total == pytest.approx(values.sum())
    if not total:
        return
    us = np.concatenate([rng.random(500) * total, np.cumsum(values)[values > 0][:-1]])
    got = kernels.fenwick_find(tree, us)
    np.testing.assert_array_equal(got, np.searchsorted(np.cumsum(values), us, side="right"))
    assert np.all(values[got] > 0)
