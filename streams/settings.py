"""One settings object for the whole service, read from ``RECSTREAM_*`` environment variables.

Every section is its own ``BaseSettings`` with its own prefix, so the variable names are flat
and predictable (``RECSTREAM_KAFKA_BOOTSTRAP_SERVERS``, ``RECSTREAM_QDRANT_URL``...).
Defaults run locally with no configuration at all. The README lists every field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recstream.encoders.settings import EncoderSettings, MediaSettings
from recstream.paths import default_home
from recstream.ranking.settings import QdrantSettings, RankingSettings

__all__ = [
    "EncoderSettings",
    "KafkaSettings",
    "MediaSettings",
    "QdrantSettings",
    "RankingSettings",
    "Settings",
]

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


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
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    # Messages buffered per partition ahead of the agents (Faust's stream_buffer_maxsize).
    stream_buffer_maxsize: int = Field(default=4096, ge=1)
    # Producer batching: how long a record may wait for others (ms) and a batch's bytes.
    producer_linger_ms: int = Field(default=5, ge=0)
    producer_max_batch_bytes: int = Field(default=16384, ge=1024)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = None

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def client_kwargs(self) -> dict[str, Any]:
        """aiokafka connection arguments (bootstrap, TLS, SASL)."""
        out: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            import ssl

            out["security_protocol"] = self.security_protocol
            if "SSL" in self.security_protocol:
                out["ssl_context"] = ssl.create_default_context()
            if self.sasl_username:
                out["sasl_mechanism"] = self.sasl_mechanism
                out["sasl_plain_username"] = self.sasl_username
                out["sasl_plain_password"] = self.sasl_password or ""
        return out


class Settings(BaseSettings):
    """Top level. Env prefix ``RECSTREAM_``."""

    model_config = SettingsConfigDict(env_prefix="RECSTREAM_", extra="ignore")

    app_id: str = "recstream"
    # What `recstream worker` runs (--role overrides it): "rank" (events, requests, the item
    # side), "encode" (content -> encoders -> Qdrant and the items topic), "all" (both).
    worker_role: Literal["all", "rank", "encode"] = "all"
    data_dir: Path = Field(default_factory=lambda: default_home() / "data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Values larger than this (bytes) go to the dead-letter topic unparsed.
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    # The version of the user states this worker writes (it reads every version). A rolling
    # upgrade from a release that reads only version 3 (before 2026-12-07) runs in two
    # bounces, as Kafka Streams' upgrade.from: first every worker on this release with 3 (the
    # old workers still running can read what the new ones write), then again with 4.
    user_state_version: Literal[3, 4] = 4
    model_version: str = "recstream-0.1"
    # A user event whose ts is more than this many ms ahead of the worker's clock goes to
    # dead-letters: applied, it would become the user's last_ts and freeze their interest's
    # time decay until real time caught up (a producer's clock, or microseconds sent as ms).
    max_event_ahead_ms: int = Field(default=3_600_000, ge=0)
    # Faust's web server (health, stats); off by default so several workers share a host.
    web_enabled: bool = False
    web_port: int = 6066
    # User events are handled in stream batches of up to events_batch_size events, an event
    # waiting at most events_batch_ms for others to join (Faust's take_events): one online step
    # per batch round for all its users, one item-activity record per partition per round.
    # 1: one event at a time. 10 ms, measured on Apache Kafka (docs/benchmarks.md): a step's
    # cost is mostly per round, so at 500 events/s 2 ms batches (one or two events) saturated
    # the worker (p50 1.6 s, backlog growing) where 10 ms kept up (p50 91 ms); 20 ms no better.
    events_batch_size: int = Field(default=64, ge=1)
    events_batch_ms: int = Field(default=10, ge=1)
    # Item-activity records are folded a stream batch at a time (up to activity_batch_size
    # records, flushed every activity_batch_ms): each item changed in a batch is written to the
    # item-stats Table, its changelog and so every worker's catalog once, with its latest value.
    # The record cache of a Kafka Streams aggregation, which forwards each key's latest value
    # once per commit interval; 100 ms is Kafka Streams' commit interval under exactly-once.
    # Popularity and co-occurrence reach the catalogs up to that much later. 1: each record.
    activity_batch_size: int = Field(default=1024, ge=1)
    activity_batch_ms: int = Field(default=100, ge=1)

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
