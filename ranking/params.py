"""RankingSettings -> the pure parameter objects of ranking/, for the stream and the harness alike
(one translation, so `recstream evaluate` measures exactly what the worker runs)."""

from __future__ import annotations

from recstream.ranking.collab import CoocParams
from recstream.ranking.features import FEATURES, ScoreParams
from recstream.ranking.settings import RankingSettings

HOUR_MS = 3_600_000


def score_params(s: RankingSettings) -> ScoreParams:
    return ScoreParams(
        prior=tuple(float(s.score_weights.get(f, 0.0)) for f in FEATURES),
        modality_weights=dict(s.modality_weights),
        trending_half_life_ms=s.trending_half_life_hours * HOUR_MS,
        freshness_half_life_ms=s.freshness_half_life_hours * HOUR_MS,
        cf_alpha=s.cf_alpha,
        cf_beta=s.cf_beta,
        recency_decay=s.recency_decay,
        recent_window=s.seed_items,
        liked_weight=s.reason_liked_weight,
        history_beta=s.history_beta,
        diversity=s.diversity,
        diversity_pool=s.diversity_pool,
    )


def cooc_params(s: RankingSettings) -> CoocParams:
    return CoocParams(
        window=s.cooc_window,
        decay=s.cooc_decay,
        backward=s.cooc_backward,
        max_row=s.cooc_max_row,
        top_n=s.cooc_top_n,
        history_top_n=s.cooc_history_top_n,
        history_alpha=s.history_alpha,
    )
