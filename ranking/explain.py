"""Which rows make each list, and why each is there.

``pick``: each user's k best pairs by score (ties by item hash, so the order does not depend on
the candidates' order), or, with ``diversity`` > 0, maximal marginal relevance over the
k * diversity_pool best. ``reasons``: one sentence per listed pair, from the feature term that
contributed most (features * the user's weights) among those that can be stated truthfully:
  cf          "popular with people who watched <the seed contributing most>" (none: the next)
  content / recent  "because you liked <anchor>" when the anchor (the user's latest positive
              item most like the candidate) is really like it (``really_similar``) and was taken
              with an event weight >= liked_weight, "similar to <anchor>" when not taken so;
              no anchor really like it: the next term
  history     as cf when a seed contributes, else "popular with people who watch what you
              watch" (the neighbours it counted are only known by their Bloom bits)
  popularity, hot  "trending now";  popular  "popular";  freshness  "new in <first tag>" ("new"
              without tags); no term that can be named: "more from the catalog"
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from recstream.ranking import kernels
from recstream.ranking.catalog import Catalog
from recstream.ranking.scoring import FEATURES, Pairs, Scored, ScoreParams, Users


def _modal_dots(
    cat: Catalog, a: np.ndarray, b: np.ndarray, mw: Mapping[str, float]
) -> Iterator[tuple[str, np.ndarray, float, np.ndarray]]:
    """Per modality that some pair (a[i], b[i]) both have: (modality, which pairs have it,
    its weight, the pairs' cosines, 0 where a pair lacks it)."""
    for i, m in enumerate(cat.modalities):
        ia, ib = cat.midx[i][a], cat.midx[i][b]
        both = (ia >= 0) & (ib >= 0)
        if both.any():
            mat = cat.vec[m]
            dots = kernels.dots_pairs(mat, np.maximum(ia, 0), mat, np.maximum(ib, 0))
            yield m, both, mw.get(m, 1.0), np.where(both, dots, 0.0)


def modal_cosines(
    cat: Catalog, a: np.ndarray, b: np.ndarray, mw: Mapping[str, float], none: float
) -> np.ndarray:
    """float[len(a)]: weighted mean cosine of rows a[i] and b[i] over the modalities both
    have, ``none`` where they share none."""
    num = np.zeros(len(a))
    den = np.zeros(len(a))
    for _, both, wm, dots in _modal_dots(cat, a, b, mw):
        num += wm * dots
        den += np.where(both, wm, 0.0)
    return np.divide(num, den, out=np.full(len(a), none), where=den > 0)


def diversify(
    cat: Catalog, rows: np.ndarray, s: np.ndarray, k: int, params: ScoreParams
) -> list[int]:
    """Maximal marginal relevance (Carbonell & Goldstein, 1998) over ``rows`` (indices into
    the pool, best first): the first pick is the best; each next one maximises (1 - lambda) *
    relevance - lambda * its largest cosine with one already picked; relevance is the score
    min-max scaled over the pool (ties go to the better-ranked)."""
    lam = params.diversity
    n = len(rows)
    if lam <= 0 or n <= 1:
        return list(range(min(k, n)))
    lo, hi = float(s.min()), float(s.max())
    rel = (s - lo) / (hi - lo) if hi > lo else np.ones(n)
    a, b = np.repeat(rows, n), np.tile(rows, n)
    sim = modal_cosines(cat, a, b, params.modality_weights, 0.0).reshape(n, n)
    picked = [0]
    free = np.ones(n, dtype=bool)
    free[0] = False
    closest = sim[0].copy()
    while len(picked) < min(k, n):
        gain = np.where(free, (1.0 - lam) * rel - lam * closest, -np.inf)
        j = int(np.argmax(gain))
        picked.append(j)
        free[j] = False
        closest = np.maximum(closest, sim[j])
    return picked


def pick(
    cat: Catalog, pairs: Pairs, s: np.ndarray, ks: Sequence[int], params: ScoreParams
) -> list[np.ndarray]:
    """Each user's listed pair indices, best first (ties by item hash)."""
    pool_ks = [k * max(params.diversity_pool, 1) if params.diversity > 0 else k for k in ks]
    top = kernels.top_pairs(
        s,
        cat.hashes,
        pairs.r,
        pairs.starts.astype(np.int64, copy=False),
        np.asarray(pool_ks, np.int64),
    )
    out = []
    for b, k in enumerate(ks):
        best = top[b][top[b] >= 0]
        if params.diversity > 0:
            best = best[diversify(cat, pairs.r[best], s[best], k, params)]
        out.append(best[:k])
    return out


# "Really similar": a cosine more than one standard deviation above the mean cosine of two
# items of the catalog, or at least halfway from that mean to identical (Catalog.cosine_spread,
# per modality), whatever the encoder's own scale (text cosines near 0 for unrelated items,
# image cosines far higher). MiniLM on a catalog of four topics: same-topic pairs 0.34-0.60,
# mean 0.44; other pairs at most 0.31; all pairs 0.23 +- 0.15 (tests/unit/test_store.py).
SIMILAR_SD = 1.0
SIMILAR_HALFWAY = 0.5


def really_similar(
    cat: Catalog, a: np.ndarray, b: np.ndarray, mw: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Whether rows a[i] and b[i] are really similar (``SIMILAR_SD``, ``SIMILAR_HALFWAY``), and
    how much: their likeness, (cosine - mean) / (1 - mean), weighted over the modalities both
    have (-inf where they share none)."""
    like = np.zeros(len(a))
    sds = np.zeros(len(a))
    den = np.zeros(len(a))
    for m, both, wm, dots in _modal_dots(cat, a, b, mw):
        mean, sd = cat.cosine_spread(m)
        mean = min(mean, 0.99)
        like += np.where(both, wm * (dots - mean) / (1.0 - mean), 0.0)
        sds += np.where(both, wm * ((dots - mean) / sd if sd > 0 else 0.0), 0.0)
        den += np.where(both, wm, 0.0)
    ok = den > 0
    like = np.divide(like, den, out=np.full(len(a), -np.inf), where=ok)
    sds = np.divide(sds, den, out=np.zeros(len(a)), where=ok)
    return ok & ((sds > SIMILAR_SD) | (like >= SIMILAR_HALFWAY)), like


def reasons(
    cat: Catalog,
    users: Users,
    pairs: Pairs,
    scored: Scored,
    listed: np.ndarray,
    params: ScoreParams,
) -> list[str]:
    """One sentence per listed pair index (see the module doc): from the feature term that
    contributed most, or, where that term cannot be stated truthfully (content with no seed
    really similar to the item, co-occurrence with no seed to name), the next one."""
    if len(listed) == 0:
        return []
    u = pairs.u[listed]
    contrib = scored.features[listed] * users.weights[u]
    cf_seed = scored.cf_seeds(listed)
    # the rows whose reason may be content's: content or recent comes before any term stated
    # without a seed like the item (a cf term with no seed to name is passed over)
    first = kernels.reason_terms(contrib, cf_seed, np.zeros(len(listed), np.int64))
    need = np.flatnonzero((first >= 0) & (first <= 1))
    anchor = _anchors(cat, users, pairs.r[listed], u, need, params)
    terms = kernels.reason_terms(contrib, cf_seed, anchor).tolist()
    anchors = anchor.tolist()
    seeds = cf_seed.tolist()
    seed_row = users.seed_row
    liked = (users.seed_w >= np.float32(params.liked_weight)).tolist()
    rows = pairs.r[listed].tolist()
    out = []
    for n, t in enumerate(terms):
        if t < 0:
            why = "more from the catalog"  # nothing it was listed for can be named
        elif FEATURES[t] in ("cf", "history") and seeds[n] >= 0:
            why = f"popular with people who watched \u201c{_title(cat, seed_row[seeds[n]])}\u201d"
        elif FEATURES[t] == "history":
            why = "popular with people who watch what you watch"
        elif t in (0, 1):  # content, recent: an anchor really like the item
            verb = "because you liked" if liked[anchors[n]] else "similar to"
            why = f"{verb} \u201c{_title(cat, seed_row[anchors[n]])}\u201d"
        elif FEATURES[t] in ("popularity", "hot"):
            why = "trending now"
        elif FEATURES[t] == "popular":
            why = "popular"
        else:  # freshness
            r = rows[n]
            why = f"new in {cat.tags[r][0]}" if cat.tags[r] else "new"
        out.append(why)
    return out


def _anchors(
    cat: Catalog,
    users: Users,
    rows: np.ndarray,
    u: np.ndarray,
    want: np.ndarray,
    params: ScoreParams,
) -> np.ndarray:
    """int64[len(rows)]: per listed row (``want``: those to look at), the user's seed (index
    into seed_row) most like it, if it is really like it (``really_similar``); else -1."""
    anchor = np.full(len(rows), -1, np.int64)
    if not len(want):
        return anchor
    su = u[want]
    lens = users.seed_start[su + 1] - users.seed_start[su]
    rep = np.repeat(np.arange(len(want)), lens)
    if not len(rep):
        return anchor
    # each wanted row's seeds: seed_start[su] .. seed_start[su + 1], laid end to end
    sidx = np.arange(len(rep)) + np.repeat(users.seed_start[su] - (np.cumsum(lens) - lens), lens)
    similar, like = really_similar(
        cat, rows[want][rep], users.seed_row[sidx], params.modality_weights
    )
    order = np.lexsort((-like, rep))
    first = np.unique(rep[order], return_index=True)
    best = order[first[1]]
    good = similar[best]
    anchor[want[first[0][good]]] = sidx[best[good]]
    return anchor


def _title(cat: Catalog, row: int) -> str:
    return cat.titles[int(row)] or cat.ids[int(row)]
