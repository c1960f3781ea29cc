"""Compiled loops (numba) for the few places where numpy would need many small calls or a
gathered copy of the catalog: dot products of catalog rows with users' vectors, and Bloom
filter tests of catalog rows. Compiled once per machine into numba's cache (``cache=True``).

Each has the obvious numpy definition in its docstring; tests/unit/test_kernels.py holds
them to it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

N_FEATURES = 8  # ranking.scoring.FEATURES, in that order
LOG2 = float(np.log(2.0))


@njit(cache=True, fastmath=True)
def dots_first_rows(mat: np.ndarray, n: int, vecs: np.ndarray) -> np.ndarray:  # pragma: no cover
    """float32[k, n]: ``vecs @ mat[:n].T``, reading each row once for all k vectors."""
    k, d = vecs.shape
    out = np.empty((k, n), np.float32)
    for r in range(n):
        row = mat[r]
        for j in range(k):
            v = vecs[j]
            acc = np.float32(0.0)
            for x in range(d):
                acc += row[x] * v[x]
            out[j, r] = acc
    return out


@njit(cache=True, fastmath=True)
def dots_pairs(
    mat: np.ndarray, rows: np.ndarray, vecs: np.ndarray, which: np.ndarray
) -> np.ndarray:  # pragma: no cover
    """float32[P]: ``(mat[rows] * vecs[which]).sum(1)``, without the gathered copies."""
    p_n = len(rows)
    d = mat.shape[1]
    out = np.empty(p_n, np.float32)
    for p in range(p_n):
        row = mat[rows[p]]
        v = vecs[which[p]]
        acc = np.float32(0.0)
        for x in range(d):
            acc += row[x] * v[x]
        out[p] = acc
    return out


@njit(cache=True)
def bloom_rows(
    flags: np.ndarray, pos: np.ndarray, rows: np.ndarray
) -> np.ndarray:  # pragma: no cover
    """bool[len(rows)]: whether every Bloom position of each row is set,
    ``flags[pos[rows]].all(1)``."""
    out = np.empty(len(rows), np.bool_)
    h = pos.shape[1]
    for i in range(len(rows)):
        p = pos[rows[i]]
        ok = True
        for j in range(h):
            if not flags[p[j]]:
                ok = False
                break
        out[i] = ok
    return out


@njit(cache=True)
def bloom_first_rows(flags: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:  # pragma: no cover
    """int64 indices of the first n rows whose Bloom positions are all set."""
    out = np.empty(n, np.int64)
    m = 0
    h = pos.shape[1]
    for r in range(n):
        p = pos[r]
        ok = True
        for j in range(h):
            if not flags[p[j]]:
                ok = False
                break
        if ok:
            out[m] = r
            m += 1
    return out[:m]


@njit(cache=True)
def column_sums(dense: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:  # pragma: no cover
    """float64[n]: ``dense[cols, :n].sum(0)`` (the rows ``cols`` of a row-major matrix)."""
    out = np.zeros(n, np.float64)
    for c in cols:
        row = dense[c]
        for r in range(n):
            out[r] += row[r]
    return out


@njit(cache=True)
def _softplus(x: float) -> float:  # pragma: no cover
    """log(1 + e^x), stable: max(x, 0) + log1p(e^-|x|); below -37, e^x (log1p(y) is y to the
    last bit for y < 2^-53: one call fewer for the many items long quiet); below -104, 0: what
    e^x rounds to in the float32 features it is stored in (under half the least float32)."""
    if x < -104.0:
        return 0.0
    if x < -37.0:
        return np.exp(x)
    ax = x if x > 0.0 else -x
    return (x if x > 0.0 else 0.0) + np.log1p(np.exp(-ax))


@njit(cache=True)
def _in_filter(flags: np.ndarray, b: int, pos: np.ndarray, row: int) -> bool:  # pragma: no cover
    """Whether every Bloom position of ``row`` is set in user b's filter (the filter's bytes,
    flags[b], bit p at byte p >> 3, bit p & 7: ranking.seen)."""
    for j in range(pos.shape[1]):
        q = pos[row, j]
        if not (flags[b, q >> 3] >> (q & 7)) & 1:
            return False
    return True


# no "nnan"/"ninf": items without a publication time are NaN, excluded pairs -inf
@njit(cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def score_pairs(
    codes,
    code_scale,
    midx,
    mw,  # catalog: tuples of int8[n_m, d_m] and float32[n_m] (unit rows as codes * scale),
    # int64[M, cap] (-1: none), the modalities' weights
    inv_cf,
    inv_hist,
    trend,
    hot,  # float64[cap]: log-space decayed popularity, hours and minutes (item_side)
    pub,  # float64[cap]: 1 / max(count, 1) ** cf_beta, ** history_beta
    log_count,  # float64[cap]: log1p of the items' interaction counts
    slot,
    nb,
    nb_w,
    inv_alpha,  # float64[cap]: 1 / max(count, 1) ** history_alpha (a neighbour's weight)
    nb_len,  # the item side's published rows
    bloom_pos,
    dense,
    use_dense,
    n_cat,  # int64[cap, H]; float32[cap, cap] "history" (transposed)
    interests,
    ihas,  # tuple of float32[B, d_m] unit long-term interests, bool[M, B]
    seed_start,
    seed_row,
    seed_a,  # the users' seeds (latest positive items), by user
    flags,
    fhas,  # bool[B, bits] seen filters, bool[B]
    ex_start,
    ex_row,  # the users' exact exclusions, by user
    weights,  # float32[B, F]
    session,  # float32[B]: what the short-term features (recent, cf) count for
    u,
    r,
    start,  # the pairs: user, row (sorted within a user), int64[B + 1]
    inv_seed,
    now,
    trend_k,
    hot_k,
    fresh_k,
    top_n,
    hist_n,  # inv_seed: 1 / max(count, 1) ** cf_alpha
    pair_at,  # int64[cap], all -1: scratch (a row's pair index within the user's), left all -1
    pop_key,  # float64[3]: the (now, trend_k, hot_k) the cached popularities are for
    pop_trend,
    pop_hot,  # float32[cap]: cached popularity and hot features of rows (pop_ok), at pop_key
    pop_ok,  # bool[cap]: which rows' are cached (the catalog clears a row's when it changes)
    listing,  # bool[B]: users scored for a list, whose excluded pairs' content is not computed
):  # pragma: no cover
    """The features (raw and scaled), scores and divisors of ranking.scoring, over the pairs
    (see its module doc; tests/unit/test_kernels.py checks it against plain Python). Returns
    raw float32[P, F], scaled float32[P, F], scores float64[P] (excluded: -inf), the users'
    divisors float32[B, F] (F = N_FEATURES) and, per pair, the seed (index into seed_row)
    contributing most to its cf (-1: none). For a ``listing`` user the content and recent
    features of excluded pairs (score -inf: never listed) are left 0, the rest as for any
    user (the divisors take every pair, excluded or not)."""
    n_mod = len(codes)
    n_users = len(start) - 1
    n_pairs = len(r)
    raw = np.zeros((n_pairs, N_FEATURES), np.float32)
    feats = np.zeros((n_pairs, N_FEATURES), np.float32)
    scores = np.zeros(n_pairs, np.float64)
    scales = np.ones((n_users, N_FEATURES), np.float32)
    best_seed = np.full(n_pairs, -1, np.int64)
    best_term = np.zeros(n_pairs, np.float64)
    # the popularity features depend on the row and the time only: kept for the rows scored at
    # this time already (by another user of the call, or a call at the same time)
    if pop_key[0] != now or pop_key[1] != trend_k or pop_key[2] != hot_k:
        pop_ok[:] = False
        pop_key[0], pop_key[1], pop_key[2] = now, trend_k, hot_k
    excluded = np.zeros(n_pairs, np.bool_)
    for b in range(n_users):
        lo, hi = start[b], start[b + 1]
        if hi == lo:
            continue
        s0, s1 = seed_start[b], seed_start[b + 1]
        # the pairs never listed: in the user's seen filter or exact exclusions (pair_at: a
        # row's pair index within the user's, set here for the cf below)
        for p in range(lo, hi):
            pair_at[r[p]] = p
            if fhas[b] and _in_filter(flags, b, bloom_pos, r[p]):
                excluded[p] = True
        for x in range(ex_start[b], ex_start[b + 1]):
            p = pair_at[ex_row[x]]
            if p >= 0:
                excluded[p] = True
        skip = listing[b]
        # content and recent: cosines with the long- and short-term interests
        for m in range(n_mod):
            mat = codes[m]
            msc = code_scale[m]
            d = mat.shape[1]
            wm = mw[m]
            short = np.zeros(d, np.float32)
            any_short = False
            for s in range(s0, s1):
                si = midx[m, seed_row[s]]
                if si >= 0:
                    any_short = True
                    a = np.float32(seed_a[s]) * msc[si]
                    for x in range(d):
                        short[x] += a * np.float32(mat[si, x])
            if any_short:
                norm = np.float32(0.0)
                for x in range(d):
                    norm += short[x] * short[x]
                norm = np.sqrt(norm)
                if norm > 1e-9:
                    for x in range(d):
                        short[x] /= norm
                else:
                    any_short = False
            long_ok = ihas[m, b]
            if not long_ok and not any_short:
                continue
            iv = interests[m][b]
            for p in range(lo, hi):
                if skip and excluded[p]:
                    continue
                vi = midx[m, r[p]]
                if vi < 0:  # the item lacks the modality: no evidence of likeness (cosine 0)
                    if long_ok:
                        feats[p, 0] += wm
                    if any_short:
                        feats[p, 1] += wm
                    continue
                dl = np.float32(0.0)
                ds = np.float32(0.0)
                for x in range(d):
                    v = np.float32(mat[vi, x])
                    dl += v * iv[x]
                    ds += v * short[x]
                dl *= msc[vi]
                ds *= msc[vi]
                if long_ok:
                    raw[p, 0] += wm * dl
                    feats[p, 0] += wm  # the weight sum so far (divided below)
                if any_short:
                    raw[p, 1] += wm * ds
                    feats[p, 1] += wm
        for p in range(lo, hi):
            for j in range(2):
                if feats[p, j] > 0:
                    raw[p, j] /= feats[p, j]
                feats[p, j] = 0.0
        # cf: the seeds' published neighbours, found among the user's rows through pair_at;
        # cf_mass: the co-occurrence weight behind all of it (recency-weighted, not normalised
        # by counts), its confidence (below)
        cf_mass = 0.0
        for s in range(s0, s1):
            sr = seed_row[s]
            sl = slot[sr]
            if sl < 0:
                continue
            scale = seed_a[s] * inv_seed[sr]
            m_n = min(nb_len[sl], top_n)
            for e in range(m_n):
                p = pair_at[nb[sl, e]]
                if p >= 0:
                    t = nb_w[sl, e] * scale
                    raw[p, 2] += t
                    cf_mass += nb_w[sl, e] * seed_a[s]
                    if t > best_term[p]:
                        best_term[p] = t
                        best_seed[p] = s
        # history: every row the user's filter holds (its column of the transposed rows,
        # summed over the catalog in one contiguous pass), or the candidates' own rows
        if fhas[b]:
            # the dense pass costs the catalog's rows, the row pass each pair's entries
            if use_dense and (hi - lo) * hist_n > 4 * n_cat:
                hsum = np.zeros(n_cat, np.float32)
                for t in range(n_cat):
                    if _in_filter(flags, b, bloom_pos, t):
                        col = dense[t]
                        ia = np.float32(inv_alpha[t])
                        for x in range(n_cat):
                            hsum[x] += col[x] * ia
                for p in range(lo, hi):
                    raw[p, 5] = hsum[r[p]]
            else:
                for p in range(lo, hi):
                    sl = slot[r[p]]
                    if sl < 0:
                        continue
                    acc = 0.0
                    for e in range(min(nb_len[sl], hist_n)):
                        t = nb[sl, e]
                        if _in_filter(flags, b, bloom_pos, t):
                            acc += nb_w[sl, e] * inv_alpha[t]
                    raw[p, 5] = acc
        mx2 = 0.0
        mx3 = 0.0
        mx5 = 0.0
        hist_mass = 0.0
        mx6 = 0.0
        mx7 = 0.0
        for p in range(lo, hi):
            row = r[p]
            raw[p, 2] = raw[p, 2] * inv_cf[row]
            if not pop_ok[row]:
                pop_trend[row] = _softplus(trend[row] - now * trend_k)
                pop_hot[row] = _softplus(hot[row] - now * hot_k)
                pop_ok[row] = True
            raw[p, 3] = pop_trend[row]
            raw[p, 7] = pop_hot[row]
            if not np.isnan(pub[row]):
                age = now - pub[row]
                raw[p, 4] = np.exp(-(age if age > 0.0 else 0.0) * fresh_k)
            hist_mass += raw[p, 5]
            raw[p, 5] = raw[p, 5] * inv_hist[row]
            raw[p, 6] = log_count[row]
            mx2 = max(mx2, raw[p, 2])
            mx3 = max(mx3, raw[p, 3])
            mx5 = max(mx5, raw[p, 5])
            mx6 = max(mx6, raw[p, 6])
            mx7 = max(mx7, raw[p, 7])
        if mx2 > 0:
            # the user's best counts for m / (m + 1) of itself, m all the co-occurrence weight
            # behind the user's cf: one co-occurrence is as likely chance as association (a
            # half), a catalog's worth is not; a user with thin evidence keeps it thin
            scales[b, 2] = mx2 * (cf_mass + 1.0) / cf_mass
        # popularity: never divided by less than one interaction's worth (log 2), so a
        # catalog gone quiet does not blow a trace of popularity up to 1 (nor, in the learner,
        # a later burst to thousands: the same divisors scale the next event's features)
        scales[b, 3] = max(mx3, LOG2)
        if mx5 > 0:
            # as cf's: m all the history behind the user's pairs (each co-occurrence with a
            # seen item weighed as history weighs it, before the candidate's own count)
            scales[b, 5] = mx5 * (hist_mass + 1.0) / hist_mass
        if mx6 > 0:
            scales[b, 6] = mx6
        scales[b, 7] = max(mx7, LOG2)
        # the short-term features fade while the user is away (after the divisors: a faded
        # feature is a weaker one, not one scaled back up to the user's maximum)
        f = session[b]
        if f != 1.0:
            for p in range(lo, hi):
                raw[p, 1] *= f
                raw[p, 2] *= f
        for p in range(lo, hi):
            for j in range(N_FEATURES):
                feats[p, j] = raw[p, j] / scales[b, j]
        weigh(feats, weights[b], lo, hi, scores)
        for p in range(lo, hi):
            if excluded[p]:
                scores[p] = -np.inf
            pair_at[r[p]] = -1
    return raw, feats, scores, scales, best_seed


@njit(cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def weigh(feats, w, lo, hi, scores):  # pragma: no cover
    """scores[p] = feats[p] . w (float64 sums) for the pairs lo:hi, excluded pairs (-inf)
    kept excluded: score_pairs' scores, and again under a user's new weights (step.py)."""
    for p in range(lo, hi):
        if scores[p] == -np.inf:
            continue
        acc = 0.0
        for j in range(N_FEATURES):
            acc += feats[p, j] * w[j]
        scores[p] = acc


@njit(cache=True)
def top_pairs(scores, hashes, r, start, ks):  # pragma: no cover
    """Each user's ks[b] best finite-score pairs, best first, ties by the row's item hash:
    indices into the pairs (-1 padded), int64[B, max(ks)]."""
    n_users = len(start) - 1
    kmax = 0
    for b in range(n_users):
        kmax = max(kmax, ks[b])
    out = np.full((n_users, kmax), -1, np.int64)
    for b in range(n_users):
        k = ks[b]
        n = 0
        for p in range(start[b], start[b + 1]):
            s = scores[p]
            if not np.isfinite(s):
                continue
            if n == k and k > 0 and scores[out[b, k - 1]] > s:
                continue  # below the k-th already (ties need the hashes: below)
            h = hashes[r[p]]
            # insertion into the sorted top list (score desc, hash asc)
            j = n
            while j > 0:
                q = out[b, j - 1]
                sq = scores[q]
                if sq > s or (sq == s and hashes[r[q]] < h):
                    break
                if j < k:
                    out[b, j] = q
                j -= 1
            if j < k:
                out[b, j] = p
                if n < k:
                    n += 1
    return out


@njit(cache=True)
def add_to_row(nb, w, h, x):  # pragma: no cover
    """w[i] += float32(x) where nb[i] == h (``nb`` sorted): merge_row's sum for one pair of a
    neighbour already in the row, in place. Returns whether it was there."""
    i = np.searchsorted(nb, h)
    if i < len(nb) and nb[i] == h:
        w[i] += np.float32(x)
        return True
    return False


@njit(cache=True)
def merge_row(nb, w, add_nb, add_w):  # pragma: no cover
    """An item-side row (neighbour hashes, sorted, and weights) plus updates (sorted, unique):
    the weights of neighbours in both are summed. Returns the new (nb, w)."""
    n, m = len(nb), len(add_nb)
    out_nb = np.empty(n + m, np.uint64)
    out_w = np.empty(n + m, np.float32)
    i = j = k = 0
    while i < n or j < m:
        if j >= m or (i < n and nb[i] < add_nb[j]):
            out_nb[k] = nb[i]
            out_w[k] = w[i]
            i += 1
        elif i >= n or add_nb[j] < nb[i]:
            out_nb[k] = add_nb[j]
            out_w[k] = add_w[j]
            j += 1
        else:
            out_nb[k] = nb[i]
            out_w[k] = w[i] + add_w[j]
            i += 1
            j += 1
        k += 1
    return out_nb[:k], out_w[:k]


@njit(cache=True)
def fenwick_build(values):  # pragma: no cover
    """A Fenwick (binary indexed) tree of ``values``: float64[n + 1], node i holding the sum
    of values (i - (i & -i), i], so a prefix sum, an update and a draw by value each cost
    O(log n)."""
    n = len(values)
    tree = np.zeros(n + 1, np.float64)
    for i in range(1, n + 1):
        tree[i] += values[i - 1]
        j = i + (i & -i)
        if j <= n:
            tree[j] += tree[i]
    return tree


@njit(cache=True)
def fenwick_add(tree, i, delta):  # pragma: no cover
    """values[i] += delta."""
    n = len(tree) - 1
    j = i + 1
    while j <= n:
        tree[j] += delta
        j += j & -j


@njit(cache=True)
def fenwick_total(tree):  # pragma: no cover
    """The sum of all values."""
    s = 0.0
    j = len(tree) - 1
    while j > 0:
        s += tree[j]
        j -= j & -j
    return s


@njit(cache=True)
def fenwick_find(tree, us):  # pragma: no cover
    """int64 per u in ``us`` (each in [0, total)): the first index whose prefix sum, itself
    included, exceeds u, so an index is found with probability value / total."""
    n = len(tree) - 1
    top = 1
    while top * 2 <= n:
        top *= 2
    out = np.empty(len(us), np.int64)
    for k in range(len(us)):
        u = us[k]
        pos = 0
        step = top
        while step > 0:
            nxt = pos + step
            if nxt <= n and tree[nxt] <= u:
                pos = nxt
                u -= tree[nxt]
            step //= 2
        out[k] = min(pos, n - 1)
    return out


@njit(cache=True)
def negative_rows(
    draws,
    n_uni,
    n_pop,
    modulus,
    size,
    taken,
    live,
    count_tree,
    flags,
    b,
    has_filter,
    pos,
    ex_row,
):  # pragma: no cover
    """The learning step's negatives (ranking/step.py ``_negative_rows``) from ``draws``
    (int64, uniform in [0, modulus)): the first 2 n_uni as rows drawn uniformly, the rest as
    rows drawn in proportion to their counts (``count_tree``, a Fenwick tree); of each kind,
    the first n_uni / n_pop that are live, not ``taken``, not in user ``b``'s seen filter
    (``flags``, when ``has_filter``) and not in ``ex_row``, the uniform ones first."""
    n_draw = 2 * n_uni
    rows = np.empty(len(draws), np.int64)
    for k in range(n_draw):
        rows[k] = draws[k] % size
    if len(draws) > n_draw:
        total = fenwick_total(count_tree)
        if total > 0:
            us = np.empty(len(draws) - n_draw, np.float64)
            for k in range(len(us)):
                us[k] = draws[n_draw + k] / modulus * total
            found = fenwick_find(count_tree, us)
            for k in range(len(us)):
                rows[n_draw + k] = min(found[k], size - 1)
        else:
            rows = rows[:n_draw]
    out = np.empty(n_uni + n_pop, np.int64)
    m = 0
    for lo, hi, want in ((0, n_draw, n_uni), (n_draw, len(rows), n_pop)):
        got = 0
        for k in range(lo, hi):
            if got == want:
                break
            r = rows[k]
            if r != taken and live[r] and not (has_filter and _in_filter(flags, b, pos, r)):
                if not np.any(ex_row == r):
                    out[m] = r
                    m += 1
                    got += 1
    return out[:m]


@njit(cache=True)
def _slot(keys, h):  # pragma: no cover
    """Where item hash ``h`` is, or would go, in an open-addressing table (linear probing;
    ``len(keys)`` a power of two; item hashes are uniform, so their low bits index it)."""
    mask = len(keys) - 1
    return np.int64(h & np.uint64(mask))


@njit(cache=True)
def _lookup(keys, rows, h):  # pragma: no cover
    """The row of item hash ``h`` in the table (keys, rows), or -1 (rows: -1 where empty)."""
    mask = len(keys) - 1
    i = _slot(keys, h)
    while True:
        r = rows[i]
        if r < 0:
            return -1
        if keys[i] == h:
            return r
        i = (i + 1) & mask


@njit(cache=True)
def table_put(keys, rows, h, row):  # pragma: no cover
    """Set the row of item hash ``h`` in the table (which has an empty slot)."""
    mask = len(keys) - 1
    i = _slot(keys, h)
    while rows[i] >= 0 and keys[i] != h:
        i = (i + 1) & mask
    keys[i] = h
    rows[i] = row


@njit(cache=True)
def table_build(hashes, size):  # pragma: no cover
    """A table of ``size`` slots (a power of two, > len(hashes)) of hashes[i] -> row i."""
    keys = np.zeros(size, np.uint64)
    rows = np.full(size, -1, np.int64)
    for i in range(len(hashes)):
        table_put(keys, rows, hashes[i], i)
    return keys, rows


@njit(cache=True)
def _by_weight(w, idx):  # pragma: no cover
    """``idx[np.argsort(-w[idx], kind="stable")]`` for ascending ``idx`` (< 2**32) and
    float32 ``w`` (no NaN): one sort of int64 keys, the weight's bits made to order
    descending above the index."""
    bits = w.view(np.uint32)
    keys = np.empty(len(idx), np.uint64)
    for j in range(len(idx)):
        b = np.uint64(bits[idx[j]])
        # IEEE bits to an unsigned order of the values (negatives reversed), then descending
        up = b ^ np.uint64(0xFFFFFFFF) if b & np.uint64(0x80000000) else b | np.uint64(0x80000000)
        if up == np.uint64(0x7FFFFFFF):  # -0.0 sorts with 0.0, as the comparison does
            up = np.uint64(0x80000000)
        keys[j] = ((np.uint64(0xFFFFFFFF) - up) << np.uint64(32)) | np.uint64(idx[j])
    keys.sort()
    out = np.empty(len(idx), np.int64)
    for j in range(len(idx)):
        out[j] = np.int64(keys[j] & np.uint64(0xFFFFFFFF))
    return out


@njit(cache=True)
def publish_row(
    nb,
    w,
    top,
    keys,
    rows,
    out_nb,
    out_w,
    old_len,
    dense,
    use_dense,
    row,
    hist_n,
):  # pragma: no cover
    """An item-side row's published form: its ``top`` strongest entries (ties by neighbour
    hash), each resolved to a catalog row (through the hash table ``keys``, ``rows``; unknown
    neighbours skipped), with its raw weight, written over the
    slot ``out_nb``/``out_w`` (which held ``old_len`` entries). With a dense history matrix
    (``use_dense``), column ``row`` is kept equal to the slot's first
    ``hist_n`` entries. Returns how many were written."""
    if use_dense:
        for e in range(min(old_len, hist_n)):
            dense[out_nb[e], row] = 0.0
    idx = np.arange(len(w))
    if len(w) > top and top > 0:  # only what can be published is sorted
        thr = -np.partition(-w, top - 1)[top - 1]
        idx = np.flatnonzero(w >= thr)  # ascending: ties keep nb's order below
    order = _by_weight(w, idx)
    m = 0
    for e in range(min(top, len(order))):
        i = order[e]
        r = _lookup(keys, rows, nb[i])
        if r < 0:
            continue
        out_nb[m] = r
        out_w[m] = w[i]
        m += 1
    if use_dense:
        for e in range(min(m, hist_n)):
            dense[out_nb[e], row] = out_w[e]
    return m


@njit(cache=True)
def _ahead(out_nb, out_w, hashes, a, b):  # pragma: no cover
    """Whether published entry a goes before entry b: a larger weight, ties by item hash."""
    wa, wb = out_w[a], out_w[b]
    return wa > wb or (wa == wb and hashes[out_nb[a]] < hashes[out_nb[b]])


@njit(cache=True)
def publish_changes(
    nb, w, changed, top, keys, rows, out_nb, out_w, m, dense, use_dense, row, hashes
):  # pragma: no cover
    """``publish_row``'s result for a row of which only the neighbours ``changed`` (hashes)
    gained weight since its slot was published whole, found with work in the changes rather
    than in the row: co-occurrence weights only grow, so the published ``top`` entries of the
    new row are the old ones with the changed entries moved up, or let in over the last.
    For a slot that holds every entry of the row's top (none skipped as unknown), whose first
    entries are all the dense history's (``top`` = its ``hist_n``). Returns the new length, or
    -1, touching nothing, where a changed neighbour is unknown, gone from the row, or lighter
    than published (then ``publish_row`` does it whole)."""
    crow = np.empty(len(changed), np.int64)
    cw = np.empty(len(changed), np.float32)
    for c in range(len(changed)):
        i = np.searchsorted(nb, changed[c])
        if i >= len(nb) or nb[i] != changed[c]:
            return -1
        r = _lookup(keys, rows, changed[c])
        if r < 0:
            return -1
        crow[c] = r
        cw[c] = w[i]
        for e in range(m):
            if out_nb[e] == r:
                if w[i] < out_w[e]:
                    return -1
                break
    for c in range(len(changed)):
        e = -1
        for q in range(m):  # positions move as earlier changes move up
            if out_nb[q] == crow[c]:
                e = q
                break
        if e < 0:
            if m < top:
                e = m
                m += 1
            else:
                last = m - 1
                lw = out_w[last]
                if not (cw[c] > lw or (cw[c] == lw and hashes[crow[c]] < hashes[out_nb[last]])):
                    continue
                if use_dense:
                    dense[out_nb[last], row] = 0.0
                e = last
            out_nb[e] = crow[c]
        out_w[e] = cw[c]
        if use_dense:
            dense[crow[c], row] = cw[c]
        while e > 0 and _ahead(out_nb, out_w, hashes, e, e - 1):
            out_nb[e], out_nb[e - 1] = out_nb[e - 1], out_nb[e]
            out_w[e], out_w[e - 1] = out_w[e - 1], out_w[e]
            e -= 1
    return m


@njit(cache=True)
def quantize(v):  # pragma: no cover
    """int8 codes and float32 scale of a float32 vector: ``scale = float32(max|v| / 127)``,
    ``codes = clip(rint(v / scale), -127, 127)`` (all zeros, scale 0, for a zero vector)."""
    top = 0.0
    for x in v:
        a = abs(x)
        if a > top:
            top = a
    q = np.zeros(len(v), np.int8)
    scale = np.float32(top / 127.0)
    if scale == 0:
        return q, np.float32(0.0)
    for i in range(len(v)):
        c = np.rint(v[i] / scale)
        if c > 127:
            c = 127
        elif c < -127:
            c = -127
        q[i] = np.int8(c)
    return q, scale


@njit(cache=True)
def fold_interest(old, decay, w, vec):  # pragma: no cover
    """A user's interest after an event, float32[d]: ``old * decay + w * vec`` as ``quantize``
    codes times their scale (what the state stores). All float32 and in numpy's order of
    operations, so it equals ``dequantize(quantize(old * decay + w * vec))``."""
    n = len(old)
    v = np.empty(n, np.float32)
    for i in range(n):
        v[i] = old[i] * decay + w * vec[i]
    q, scale = quantize(v)
    out = np.empty(n, np.float32)
    for i in range(n):
        out[i] = np.float32(q[i]) * scale
    return out


@njit(cache=True)
def filter_gaps(bits):  # pragma: no cover
    """uint8[]: a Bloom filter's set bits (bit k of byte i is position 8 i + k) as the gaps
    between them (the first: its position; then each position - the one before - 1), each a
    LEB128 varint (7 bits a byte, low first; the top bit: more follow)."""
    out = np.empty(3 * 8 * len(bits), np.uint8)  # 3 bytes hold any gap of a 64 KB filter
    n = 0
    prev = -1
    for i in range(len(bits)):
        byte = bits[i]
        if byte == 0:
            continue
        for k in range(8):
            if (byte >> k) & 1:
                pos = 8 * i + k
                g = pos - prev - 1
                prev = pos
                while g >= 128:
                    out[n] = np.uint8((g & 127) | 128)
                    n += 1
                    g >>= 7
                out[n] = np.uint8(g)
                n += 1
    return out[:n].copy()


@njit(cache=True)
def filter_from_gaps(gaps, size):  # pragma: no cover
    """The uint8[size] Bloom filter of ``filter_gaps``; None when the gaps run past its end or
    a varint is cut short (a corrupt state)."""
    bits = np.zeros(size, np.uint8)
    pos = -1
    i = 0
    while i < len(gaps):
        g = 0
        shift = 0
        while True:
            if i >= len(gaps) or shift > 21:
                return None
            b = np.int64(gaps[i])
            i += 1
            g |= (b & 127) << shift
            shift += 7
            if b < 128:
                break
        pos += g + 1
        if pos >= 8 * size:
            return None
        bits[pos >> 3] |= np.uint8(1 << (pos & 7))
    return bits


@njit(cache=True)
def top_summed(u, r, w, n_users, limits, live, ex_u, ex_row, total, mark):  # pragma: no cover
    """Each user's ``limits[b]`` rows with the largest summed weight over the (u, r, w)
    entries, live rows not among the user's exclusions (``ex_u``/``ex_row``, grouped by user),
    ties by row; returned as (users, rows) grouped by user, each user's best first.
    ``total``: float64[capacity] of zeros, ``mark``: int8[capacity] of zeros (both left so)."""
    grouped = True
    for i in range(1, len(u)):
        if u[i] < u[i - 1]:
            grouped = False
            break
    order = np.arange(len(u)) if grouped else np.argsort(u, kind="mergesort")
    out_u = np.empty(len(u), np.int64)
    out_r = np.empty(len(u), np.int64)
    n_out = 0
    touched = np.empty(len(u), np.int64)
    lo = 0
    x = 0
    for b in range(n_users):
        hi = lo
        while hi < len(order) and u[order[hi]] == b:
            hi += 1
        n_t = 0
        for e in range(lo, hi):
            i = order[e]
            row = r[i]
            if mark[row] == 0:
                mark[row] = 1
                touched[n_t] = row
                n_t += 1
            total[row] += w[i]
        while x < len(ex_u) and ex_u[x] < b:
            x += 1
        while x < len(ex_u) and ex_u[x] == b:
            if mark[ex_row[x]] == 1:
                mark[ex_row[x]] = 2
            x += 1
        rows = touched[:n_t].copy()
        vals = np.empty(n_t, np.float64)
        keep = 0
        for t in range(n_t):
            row = rows[t]
            s = total[row]
            ok = mark[row] == 1 and live[row]
            total[row] = 0.0
            mark[row] = 0
            if ok:
                rows[keep] = row
                vals[keep] = s
                keep += 1
        rows, vals = rows[:keep], vals[:keep]
        lim = limits[b]
        if 0 < lim < keep:  # only what can be listed is sorted (ties at the edge kept)
            thr = -np.partition(-vals, lim - 1)[lim - 1]
            sel = np.flatnonzero(vals >= thr)
            rows, vals = rows[sel], vals[sel]
        srt = np.argsort(rows, kind="mergesort")
        rows, vals = rows[srt], vals[srt]
        best = np.argsort(-vals, kind="mergesort")
        for t in range(min(limits[b], keep)):
            out_u[n_out] = b
            out_r[n_out] = rows[best[t]]
            n_out += 1
        lo = hi
    return out_u[:n_out], out_r[:n_out]


@njit(cache=True)
def lookup_rows(keys, rows, hashes):  # pragma: no cover
    """int64 rows of item hashes through the hash table (-1: unknown)."""
    out = np.empty(len(hashes), np.int64)
    for i in range(len(hashes)):
        r = _lookup(keys, rows, hashes[i])
        out[i] = r
    return out


@njit(cache=True)
def users_rows(recent, recent_w, r_start, disliked, d_start, decay, keys, rows):  # pragma: no cover
    """A batch of users' seeds and exact exclusions as catalog rows (ranking.scoring.
    resolve_users), user b's items at recent[r_start[b]:r_start[b + 1]] (newest last) and
    disliked[d_start[b]:...]. Seeds: the first ``len(decay)`` positive items of the user's
    recent, newest first (``recent_w`` > 0), those in the catalog kept, the d-th kept one
    weighted ``decay[d - 1]``; exclusions: the sorted rows of the user's recent and disliked
    items that are in the catalog. Returns (seed_start int64[B + 1], seed rows int64, their
    event weights float32, recency weights float64, ex_start int64[B + 1], exclusions int64)."""
    n_users, window = len(r_start) - 1, len(decay)
    seed_start = np.zeros(n_users + 1, np.int64)
    seed_r = np.empty(len(recent), np.int64)
    seed_w = np.empty(len(recent), np.float32)
    seed_a = np.empty(len(recent), np.float64)
    ex_start = np.zeros(n_users + 1, np.int64)
    ex = np.empty(len(recent) + len(disliked), np.int64)
    k = 0
    m = 0
    for b in range(n_users):
        lo, hi = r_start[b], r_start[b + 1]
        taken = 0
        d = 0
        for i in range(hi - 1, lo - 1, -1):
            if taken >= window:
                break
            if recent_w[i] > 0:
                taken += 1
                r = _lookup(keys, rows, recent[i])
                if r >= 0:
                    seed_r[k] = r
                    seed_w[k] = recent_w[i]
                    seed_a[k] = decay[d]
                    k += 1
                    d += 1
        seed_start[b + 1] = k
        m0 = m
        for i in range(lo, hi):
            r = _lookup(keys, rows, recent[i])
            if r >= 0:
                ex[m] = r
                m += 1
        for i in range(d_start[b], d_start[b + 1]):
            r = _lookup(keys, rows, disliked[i])
            if r >= 0:
                ex[m] = r
                m += 1
        ex[m0:m] = np.sort(ex[m0:m])
        ex_start[b + 1] = m
    return seed_start, seed_r[:k], seed_w[:k], seed_a[:k], ex_start, ex[:m]


@njit(cache=True)
def bpr_gradient(weights, taken, passed_over):  # pragma: no cover
    """float64[F]: the mean over the rows q of ``passed_over`` of sigmoid(-x) * diff, where
    diff = taken - passed_over[q] and x = diff . weights (ranking.learner.bpr_gradient)."""
    m, f = passed_over.shape
    out = np.zeros(f, np.float64)
    diff = np.empty(f, np.float64)
    for q in range(m):
        x = 0.0
        for j in range(f):
            diff[j] = np.float64(taken[j]) - np.float64(passed_over[q, j])
            x += diff[j] * np.float64(weights[j])
        g = 1.0 / (1.0 + np.exp(min(max(x, -30.0), 30.0)))
        for j in range(f):
            out[j] += g * diff[j]
    if m:
        for j in range(f):
            out[j] /= m
    return out


@njit(cache=True)
def placed(ranked, key, row, size):  # pragma: no cover
    """``ranked`` (int32 rows, highest ``key`` first) with ``row`` moved to where its key puts
    it, after rows of an equal key (numpy's ``searchsorted(-key[t], -key[row], "right")``),
    at most ``size`` long; unchanged but for ``row`` gone when it falls below a full list's
    last (ranking.catalog.Catalog._placed)."""
    t = np.empty(len(ranked) + 1, np.int32)
    m = 0
    for i in range(len(ranked)):
        if ranked[i] != row:
            t[m] = ranked[i]
            m += 1
    if m >= size and (m == 0 or key[row] <= key[t[m - 1]]):
        return t[:m].copy()
    v = -key[row]
    lo, hi = 0, m
    while lo < hi:
        mid = (lo + hi) >> 1
        if -key[t[mid]] <= v:
            lo = mid + 1
        else:
            hi = mid
    for i in range(m, lo, -1):
        t[i] = t[i - 1]
    t[lo] = row
    return t[: min(m + 1, size)].copy()


@njit(cache=True)
def unique_pairs(u, r, n_users):  # pragma: no cover
    """(users, rows, starts) of the distinct (u, r) pairs sorted by user, then row, and where
    each user's run starts (int64[n_users + 1]): numpy's ``np.unique(u * 2**32 + r)`` split back,
    in O(n log k) for k pairs a user rather than one sort of all n (ranking.scoring.Pairs)."""
    n = len(u)
    starts = np.zeros(n_users + 1, np.int64)
    for i in range(n):
        starts[u[i] + 1] += 1
    for b in range(n_users):
        starts[b + 1] += starts[b]
    pos = starts[:-1].copy()
    grouped = np.empty(n, np.int64)
    for i in range(n):
        grouped[pos[u[i]]] = r[i]
        pos[u[i]] += 1
    out_u = np.empty(n, np.int64)
    out_r = np.empty(n, np.int64)
    out_starts = np.zeros(n_users + 1, np.int64)
    m = 0
    for b in range(n_users):
        seg = np.sort(grouped[starts[b] : starts[b + 1]])
        for j in range(len(seg)):
            if j == 0 or seg[j] != seg[j - 1]:
                out_u[m] = b
                out_r[m] = seg[j]
                m += 1
        out_starts[b + 1] = m
    return out_u[:m], out_r[:m], out_starts


@njit(cache=True)
def learner_gradients(
    raw, start, r, taken, neg, neg_start, scales, weights, deltas, lr, l2
):  # pragma: no cover
    """Per learner j (its pairs start[j]:start[j + 1], rows ``r`` sorted within it): its
    gradient, float64[L, F], ``bpr_gradient(weights[j], f[taken[j]], f[negatives])`` with the
    features f of its pairs ``np.minimum(raw / scales[j], 1)`` in float32 and the negatives
    neg[neg_start[j]:neg_start[j + 1]] in that order (each among the learner's rows), 0 for a
    learner with none; and its deltas after the step, float32[L, F], ``learner.user_step(
    deltas[j], gradient, lr, l2)`` (ranking.step: one call for a round's learning steps)."""
    n_learners = len(start) - 1
    f = raw.shape[1]
    out = np.zeros((n_learners, f), np.float64)
    steps = np.zeros((n_learners, f), np.float32)
    d = np.empty(f, np.float64)
    one = np.float32(1.0)
    for j in range(n_learners):
        lo, hi = start[j], start[j + 1]
        m = neg_start[j + 1] - neg_start[j]
        if m == 0:
            continue
        tp = lo
        while tp < hi and r[tp] != taken[j]:
            tp += 1
        feats = np.empty((m + 1, f), np.float32)  # the taken item's, then its negatives'
        for q in range(m + 1):
            p = tp
            if q > 0:
                a, b = lo, hi
                while a < b:  # numpy's searchsorted (left) in the learner's rows
                    mid = (a + b) >> 1
                    if r[mid] < neg[neg_start[j] + q - 1]:
                        a = mid + 1
                    else:
                        b = mid
                p = a
            for x in range(f):
                feats[q, x] = np.minimum(raw[p, x] / scales[j, x], one)
        out[j] = bpr_gradient(weights[j], feats[0], feats[1:])
        for x in range(f):
            d[x] = deltas[j, x] + lr * (out[j, x] - l2 * deltas[j, x])
        steps[j] = np.round(d, 5).astype(np.float32)
    return out, steps


@njit(cache=True)
def reason_terms(contrib, cf_seed, anchor):  # pragma: no cover
    """int64[n]: per listed pair i, the feature term its reason is stated from (-1: none).
    Terms are tried by contribution, largest first (numpy's stable ``argsort(-contrib[i])``:
    ties by the lower index, NaN last), up to the first not positive; cf (2) only with a seed
    to name (``cf_seed[i] >= 0``), content and recent (0, 1) only with an anchor
    (``anchor[i] >= 0``), every other term always (ranking.explain.reasons)."""
    n, f = contrib.shape
    out = np.full(n, -1, np.int64)
    used = np.zeros(f, np.bool_)
    for i in range(n):
        used[:] = False
        for _ in range(f):
            best = -1
            for t in range(f):
                if used[t]:
                    continue
                if best < 0:
                    best = t
                    continue
                a, c = contrib[i, t], contrib[i, best]
                if (np.isnan(c) and not np.isnan(a)) or a > c:
                    best = t
            used[best] = True
            if contrib[i, best] <= 0:
                break
            if best == 2 and cf_seed[i] < 0:
                continue
            if (best == 0 or best == 1) and anchor[i] < 0:
                continue
            out[i] = best
            break
    return out
