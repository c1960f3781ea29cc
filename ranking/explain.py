"""Which rows make each list, and why each is there.

``pick``: each user's k best pairs by score (ties by item hash, so the order does not depend on
the candidates' order), or, with ``diversity`` > 0, maximal marginal relevance over the
k * diversity_pool best. ``reasons``: one sentence per listed pair, from the feature term that
contributed most (features * the user's weights):
  cf          "popular with people who watched <the seed contributing most>"
  content / recent  "because you liked <anchor>" when the anchor (the user's latest positive
              item most like the candidate) was taken with an event weight >= liked_weight,
              else "similar to <anchor>"
  history     as cf when a seed contributes, else "popular with people who watch what you
              watch" (the neighbours it counted are only known by their Bloom bits)
  popularity  "trending now";  freshness  "new in <first tag>" ("new" without tags)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from recstream.ranking import kernels
from recstream.ranking.catalog import Catalog
from recstream.ranking.scoring import FEATURES, Pairs, Scored, ScoreParams, Users


def modal_cosines(
    cat: Catalog, a: np.ndarray, b: np.ndarray, mw: Mapping[str, float], none: float
) -> np.ndarray:
    """float[len(a)]: weighted mean cosine of rows a[i] and b[i] over the modalities both
    have, ``none`` where they share none."""
    num = np.zeros(len(a))
    den = np.zeros(len(a))
    for i, m in enumerate(cat.modalities):
        ia, ib = cat.midx[i][a], cat.midx[i][b]
        both = (ia >= 0) & (ib >= 0)
        if not both.any():
            continue
        wm = mw.get(m, 1.0)
        mat = cat.vec[m]
        dots = kernels.dots_pairs(mat, np.maximum(ia, 0), mat, np.maximum(ib, 0))
        num += np.where(both, wm * dots, 0.0)
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
        s, cat.hashes, pairs.r, pairs.starts.astype(np.int64), np.asarray(pool_ks, np.int64)
    )
    out = []
    for b, k in enumerate(ks):
        best = top[b][top[b] >= 0]
        if params.diversity > 0:
            best = best[diversify(cat, pairs.r[best], s[best], k, params)]
        out.append(best[:k])
    return out


def reasons(
    cat: Catalog,
    users: Users,
    pairs: Pairs,
    scored: Scored,
    listed: np.ndarray,
    params: ScoreParams,
) -> list[str]:
    """One sentence per listed pair index (see the module doc)."""
    if len(listed) == 0:
        return []
    u = pairs.u[listed]
    contrib = scored.features[listed] * users.weights[u]
    top = np.argmax(contrib, axis=1)
    best_term = contrib[np.arange(len(listed)), top]
    names = [
        FEATURES[t] if v > 0 else "" for t, v in zip(top.tolist(), best_term.tolist(), strict=True)
    ]
    cf_seed = scored.best_seed[listed]
    # the anchor: the user's seed most like the listed item
    anchor = np.full(len(listed), -1, np.int64)
    want = np.asarray([n for n, nm in enumerate(names) if nm in ("content", "recent")], np.intp)
    if len(want):
        su = u[want]
        lens = users.seed_start[su + 1] - users.seed_start[su]
        rep = np.repeat(np.arange(len(want)), lens)
        if len(rep):
            sidx = np.concatenate(
                [np.arange(users.seed_start[x], users.seed_start[x + 1]) for x in su]
            )
            sims = modal_cosines(
                cat, pairs.r[listed[want]][rep], users.seed_row[sidx],
                params.modality_weights, -1.0,
            )  # fmt: skip
            order = np.lexsort((-sims, rep))
            first = np.unique(rep[order], return_index=True)
            best = order[first[1]]
            good = sims[best] > -1.0
            anchor[want[first[0][good]]] = sidx[best[good]]
    out = []
    seed_row = users.seed_row
    liked = (users.seed_w >= np.float32(params.liked_weight)).tolist()
    for name, r, cs, s in zip(
        names, pairs.r[listed].tolist(), cf_seed.tolist(), anchor.tolist(), strict=True
    ):
        if name in ("cf", "history"):
            if cs >= 0:
                out.append(
                    f"popular with people who watched \u201c{_title(cat, seed_row[cs])}\u201d"
                )
                continue
            if name == "history":
                out.append("popular with people who watch what you watch")
                continue
            name = "popularity"
        if name in ("content", "recent"):
            if s >= 0:
                verb = "because you liked" if liked[s] else "similar to"
                out.append(f"{verb} \u201c{_title(cat, seed_row[s])}\u201d")
            else:
                out.append("matches your interests")
        elif name == "freshness":
            out.append(f"new in {cat.tags[r][0]}" if cat.tags[r] else "new")
        else:
            out.append("trending now")
    return out


def _title(cat: Catalog, row: int) -> str:
    return cat.titles[int(row)] or cat.ids[int(row)]
