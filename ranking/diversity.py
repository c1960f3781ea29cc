"""Which k rows make the list: the best by score, or, with diversity on (RECSTREAM_RANKING_
DIVERSITY), maximal marginal relevance over the k * diversity_pool best."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from recstream.ranking.candidates import CandidateSet
from recstream.ranking.features import ScoreParams, best_rows, modal_cosines


def ranked_rows(cs: CandidateSet, scores: np.ndarray, k: int, params: ScoreParams) -> list[int]:
    """The list's rows: the k best by score (``best_rows``), or with ``params.diversity`` > 0
    the k that ``diversify`` picks among the k * diversity_pool best."""
    if params.diversity <= 0:
        return best_rows(cs, scores, k)
    pool = best_rows(cs, scores, k * max(params.diversity_pool, 1))
    return diversify(cs, pool, scores, k, params)


def item_sims(cs: CandidateSet, rows: np.ndarray, mw: Mapping[str, float]) -> np.ndarray:
    """float[len(rows), len(rows)]: weighted mean cosine of each pair of rows over the
    modalities both have (0 where they share none)."""
    others = {m: (mat[rows], cs.present[m][rows]) for m, mat in cs.vectors.items()}
    return modal_cosines(cs, rows, others, len(rows), mw, 0.0)


def diversify(
    cs: CandidateSet, rows: Sequence[int], scores: np.ndarray, k: int, params: ScoreParams
) -> list[int]:
    """Maximal marginal relevance (Carbonell & Goldstein, 1998) over ``rows``, best first:
    the first pick is the best row; each next one maximises (1 - lambda) * relevance - lambda *
    (its largest cosine with a row already picked), relevance the score min-max scaled over
    ``rows`` (lambda = params.diversity; ties go to the better-ranked row)."""
    lam = params.diversity
    r = np.asarray(rows, dtype=np.intp)
    if lam <= 0 or len(r) <= 1:
        return [int(x) for x in r[:k]]
    s = scores[r]
    lo, hi = float(s.min()), float(s.max())
    rel = (s - lo) / (hi - lo) if hi > lo else np.ones(len(r))
    sim = item_sims(cs, r, params.modality_weights)
    picked = [0]
    free = np.ones(len(r), dtype=bool)
    free[0] = False
    closest = sim[0].copy()
    while len(picked) < min(k, len(r)):
        gain = np.where(free, (1.0 - lam) * rel - lam * closest, -np.inf)
        j = int(np.argmax(gain))
        picked.append(j)
        free[j] = False
        closest = np.maximum(closest, sim[j])
    return [int(x) for x in r[picked]]
