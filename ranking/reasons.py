"""Why each listed item is there: the feature term that contributed most, named in words
("because you liked X", "popular with people who watched X", "trending now", "new in <tag>")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from recstream.ranking.candidates import CandidateSet
from recstream.ranking.features import (
    FEATURES,
    Scored,
    ScoreParams,
    Seed,
    _cf_parts,
    modal_cosines,
)


def _anchor_sims(cs: CandidateSet, rows: np.ndarray, anchors: Sequence[Seed], mw) -> np.ndarray:
    """float[len(rows), len(anchors)]: weighted mean cosine of each row with each anchor over
    the modalities both have (-1 where they share none)."""
    others = {}
    for m, mat in cs.vectors.items():
        units = np.zeros((len(anchors), mat.shape[1]), dtype=np.float32)
        has = np.zeros(len(anchors), dtype=bool)
        for n, a in enumerate(anchors):
            u = a.units.get(m)
            if u is not None and u.shape[0] == mat.shape[1]:
                units[n], has[n] = u, True
        others[m] = (units, has)
    return modal_cosines(cs, rows, others, len(anchors), mw, -1.0)


def reasons(
    cs: CandidateSet,
    rows: Sequence[int],
    scored: Scored,
    seeds: Mapping[str, Seed],
    recent: Sequence[tuple[str, float]],
    params: ScoreParams,
) -> list[str]:
    """One sentence per row, from the largest term of features[row] * weights:
    cf          "popular with people who watched <the seed contributing most>"
    content / recent  "because you liked <anchor>" when the anchor (the recent positive item
                most like the candidate) was taken with an event weight >= params.liked_weight
                (like, share, complete, a view watched to the end), else "similar to <anchor>"
    history     as cf when a recent item contributes, else "popular with people who watch
                what you watch" (the neighbours it counted are only known by their Bloom bits)
    popularity  "trending now";  freshness  "new in <first tag>" ("new" without tags).
    ``recent``: the state's (item, event weight) list; ``seeds``: as for score_candidates."""
    rows_a = np.asarray(rows, dtype=np.intp)
    if len(rows_a) == 0:
        return []
    took = dict(recent)
    terms = scored.features[rows_a] * scored.weights
    top = np.argmax(terms, axis=1)
    best_term = terms[np.arange(len(rows_a)), top]
    names = [
        FEATURES[t] if b > 0 else "" for t, b in zip(top.tolist(), best_term.tolist(), strict=True)
    ]
    # Each seed's cf contribution to each row, as feature_matrix sums it (only when a row is
    # explained by cf or history).
    seed_ids = [i for i, _ in scored.seeds]
    contrib = np.zeros((len(rows_a), len(seed_ids)))
    if seed_ids and ("cf" in names or "history" in names):
        parts = scored.cf_parts
        if parts is None:
            parts = _cf_parts(scored.seeds, scored.neighbours, scored.seed_counts, params)
        if parts is not None:
            sid, prow, term = parts
            pos = np.full(len(cs), -1, dtype=np.intp)
            pos[rows_a] = np.arange(len(rows_a))
            p = pos[prow]
            hit = p >= 0
            np.add.at(contrib, (p[hit], sid[hit]), term[hit])
    sims = None
    sim_at: dict[int, int] = {}
    if seed_ids and ("content" in names or "recent" in names):
        want = [n for n, nm in enumerate(names) if nm in ("content", "recent")]
        sim_at = {n: j for j, n in enumerate(want)}
        anchors = [seeds[i] for i in seed_ids]
        sims = _anchor_sims(cs, rows_a[want], anchors, params.modality_weights)
    c_max = contrib.max(axis=1).tolist() if seed_ids else [0.0] * len(rows_a)
    c_arg = contrib.argmax(axis=1).tolist() if seed_ids else []
    s_max = sims.max(axis=1).tolist() if sims is not None else []
    s_arg = sims.argmax(axis=1).tolist() if sims is not None else []
    out = []
    for n, row in enumerate(rows_a.tolist()):
        name = names[n]
        if name in ("cf", "history"):
            if c_max[n] > 0:
                best = seeds[seed_ids[c_arg[n]]]
                out.append(f"popular with people who watched \u201c{_title(best)}\u201d")
                continue
            if name == "history":
                out.append("popular with people who watch what you watch")
                continue
            name = "popularity"
        if name in ("content", "recent"):
            if sims is not None and s_max[sim_at[n]] > -1.0:
                a = seeds[seed_ids[s_arg[sim_at[n]]]]
                liked = took.get(a.item_id, 0.0) >= params.liked_weight
                verb = "because you liked" if liked else "similar to"
                out.append(f"{verb} \u201c{_title(a)}\u201d")
            else:
                out.append("matches your interests")
        elif name == "freshness":
            out.append(f"new in {cs.tags[row][0]}" if cs.tags[row] else "new")
        else:
            out.append("trending now")
    return out


def _title(seed: Seed) -> str:
    return seed.title or seed.item_id
