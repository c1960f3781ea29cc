"""Build the Faust app of a ranking worker: topics, tables and agents, bound to the handlers
in one place, plus the tasks that run beside them (the catalog reader, and the encoding stage
when this worker encodes too).

Nothing here runs at import time: ``build_app(settings, ...)`` returns a fresh app, so tests
and several workers in one test run each get their own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faust

from recstream.ranking.step import OnlineModel
from recstream.streams.broker import TopicSpec
from recstream.streams.catalog_reader import CatalogReader
from recstream.streams.faust_internals import RecstreamApp, set_current_event
from recstream.streams.handlers import Handlers, Msg
from recstream.streams.settings import Settings
from recstream.streams.skip_guard import SkipGuard

if TYPE_CHECKING:  # a ranking-only worker never loads the encoders, the store or their deps
    from recstream.streams.encode_stage import EncodeStage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicNames:
    content: str
    events: str
    requests: str
    recommendations: str
    dead_letters: str
    indexed: str
    item_activity: str
    items: str
    item_stats: str  # the item-stats Table's changelog (Faust's name for it)

    @classmethod
    def from_settings(cls, s: Settings) -> TopicNames:
        k = s.kafka
        return cls(
            content=k.topic(k.content_topic),
            events=k.topic(k.events_topic),
            requests=k.topic(k.requests_topic),
            recommendations=k.topic(k.recommendations_topic),
            dead_letters=k.topic(k.dead_letters_topic),
            indexed=k.topic(k.indexed_topic),
            item_activity=f"{s.app_id}-item-activity",
            items=f"{s.app_id}-items",
            item_stats=f"{s.app_id}-item-stats-changelog",
        )

    def all(self) -> list[str]:
        return list(vars(self).values())


TABLES = ("users", "item-stats", "weights")
COMPACT = {"cleanup.policy": "compact"}


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the workers use, as it should be created: the wire topics and
    item-activity with RECSTREAM_KAFKA_PARTITIONS partitions; the items topic and the tables'
    changelogs compacted (only each key's latest value matters); Faust's leader topic; all
    with the configured replication factor. Created before anything starts (worker.py), so
    every consumer sees them."""
    k = settings.kafka
    rf = k.replication_factor
    names = TopicNames.from_settings(settings)
    changelogs = {f"{settings.app_id}-{t}-changelog" for t in TABLES}
    compacted = {names.items, *changelogs}
    return [
        *(TopicSpec(t, k.partitions, rf, COMPACT if t in compacted else {}) for t in names.all()),
        *(TopicSpec(t, k.partitions, rf, COMPACT) for t in sorted(changelogs - set(names.all()))),
        TopicSpec(f"{settings.app_id}-__assignor-__leader", 1, rf),
    ]


def faust_config(settings: Settings) -> dict[str, Any]:
    """Faust settings from recstream's (streams/settings.py; values chosen on Apache Kafka,
    docs/kafka.md)."""
    k = settings.kafka
    conf: dict[str, Any] = {
        "broker": f"kafka://{k.bootstrap_servers}",
        "store": "memory://",
        "topic_partitions": k.partitions,
        "topic_replication_factor": k.replication_factor,
        "processing_guarantee": k.processing_guarantee,
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": settings.web_enabled,
        "web_port": settings.web_port,
        "stream_recovery_delay": 0.0,
        "stream_buffer_maxsize": k.stream_buffer_maxsize,
        "broker_session_timeout": k.session_timeout_s,
        "broker_heartbeat_interval": k.heartbeat_interval_s,
        "broker_rebalance_timeout": k.rebalance_timeout_s,
        "broker_commit_interval": k.commit_interval_s,
        "producer_linger": k.producer_linger_ms / 1000,
        "producer_max_batch_size": k.producer_max_batch_bytes,
        # every record written is on min.insync.replicas brokers before it counts as sent
        "producer_acks": -1,
        # Faust's own folder (tables' local files), under data_dir rather than the cwd.
        "datadir": str(settings.data_dir / "faust" / "{conf.id}"),
    }
    if k.security_protocol != "PLAINTEXT":
        import ssl

        ssl_ctx = ssl.create_default_context() if "SSL" in k.security_protocol else None
        if k.sasl_username:
            conf["broker_credentials"] = faust.SASLCredentials(
                username=k.sasl_username,
                password=k.sasl_password or "",
                mechanism=k.sasl_mechanism,
                ssl_context=ssl_ctx,
            )
        elif ssl_ctx is not None:
            conf["broker_credentials"] = ssl_ctx
    return conf


def build_app(
    settings: Settings,
    *,
    model: OnlineModel,
    reader: CatalogReader,
    encode_stage: EncodeStage | None = None,
) -> tuple[faust.App, Handlers]:
    """The worker's Faust app over ``model``; ``reader`` started and caught up already (the
    app's task keeps it reading), ``encode_stage`` (if any) started by the app's task."""
    k = settings.kafka
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)  # Faust makes one level
    app = RecstreamApp(settings.app_id, **faust_config(settings))
    app.fetch_max_wait_ms = k.fetch_max_wait_ms
    names = TopicNames.from_settings(settings)

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=k.partitions,
        )

    events, requests = raw_topic(names.events), raw_topic(names.requests)
    item_activity = raw_topic(names.item_activity)
    # Changelog-backed tables of raw bytes (a Table picks its serializers, also when it
    # recovers, from key_type and value_type: bytes is raw, anything else json). users: key the
    # user id (as a JSON string, as ever), value UserState.to_bytes(); item-stats: key the
    # item's 8-byte hash, value ItemRow.to_bytes() (ranking/item_side.py), whose changelog
    # every worker's catalog reads; weights: key a user-events partition number, value the
    # shared ranking weights learned from its events (ranking/learner.SharedWeights.to_bytes).
    users = app.Table(
        TABLES[0],
        key_type=str,  # Faust's serializer for it: json
        value_type=bytes,  # raw
        partitions=k.partitions,
    )
    item_stats = app.Table(
        TABLES[1],
        key_type=bytes,
        value_type=bytes,
        partitions=k.partitions,
    )
    weights = app.Table(
        TABLES[2],
        key_type=str,
        value_type=bytes,
        partitions=k.partitions,
    )
    handlers = Handlers(
        settings,
        model=model,
        users=users,
        item_stats=item_stats,
        recommendations=raw_topic(names.recommendations),
        dead_letters=raw_topic(names.dead_letters),
        item_activity=item_activity,
        inputs={names.events: events, names.requests: requests},
        catalog=reader,
        activity_partitions=k.partitions,
        table_scope=_table_scope,
        weights=weights,
    )

    async def guarded(work: Awaitable[None]) -> None:
        # Bad input never gets here (handlers dead-letter it). What does is a bug: crash
        # loudly, un-acked, so the restarted worker processes the message again.
        try:
            await work
        except Exception as exc:
            log.exception("worker bug while processing a message; stopping the worker")
            await app.crash(exc)
            raise

    guard = SkipGuard(app, k.client_kwargs())

    async def with_missed(event: faust.EventT) -> list[Msg]:
        """The event's message, after any that Faust skipped before it (SkipGuard)."""
        try:
            missed = await guard.missed(event.message)
        except Exception as exc:  # the broker is unreachable: stop un-acked, like a bug
            log.exception("could not re-read messages Faust skipped; stopping the worker")
            await app.crash(exc)
            raise
        return [*(_msg(r, event) for r in missed), _msg(event.message, event)]

    def bind(
        topic: faust.TopicT,
        name: str,
        batch: tuple[int, int] | None,
        fn: Callable[[Any], Awaitable[None]],
    ) -> None:
        """``batch``: (most messages, longest wait in ms) for a handler of message lists
        (Faust's take_events: the batch is acked once handled); None: one message at a time.
        No message is handled before the catalog is loaded (its lists would be made from a
        part of it)."""

        async def agent(stream: faust.StreamT) -> None:
            await reader.ready.wait()
            if batch is not None:
                # faust's StreamT declares no take_events (faust.Stream, the runtime type, has it)
                async for evs in stream.take_events(  # type: ignore[attr-defined]
                    batch[0], within=max(batch[1], 1) / 1000
                ):
                    msgs = [m for e in evs for m in await with_missed(e)]
                    await guarded(fn(msgs))
            else:
                async for ev in stream.events():
                    for m in await with_missed(ev):
                        await guarded(fn(m))

        agent.__name__ = agent.__qualname__ = name.replace("-", "_")
        app.agent(topic, name=name)(agent)

    if settings.events_batch_size > 1:
        batch = (settings.events_batch_size, settings.events_batch_ms)
        bind(events, "user-events", batch, handlers.on_events)
    else:
        bind(events, "user-events", None, handlers.on_event)
    bind(requests, "recommendation-requests", None, handlers.on_request)
    if settings.activity_batch_size > 1:
        batch = (settings.activity_batch_size, settings.activity_batch_ms)
        bind(item_activity, "item-activity", batch, handlers.on_item_activities)
    else:
        bind(item_activity, "item-activity", None, handlers.on_item_activity)

    @app.task
    async def catalog() -> None:  # started and caught up before the app (streams/worker.py)
        await guarded(_keep_reading(reader))

    if encode_stage is not None:

        @app.task
        async def encode() -> None:
            await guarded(_serve(encode_stage))

    return app, handlers


async def _serve(stage: EncodeStage) -> None:
    await stage.start()
    await _keep_reading(stage)


async def _keep_reading(service: CatalogReader | EncodeStage) -> None:
    """Run a started service until the worker stops."""
    try:
        await service.run()
    finally:
        await service.stop()


def _msg(m: Any, event: faust.EventT) -> Msg:
    """A Faust message or an aiokafka ConsumerRecord (re-read by SkipGuard: ``event`` is the
    one after it, of the same partition) as a handler message."""
    return Msg(
        m.topic, m.partition, m.offset, m.key, m.value, headers=tuple(m.headers or ()),
        origin=event,
    )  # fmt: skip


def _table_scope(msg: Msg) -> None:
    """Make ``msg``'s event Faust's current event before a table write made for it: a Table
    sends each change to the changelog partition of the current event (the input partition
    the key lives in). A stream batch (take_events) holds events of several partitions, and
    its handler runs outside the stream's own iteration, where no current event is set."""
    if msg.origin is not None:
        set_current_event(msg.origin)
