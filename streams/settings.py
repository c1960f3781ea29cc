"""One settings object for the whole service, read from ``RECSTREAM_*`` environment variables.

Every section is its own ``BaseSettings`` with its own prefix, so the variable names are flat
and predictable (``RECSTREAM_KAFKA_BOOTSTRAP_SERVERS``, ``RECSTREAM_QDRANT_URL``...).
Defaults run locally with no configuration at all. The README lists every field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def _default_home() -> Path:
    return Path.home() / ".cache" / "recstream"


class KafkaSettings(BaseSettings):
    """Broker connection and topic names. Env prefix ``RECSTREAM_KAFKA_``."""

    model_config = SettingsConfigDict(env_prefix="RECSTREAM_KAFKA_", extra="ignore")

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    # Start the local Apache Kafka broker (streams/broker.py) when nothing listens at the
    # default address and bootstrap_servers was not set explicitly. Its data lives in
    # <RECSTREAM_DATA_DIR>/kafka; its heap is local_heap_mb.
    start_local_broker: bool = True
    local_heap_mb: int = Field(default=512, ge=128)
    topic_prefix: str = ""
    content_topic: str = "content"
    events_topic: str = "user-events"
    requests_topic: str = "recommendation-requests"
    recommendations_topic: str = "recommendations"
    dead_letters_topic: str = "dead-letters"
    # One record per content item once it is stored and searchable (or deleted): apps learn
    # when an item is recommendable, and which media parts failed.
    indexed_topic: str = "content-indexed"
    # Partitions of the keyed input topics (events and requests must match: they share the
    # user table). Only used when recstream creates the topics.
    partitions: int = Field(default=4, ge=1)
    # Replication factor of every topic recstream creates (inputs, outputs, item-activity,
    # table changelogs); 3 with min.insync.replicas 2 on a production cluster.
    replication_factor: int = Field(default=1, ge=1)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    # Consumer group liveness: a worker that stops heartbeating for session_timeout_s loses
    # its partitions to the others (and a restarted worker waits out its old self that long).
    session_timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    rebalance_timeout_s: float = Field(default=20.0, gt=0)
    # Input offsets are committed every commit_interval_s (and every commit_every messages);
    # what a crash re-reads, and the state dedupe absorbs, is at most that much.
    commit_interval_s: float = Field(default=2.8, gt=0)
    # Consumer fetch wait in ms: how long the broker holds a fetch that finds no data. Kafka
    # answers a waiting fetch as soon as data arrives, so this costs no latency.
    fetch_max_wait_ms: int = Field(default=500, ge=0)
    # Messages buffered per partition ahead of the agents (Faust's stream_buffer_maxsize).
    stream_buffer_maxsize: int = Field(default=4096, ge=1)
    # Producer batching: how long a record may wait for others (ms) and a batch's bytes.
    producer_linger_ms: int = Field(default=0, ge=0)
    producer_max_batch_bytes: int = Field(default=16384, ge=1024)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = None

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


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


class EncoderSettings(BaseSettings):
    """ONNX encoders. Env prefix ``RECSTREAM_ENCODER_``."""

    model_config = SettingsConfigDict(env_prefix="RECSTREAM_ENCODER_", extra="ignore")

    # Where exported ONNX files live (never committed). Unset: ~/.cache/recstream/models.
    model_dir: Path = Field(default_factory=lambda: _default_home() / "models")
    # auto: CUDA when a GPU is really usable, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(default=0, ge=0)  # threads per operator; 0: onnxruntime decides
    # Let idle onnxruntime threads busy-wait for work (lower latency on a dedicated machine,
    # wasted cores on a shared one).
    spin: bool = False
    max_tokens: int = Field(default=128, ge=8, le=512)  # text truncation, in tokens
    # Content micro-batch: up to batch_size items or batch_ms milliseconds, whichever first.
    batch_size: int = Field(default=32, ge=1)
    batch_ms: int = Field(default=20, ge=0)
    # Modalities encoded (a subset of text, image, audio); a video feeds image and audio.
    modalities: list[Literal["text", "image", "audio"]] = Field(
        default_factory=lambda: ["text", "image", "audio"]
    )
    # minilm: all-MiniLM-L6-v2 (384-d, English); use: multilingual Universal Sentence Encoder
    # (512-d, 16 languages). Changing it changes the text vector space: re-encode the catalog.
    text_model: Literal["minilm", "use"] = "minilm"
    # CPU only: run the int8-quantised files where the export kept one (text, audio): about
    # 2.5x (text) and 4x (audio) cheaper, min cosine to fp32 0.976 / 0.995 on the parity set.
    int8: bool = False
    # CUDA only: run float16 copies of the models (made on first use, needs the onnx package).
    fp16: bool = True
    # Video: frames sampled per second of video time, at most video_max_frames of them.
    video_fps: float = Field(default=1.0, gt=0, le=30)
    video_max_frames: int = Field(default=16, ge=1, le=256)
    # Audio files and sound tracks are encoded up to this many seconds (2.32 s per model run).
    audio_max_seconds: float = Field(default=30.0, gt=0, le=600)


class MediaSettings(BaseSettings):
    """Fetching media referenced by content items. Env prefix ``RECSTREAM_MEDIA_``."""

    model_config = SettingsConfigDict(env_prefix="RECSTREAM_MEDIA_", extra="ignore")

    # Folders file:// URIs may point into (JSON list, e.g. '["/srv/media"]'); empty: no
    # local files at all.
    file_roots: list[Path] = Field(default_factory=list)
    # Largest medium fetched, in bytes (file or HTTP body).
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    # Largest decoded data: URI, in bytes.
    data_max_bytes: int = Field(default=1024 * 1024, ge=1)
    # Whole HTTP fetch, redirects included, and connection set-up, in seconds.
    timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=3.0, gt=0)
    max_redirects: int = Field(default=3, ge=0, le=20)
    # Allow HTTP to loopback, private (RFC 1918, ULA), link-local and other non-global
    # addresses. Off: such hosts are refused (server-side request forgery guard).
    allow_private: bool = False
    # Networks allowed even when not global (JSON list of CIDRs, e.g. '["10.1.0.0/16"]').
    allow_networks: list[str] = Field(default_factory=list)
    # Media fetched at once per worker (HTTP connections and file reads).
    concurrency: int = Field(default=8, ge=1, le=256)
    user_agent: str = "recstream-media-fetcher/0.1"


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
    # Item popularity ("trending") halves every trending_half_life_hours.
    trending_half_life_hours: float = Field(default=24.0, gt=0)
    # The freshness feature is 0.5 ** (age / freshness_half_life_hours).
    freshness_half_life_hours: float = Field(default=48.0, gt=0)
    # Weighted fusion of per-modality similarity: w_text*sim_text + w_image*sim_image +
    # w_audio*sim_audio, over the modalities both the user and the item have (JSON object).
    modality_weights: dict[str, float] = Field(
        default_factory=lambda: {"text": 1.0, "image": 0.6, "audio": 0.4}
    )
    # Diversity of each list (ranking.ranker.diversify: maximal marginal relevance): 0 ranks
    # by score alone; lambda in (0, 1) trades score against likeness (content cosine) to the
    # items already picked, choosing k among the k * diversity_pool best-scored candidates.
    diversity: float = Field(default=0.0, ge=0, lt=1)
    diversity_pool: int = Field(default=3, ge=1)
    # Candidates fetched per source = k * candidate_factor.
    candidate_factor: int = Field(default=4, ge=1)
    # Per-user memory kept in state: recent event ids (dedupe) and recent liked items (reasons).
    dedupe_window: int = Field(default=32, ge=0)
    recent_positive: int = Field(default=5, ge=1)
    # Bounded user state (ranking/state.py): the latest items kept exactly (short-term interest,
    # collaborative seeds, vector-store exclusions) and the Bloom filter of all seen items.
    recent_items: int = Field(default=24, ge=1, le=256)
    seen_filter_bits: int = Field(default=6144, ge=64)
    # Learned scorer (ranking/ranker.py): prior weights of the features content (long-term
    # interest), recent (short-term interest), cf (co-occurrence with recent items),
    # popularity, freshness and history (the candidate's own co-occurrence row summed over
    # every item the user took); each user learns deltas on top (ranking/learner.py).
    # content/recent 0.5: ML-100k prequential is unchanged by them (HR@10 0.193 vs 0.191 at
    # 0.05), while content-rich catalogs need them (demo taste match 47% vs 20-24%).
    score_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "content": 0.5,
            "recent": 0.5,
            "cf": 1.0,
            "popularity": 0.3,
            "freshness": 0.1,
            "history": 1.0,
        }
    )
    # history (whole-history co-occurrence through the seen filter) / count(candidate) ** beta
    history_beta: float = Field(default=0.7, ge=0)
    # ... each taken neighbour's entry / count(neighbour) ** alpha (cosine-like; applied by
    # the item side when it publishes a row, so a change reaches a row when it is next
    # written; 0: off). 0.25: ML-100k split NDCG@10 +0.007 at the split settings (0.2-0.25
    # best; 0.4+ worse), prequential within noise (docs/evaluation.md).
    history_alpha: float = Field(default=0.25, ge=0)
    cf_alpha: float = Field(default=0.5, ge=0)  # co-occurrence / count(seed item) ** alpha
    cf_beta: float = Field(default=0.5, ge=0)  # ... / count(candidate) ** beta
    recency_decay: float = Field(default=0.8, gt=0, le=1)  # seed d steps back weighs decay**d
    seed_items: int = Field(default=16, ge=1)  # recent items used as collaborative seeds
    # Item side (ranking/collab.py): pairs per event, their decay with distance, the weight of
    # the reverse direction, row size kept per item, neighbours published per item.
    cooc_window: int = Field(default=16, ge=1)
    cooc_decay: float = Field(default=0.9, gt=0, le=1)
    cooc_backward: float = Field(default=0.5, ge=0)
    cooc_max_row: int = Field(default=1000, ge=10)
    cooc_top_n: int = Field(default=100, ge=1)
    # entries of each item's published "history" row (cf_pos/cf_w), its strongest first; the
    # RecBole split protocol wants ~400 (docs/evaluation.md), each costs the per-event path
    cooc_history_top_n: int = Field(default=400, ge=1)
    # Online learning of the user's weight deltas from what they took of earlier lists.
    learning_rate: float = Field(default=0.01, ge=0)
    learning_l2: float = Field(default=0.01, ge=0)
    learning_negatives: int = Field(default=5, ge=0)
    # Reasons: a recent item counts as "liked" ("because you liked <title>") when taken with
    # at least this event weight (like, share, complete, click, a view watched >= 90%).
    reason_liked_weight: float = 0.7


class Settings(BaseSettings):
    """Top level. Env prefix ``RECSTREAM_``."""

    model_config = SettingsConfigDict(env_prefix="RECSTREAM_", extra="ignore")

    app_id: str = "recstream"
    data_dir: Path = Field(default_factory=lambda: _default_home() / "data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Values larger than this (bytes) go to the dead-letter topic unparsed.
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    model_version: str = "recstream-0.1"
    # A user event whose ts is more than this many ms ahead of the worker's clock goes to
    # dead-letters: applied, it would become the user's last_ts and freeze their interest's
    # time decay until real time caught up (a producer's clock, or microseconds sent as ms).
    max_event_ahead_ms: int = Field(default=3_600_000, ge=0)
    # Faust's web server (health, stats); off by default so several workers share a host.
    web_enabled: bool = False
    web_port: int = 6066
    # User events are handled in stream batches of up to events_batch_size events, an event
    # waiting at most events_batch_ms for others to join (Faust's take_events): one store read
    # per batch round for all its users, one item-activity record per partition per round.
    # 1: one event at a time.
    events_batch_size: int = Field(default=64, ge=1)
    events_batch_ms: int = Field(default=2, ge=1)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    ranking: RankingSettings = Field(default_factory=RankingSettings)

    def qdrant_location(self) -> str:
        """Embedded store location: the configured path, or a folder under data_dir."""
        if self.qdrant.path:
            return self.qdrant.path
        return str(self.data_dir / "qdrant")
