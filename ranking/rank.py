"""One ranked, explained list from a candidate set: the call the stream and the harness make
per request (score, pick the rows, explain them)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from recstream.ranking.candidates import CandidateSet
from recstream.ranking.diversity import ranked_rows
from recstream.ranking.features import RankedItem, Scored, ScoreParams, Seed, score_candidates
from recstream.ranking.reasons import reasons
from recstream.ranking.state import UserState


def rank_candidates(
    cs: CandidateSet,
    state: UserState,
    params: ScoreParams,
    seeds: Mapping[str, Seed],
    now_ms: int,
    k: int,
    *,
    neighbours: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    history: np.ndarray | None = None,
) -> tuple[list[RankedItem], Scored]:
    """The stream's (and the harness's) one call per request: score the candidate set, take
    the k best (ties by item id), explain each. Returns the list and what scoring produced
    (for ranking.learner)."""
    sc = score_candidates(cs, state, params, seeds, now_ms, neighbours=neighbours, history=history)
    rows = ranked_rows(cs, sc.scores, k, params)
    why = reasons(cs, rows, sc, seeds, state.recent, params)
    items = [RankedItem(cs.ids[r], float(sc.scores[r]), why[n]) for n, r in enumerate(rows)]
    return items, sc
