"""Ranking's settings: the online model (``RECSTREAM_RANKING_*``) and the item store
(``RECSTREAM_QDRANT_*``). Composed into the worker's one Settings by streams/settings.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RankingSettings(BaseSettings):
    """Online interest update and ranking. Env prefix ``RECSTREAM_RANKING_``."""

    model_config = SettingsConfigDict(env_prefix="RECSTREAM_RANKING_", extra="ignore")

    k: int = Field(default=10, ge=1, le=1000)
    max_k: int = Field(default=100, ge=1)
    # Event type -> weight of that event in the user's interest (negative pushes away).
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 0.5,
            "click": 1.0,
            "like": 2.0,
            "share": 3.0,
            "complete": 2.0,
            "skip": -0.5,
            "dislike": -2.0,
        }
    )
    # Interest decays with event time: a contribution halves every half_life_hours.
    interest_half_life_hours: float = Field(default=72.0, gt=0)
    # Item popularity ("trending") halves every trending_half_life_hours; the "hot" one every
    # hot_half_life_minutes. With all-time popularity ("popular") that is three paces, hours,
    # minutes and forever, and the learned weights pick the mix that fits the catalog's own
    # (events seconds or days apart).
    trending_half_life_hours: float = Field(default=24.0, gt=0)
    hot_half_life_minutes: float = Field(default=10.0, gt=0)
    # The short-term features (recent, cf: the user's latest items) fade while the user is
    # away: halved every session_half_life_minutes since their last event. 30: the inactivity
    # timeout that ends a session in web analytics. A returning user is ranked by their whole
    # history and long-term interest; one who is active, by what they took moments ago.
    session_half_life_minutes: float = Field(default=30.0, gt=0)
    # The freshness feature is 0.5 ** (age / freshness_half_life_hours).
    freshness_half_life_hours: float = Field(default=48.0, gt=0)
    # Weighted fusion of per-modality similarity: w_text*sim_text + w_image*sim_image +
    # w_audio*sim_audio, over the modalities both the user and the item have (JSON object).
    modality_weights: dict[str, float] = Field(
        default_factory=lambda: {"text": 1.0, "image": 0.6, "audio": 0.4}
    )
    # Diversity of each list (ranking.diversity.diversify: maximal marginal relevance): 0 ranks
    # by score alone; lambda in (0, 1) trades score against likeness (content cosine) to the
    # items already picked, choosing k among the k * diversity_pool best-scored candidates.
    diversity: float = Field(default=0.0, ge=0, lt=1)
    diversity_pool: int = Field(default=3, ge=1)
    # Candidates taken per source = k * candidate_factor (co-occurrence neighbours, content
    # neighbours, trending, fresh), once the catalog holds more than full_scan_items items;
    # up to that many, every list is scored over the whole catalog (its cost grows with the
    # catalog: docs/evaluation.md).
    candidate_factor: int = Field(default=4, ge=1)
    full_scan_items: int = Field(default=4096, ge=0)
    # Content neighbours the encoding stage finds for each new item (the store's nearest items
    # by its vectors): candidates for the users who took it.
    content_neighbours: int = Field(default=20, ge=0, le=255)
    # Per-user memory kept in state: recent event ids (dedupe) and recent liked items (reasons).
    dedupe_window: int = Field(default=32, ge=0, le=255)
    recent_positive: int = Field(default=5, ge=1, le=255)
    # Bounded user state (ranking/user_state.py): the latest items kept exactly (short-term
    # interest, collaborative seeds, exact exclusions) and the Bloom filter of all seen items.
    recent_items: int = Field(default=24, ge=1, le=255)
    seen_filter_bits: int = Field(default=6144, ge=64, le=65536)
    # Learned scorer (ranking/scoring.py, ranking/learner.py): the features content (long-term
    # interest), recent (short-term interest), cf (co-occurrence with recent items),
    # popularity (decayed in hours), freshness, history (the candidate's own co-occurrence row
    # summed over every item the user took), popular (all-time interactions) and hot
    # (popularity decayed in minutes), each scaled to about [0, 1] within a list. Their
    # weights are learned online from every user's events (the shared weights) with each
    # user's deltas on top; these are where the shared weights start: the personal signals
    # (what this user took, and what people took with it) at 1, those that are the same for
    # everyone at a third of that: freshness, and popularity at its three paces together
    # (popularity, popular, hot: a ninth each). Before the stream shows otherwise, what a user
    # took says more about them than what everyone takes.
    score_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "content": 1.0,
            "recent": 1.0,
            "cf": 1.0,
            "popularity": 1 / 9,
            "freshness": 1 / 3,
            "history": 1.0,
            "popular": 1 / 9,
            "hot": 1 / 9,
        }
    )
    # Co-occurrence normalisation. history (whole-history co-occurrence through the seen
    # filter): each taken neighbour's entry / count(neighbour) ** alpha, so at 1 each item the
    # user took votes with P(candidate | it), one vote each however popular it is; the sum /
    # count(candidate) ** beta. cf: cosine-like, as item-kNN's (count(a, b) / sqrt(count(a)
    # count(b))): / count(seed item) ** alpha, / count(candidate) ** beta. history_alpha 1
    # rather than 0.5 (cosine): better on all four evaluations, cf_alpha 1 worse on ML-100k
    # (docs/evaluation.md, 2026-12-08).
    history_beta: float = Field(default=0.5, ge=0)
    history_alpha: float = Field(default=1.0, ge=0)
    cf_alpha: float = Field(default=0.5, ge=0)  # co-occurrence / count(seed item) ** alpha
    cf_beta: float = Field(default=0.5, ge=0)  # ... / count(candidate) ** beta
    recency_decay: float = Field(default=0.8, gt=0, le=1)  # seed d steps back weighs decay**d
    seed_items: int = Field(default=16, ge=1)  # recent items used as collaborative seeds
    # Item side (ranking/item_side.py): pairs per event, their decay with distance, the weight of
    # the reverse direction, row size kept per item, neighbours published per item.
    cooc_window: int = Field(default=16, ge=1)
    cooc_decay: float = Field(default=0.9, gt=0, le=1)
    cooc_backward: float = Field(default=0.5, ge=0)
    cooc_max_row: int = Field(default=1000, ge=10)
    cooc_top_n: int = Field(default=100, ge=1)
    # entries of each item's published "history" row (cf_pos/cf_w), its strongest first; the
    # RecBole split protocol wants ~400 (docs/evaluation.md), each costs the per-event path
    cooc_history_top_n: int = Field(default=400, ge=1)
    # Online learning of the user's weight deltas (ranking/learner.py).
    learning_rate: float = Field(default=0.01, ge=0)
    learning_l2: float = Field(default=0.01, ge=0)
    # Each learning step compares the item taken with this many items drawn uniformly among
    # those the user could be shown (BPR's negatives) and, optionally, with the items shown
    # above it in the user's last list (learning_negatives: off, since every such pair is one
    # the list had the wrong way round, so they only ever shrink the weights: ML-100k
    # prequential HR@10 0.149 with them at 30k events against 0.175 without,
    # docs/evaluation.md).
    learning_negatives: int = Field(default=0, ge=0)
    learning_random_negatives: int = Field(default=5, ge=0)
    # ... and this many drawn in proportion to the items' interactions: mixed negative
    # sampling (Ji Yang et al., WWW 2020 companion), uniform negatives beside ones drawn by
    # popularity. Uniform ones alone are mostly items nobody takes, so the weights learned that
    # popularity tells a taken item from the rest and ranked popular items first; drawn by
    # interactions alone, the reverse (docs/evaluation.md, 2026-12-08).
    learning_popular_negatives: int = Field(default=1, ge=0)
    # Online learning of the shared weights from every user's events: a step per event along
    # its gradient, and a weak pull toward zero (a tenth of the users'), so a feature that
    # does not help fades and the weights stay bounded. The features are scaled to [0, 1] and
    # a BPR gradient is a mean of sigmoid-weighted differences of them, so one event moves a
    # weight by at most the rate: 0.1 is a tenth of where the personal signals start (one
    # event cannot reverse a signal, ten that agree fully can). Ten times slower, the
    # weights lagged the stream on every dataset measured (docs/evaluation.md, 2026-12-07).
    shared_learning_rate: float = Field(default=0.1, ge=0)
    shared_l2: float = Field(default=0.001, ge=0)
    # Reasons: a recent item counts as "liked" ("because you liked <title>") when taken with
    # at least this event weight (like, share, complete, click, a view watched >= 90%).
    reason_liked_weight: float = 0.7


class QdrantSettings(BaseSettings):
    """Vector store. Env prefix ``RECSTREAM_QDRANT_``. No url: embedded (see ``backend``)."""

    model_config = SettingsConfigDict(env_prefix="RECSTREAM_QDRANT_", extra="ignore")

    url: str | None = None
    api_key: str | None = None
    # Embedded store folder; ":memory:" keeps nothing. Unset: <data_dir>/qdrant.
    path: str | None = None
    collection: str = "recstream_items"
    timeout_s: float = 10.0
    # Embedded engine (no url): "edge" (auto) is the Qdrant engine in-process (ranking/
    # store_edge.py); "client" is qdrant-client's local mode (numpy brute force, tests only).
    backend: Literal["auto", "edge", "client"] = "auto"
    # More named vectors besides the modalities (text/image/audio), name -> size, e.g.
    # {"cf": 64}: derived vectors written with ItemStore.update_vectors.
    extra_vectors: dict[str, int] = Field(default_factory=dict)
    # Edge: build the HNSW index (in a child process) once this many points are unindexed,
    # and at least reindex_fraction of the catalog; smaller sets are searched exactly.
    edge_reindex_min_points: int = Field(default=5_000, ge=1)
    edge_reindex_fraction: float = Field(default=0.2, ge=0)
    edge_hnsw_m: int = Field(default=16, ge=4)
    edge_hnsw_ef_construct: int = Field(default=100, ge=4)
    # Search-time ef (edge). 64: recall@40 0.995 against exact search on the benchmark's 100k
    # catalog, 0.87 ms a query instead of 1.24 at the engine's default (100).
    edge_hnsw_ef: int | None = Field(default=64, ge=1)  # None: the engine's default
    edge_build_threads: int = Field(default=1, ge=0)  # 0: all cores
    edge_search_threads: int | None = Field(default=1, ge=1)  # None: one per core
    # Items whose candidate view (payload fields ranking reads + vectors, ~3 KB) stays converted
    # in the worker; a miss costs one engine retrieve and the float lists' conversion.
    edge_cache_items: int = Field(default=50_000, ge=0)
    # Named vectors kept on disk (memory-mapped) rather than in RAM, for new collections (and,
    # edge, from the next index build). Dense storage reserves room for every point, so 100k
    # items cost 489 MB of image and 196 MB of audio vectors even where items have none.
    on_disk_vectors: list[str] = Field(default_factory=lambda: ["image", "audio"])

    def edge_options(self) -> dict[str, object]:
        """Keyword arguments for ranking.store_edge.EdgeStore."""
        return {
            "reindex_min_points": self.edge_reindex_min_points,
            "reindex_fraction": self.edge_reindex_fraction,
            "hnsw_m": self.edge_hnsw_m,
            "hnsw_ef_construct": self.edge_hnsw_ef_construct,
            "hnsw_ef": self.edge_hnsw_ef,
            "build_threads": self.edge_build_threads,
            "search_threads": self.edge_search_threads,
            "cache_items": self.edge_cache_items,
            "on_disk_vectors": list(self.on_disk_vectors),
        }
