"""Faust's aiokafka transport, adjusted for the brokers it meets.

Fetch wait: Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. Real Kafka
answers a waiting fetch as soon as data arrives, so that costs nothing there; Tansu always waits
the full time, which would add ~1.5 s to every hop. This transport lets the worker set it.

End offsets (Tansu only): Tansu reports a partition's end offset as its last record batch's
base offset + 1. Faust recovers tables by reading changelogs up to that offset, so the last
batch's updates would be lost on restart. ``true_end_offsets`` reads the real end. (The first
workaround, one record per producer batch, capped a worker at ~44 events/s.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import aiokafka
import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger(__name__)


async def true_end_offsets(
    bootstrap_servers: str, reported: Mapping[TopicPartition, int], timeout_s: float = 60.0
) -> dict[TopicPartition, int]:
    """End offsets corrected for Tansu's ListOffsets defect.

    Tansu answers ListOffsets(latest) with the base offset of the partition's last record
    batch + 1, so after a batch of n records it reports n - 1 too few (measured: records 0-7 in
    batches of 5 and 3 -> "end offset 6"). Faust's table recovery reads a changelog up to that
    offset and would silently drop the last batch's updates. A fetch from reported - 1 returns
    that whole last batch, and the fetch response's high watermark is right (8 above).

    ``timeout_s``: a kill -9 stress loop (15 restarts in 15 minutes, one Tansu in memory for
    all of it) once needed more than the first 10 s here for two large item-stats changelog
    partitions, and the worker stopped at recovery; a minute is cheap at a restart."""
    need = [tp for tp, end in reported.items() if end > 0]
    out = dict(reported)
    if not need:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    await consumer.start()
    try:
        consumer.assign(need)
        for tp in need:
            consumer.seek(tp, reported[tp] - 1)
        pending = set(need)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read the true end offsets of {sorted(pending)}")
            got = await consumer.getmany(*pending, timeout_ms=200)
            for tp in list(pending):
                hw = consumer.highwater(tp)
                if tp in got and hw is not None:
                    last = max(r.offset for r in got[tp])
                    out[tp] = max(reported[tp], hw, last + 1)
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return out


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: int | None = None
    # Set on Tansu: recovery's end offsets are corrected by :func:`true_end_offsets`.
    tansu_bootstrap: str | None = None

    async def _highwaters(self, partitions: list[TopicPartition]) -> Mapping[TopicPartition, int]:
        reported = await super()._highwaters(partitions)
        if self.tansu_bootstrap is None:
            return reported
        return await true_end_offsets(self.tansu_bootstrap, reported)

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        if self.fetch_max_wait_ms is not None:
            # Read by AIOKafkaConsumer.start() when it builds its Fetcher (not started yet).
            consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


def transport_class(
    fetch_max_wait_ms: int | None, tansu_bootstrap: str | None = None
) -> type[faust_aiokafka.Transport]:
    thread_cls = type(
        "ConsumerThread",
        (_ConsumerThread,),
        {"fetch_max_wait_ms": fetch_max_wait_ms, "tansu_bootstrap": tansu_bootstrap},
    )

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return thread_cls(self, loop=self.loop, beacon=self.beacon)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport


class RecstreamApp(faust.App):
    """faust.App whose consumer uses :func:`transport_class`."""

    fetch_max_wait_ms: int | None = None
    tansu_bootstrap: str | None = None  # set when the broker is Tansu

    def _new_transport(self) -> Any:
        cls = transport_class(self.fetch_max_wait_ms, self.tansu_bootstrap)
        return cls(self.conf.broker_consumer, self)


def client_kwargs(settings: Any) -> dict[str, Any]:
    """aiokafka connection arguments from KafkaSettings (bootstrap, TLS, SASL)."""
    k = settings
    out: dict[str, Any] = {"bootstrap_servers": k.bootstrap_servers}
    if k.security_protocol != "PLAINTEXT":
        import ssl

        out["security_protocol"] = k.security_protocol
        if "SSL" in k.security_protocol:
            out["ssl_context"] = ssl.create_default_context()
        if k.sasl_username:
            out["sasl_mechanism"] = k.sasl_mechanism
            out["sasl_plain_username"] = k.sasl_username
            out["sasl_plain_password"] = k.sasl_password or ""
    return out


async def read_range(
    kwargs: Mapping[str, Any], tp: TopicPartition, start: int, end: int, timeout_s: float = 30.0
) -> list[Any]:
    """The records of ``tp`` with offsets in [start, end), read by a consumer outside the group
    (fewer where the log has holes: compaction, transaction markers)."""
    consumer = AIOKafkaConsumer(
        **kwargs, enable_auto_commit=False, fetch_max_wait_ms=10, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not re-read {tp} offsets {start}..{end - 1}")
            got = await consumer.getmany(tp, timeout_ms=200)
            out += [r for r in got.get(tp, []) if start <= r.offset < end]
        return out
    finally:
        await consumer.stop()


class SkipGuard:
    """Re-reads what Faust skipped: every message a partition's stream did not deliver.

    Measured (a kill -9 stress loop on Tansu, tests/integration/test_restart.py): after a
    restart, Faust 0.15.3 seeks each stream partition to its committed offset C when table
    recovery ends, yet it sometimes delivers C + 1 .. C + 3 first, or C and C + 1 and then
    C + 6: records in between were drained from aiokafka and never delivered (two fetch
    positions racing around the resume). Faust's gap logic then counts the hole as acknowledged
    and commits past it, so those events would never be processed by anyone.

    The guard follows each partition's offsets within a consumer generation: the first
    message is compared with the committed offset Faust seeked to, every later one with the
    previous message + 1. A hole is re-read by a consumer outside the group and handed to the
    handler first, in order. Redelivered messages are harmless (handlers are idempotent per
    partition offset). A log with real holes (compaction, transaction markers) costs one
    re-read per hole that finds nothing."""

    def __init__(self, app: faust.App, kafka_kwargs: Mapping[str, Any]) -> None:
        self.app = app
        self.kwargs = dict(kafka_kwargs)
        self._generation: dict[Any, int] = {}  # tp -> consumer generation it is followed in
        self._next: dict[Any, int | None] = {}  # tp -> the offset expected next
        self.repaired = 0  # messages re-read (for tests and logs)

    async def missed(self, message: Any) -> list[Any]:
        """Records before ``message`` (same partition) that Faust skipped, oldest first."""
        tp = message.tp
        generation = self.app.consumer_generation_id
        if self._generation.get(tp) != generation:
            self._generation[tp] = generation
            # Set by Faust's seek to the committed offsets (Consumer.perform_seek) when the
            # partition was assigned: where this partition's stream was to resume.
            expected = getattr(self.app.consumer, "_committed_offset", {}).get(tp)
        else:
            expected = self._next.get(tp)
        self._next[tp] = max(expected or 0, message.offset + 1)
        if expected is None or message.offset <= expected:
            return []
        records = await read_range(
            self.kwargs, TopicPartition(tp.topic, tp.partition), expected, message.offset
        )
        if records:
            self.repaired += len(records)
            log.warning(
                "Faust delivered %s offset %d where %d was next: re-reading %d skipped "
                "record(s) before it",
                tp,
                message.offset,
                expected,
                len(records),
            )
        return records
