"""SkipGuard: re-read what Faust's stream skipped after a resume (see the class)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from recstream.streams.faust_internals import committed_offset

log = logging.getLogger(__name__)


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

    Measured in a kill -9 stress loop on the Tansu broker recstream used before Apache Kafka:
    after a restart, Faust 0.15.3 seeks each stream partition to its committed offset C when table
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
            expected = committed_offset(self.app, tp)
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
