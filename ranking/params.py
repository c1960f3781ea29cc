"""RankingSettings -> the online step's parameters (ranking/step.py), for the stream and the
harness alike: one translation, so `recstream evaluate` measures exactly what the worker runs."""

from __future__ import annotations

from recstream.ranking.item_side import CoocParams
from recstream.ranking.scoring import FEATURES, ScoreParams
from recstream.ranking.settings import RankingSettings
from recstream.ranking.step import ModelParams
from recstream.ranking.user_state import StateParams

HOUR_MS = 3_600_000


def model_params(s: RankingSettings) -> ModelParams:
    return ModelParams(
        score=ScoreParams(
            prior=tuple(float(s.score_weights.get(f, 0.0)) for f in FEATURES),
            modality_weights=dict(s.modality_weights),
            trending_half_life_ms=s.trending_half_life_hours * HOUR_MS,
            freshness_half_life_ms=s.freshness_half_life_hours * HOUR_MS,
            hot_half_life_ms=s.hot_half_life_minutes * 60_000,
            session_half_life_ms=s.session_half_life_minutes * 60_000,
            cf_alpha=s.cf_alpha,
            cf_beta=s.cf_beta,
            recency_decay=s.recency_decay,
            recent_window=s.seed_items,
            liked_weight=s.reason_liked_weight,
            history_beta=s.history_beta,
            diversity=s.diversity,
            diversity_pool=s.diversity_pool,
        ),
        state=StateParams(
            event_weights=dict(s.event_weights),
            half_life_ms=s.interest_half_life_hours * HOUR_MS,
            dedupe_window=s.dedupe_window,
            recent_positive=s.recent_positive,
            recent_items=s.recent_items,
            seen_filter_bits=s.seen_filter_bits,
        ),
        cooc=CoocParams(
            window=s.cooc_window,
            decay=s.cooc_decay,
            backward=s.cooc_backward,
            max_row=s.cooc_max_row,
            top_n=s.cooc_top_n,
            history_top_n=s.cooc_history_top_n,
            history_alpha=s.history_alpha,
        ),
        k=s.k,
        candidate_factor=s.candidate_factor,
        full_scan_limit=s.full_scan_items,
        learning_rate=s.learning_rate,
        learning_l2=s.learning_l2,
        learning_negatives=s.learning_negatives,
        learning_random_negatives=s.learning_random_negatives,
        learning_popular_negatives=s.learning_popular_negatives,
        shared_learning_rate=s.shared_learning_rate,
        shared_l2=s.shared_l2,
    )
