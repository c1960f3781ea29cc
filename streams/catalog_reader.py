"""Every ranking worker holds the whole catalog: it reads two compacted topics in full.

The Kafka Streams GlobalKTable pattern, with a plain consumer outside the consumer group
(every worker reads every partition): ``<app_id>-items`` (the encoded items, written by the
encoding stage) and ``<app_id>-item-stats-changelog`` (each item's popularity, count and
co-occurrence row, written by whichever worker owns the item's partition). Each record goes
into the worker's catalog (ranking/catalog.py) as it arrives; ``ready`` is set once both
topics have been read up to their ends as of the start, and the worker handles no event before
(its lists would be made from a partial catalog). ``sync`` waits until every item written
before the call has been read: a request answered after an item's ``content-indexed`` record
sees the item.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from recstream.ranking.catalog import Catalog
from recstream.ranking.item_side import ItemRow
from recstream.streams.internal import ItemMessage

log = logging.getLogger(__name__)


class CatalogReader:
    def __init__(
        self,
        catalog: Catalog,
        kafka_kwargs: dict[str, Any],
        items_topic: str,
        stats_topic: str,
        *,
        on_item: Callable[[ItemMessage], None] | None = None,
        on_delete: Callable[[str], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.kwargs = dict(kafka_kwargs)
        self.items_topic = items_topic
        self.stats_topic = stats_topic
        self.on_item = on_item  # also told of each item (the encoding stage's own index)
        self.on_delete = on_delete
        self.ready = asyncio.Event()
        self.bad_records = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._last_sync = 0.0

    async def start(self) -> None:
        admin = AIOKafkaAdminClient(**self.kwargs)
        await admin.start()
        try:
            described = await admin.describe_topics([self.items_topic, self.stats_topic])
        finally:
            await admin.close()
        self._tps = [
            TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]
        ]
        self._consumer = AIOKafkaConsumer(
            **self.kwargs,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await self._consumer.start()
        self._consumer.assign(self._tps)
        await self._consumer.seek_to_beginning(*self._tps)

    async def catch_up(self) -> None:
        """Read until both topics' ends as of now, then set ``ready`` (the worker calls this
        before it joins its consumer group: it serves nothing from a partial catalog)."""
        assert self._consumer is not None, "start() first"
        t0 = time.monotonic()
        end = await self._consumer.end_offsets(self._tps)
        n = 0
        while not await self._reached(end):
            n += await self._read_some()
        log.info(
            "catalog loaded: %d items, %d records in %.1f s",
            len(self.catalog),
            n,
            time.monotonic() - t0,
        )
        self.ready.set()

    async def run(self) -> None:
        """Read forever (a task of the worker), after ``start`` and ``catch_up``."""
        while True:
            await self._read_some()

    async def _read_some(self) -> int:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=100, max_records=2000)
        for tp, msgs in batch.items():
            for m in msgs:
                self._apply(tp.topic, m.key, m.value)
        return sum(len(x) for x in batch.values())

    async def _reached(self, end: dict[TopicPartition, int]) -> bool:
        assert self._consumer is not None
        for tp, offset in end.items():
            if await self._consumer.position(tp) < offset:
                return False
        return True

    def _apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        cat = self.catalog
        try:
            if topic == self.items_topic:
                if value is None:
                    item_id = (key or b"").decode()
                    cat.delete(item_id)
                    if self.on_delete is not None:
                        self.on_delete(item_id)
                    return
                msg = ItemMessage.from_bytes(value)
                cat.upsert(
                    msg.item_id,
                    msg.vectors,
                    title=msg.title,
                    tags=msg.tags,
                    published_at=msg.published_at,
                    neighbours=msg.neighbours,
                )
                if self.on_item is not None:
                    self.on_item(msg)
            elif value is not None and key is not None and len(key) == 8:
                cat.set_side(int.from_bytes(key, "little"), ItemRow.from_bytes(value))
        except (ValueError, UnicodeDecodeError) as exc:
            # Only recstream writes these topics; a record it cannot read is skipped, not fatal.
            self.bad_records += 1
            log.warning("skipped an unreadable record of %s: %s", topic, exc)

    async def sync(self, timeout_s: float = 5.0, min_interval_s: float = 0.02) -> None:
        """Until every item written to the items topic before this call has been read (at most
        ``timeout_s``; calls within ``min_interval_s`` of the last one share it). The item-stats
        changelog is not waited for: it changes with every event, and popularity a few
        milliseconds old ranks as well."""
        assert self._consumer is not None
        if time.monotonic() - self._last_sync < min_interval_s:
            return
        end = await self._consumer.end_offsets(
            [tp for tp in self._tps if tp.topic == self.items_topic]
        )
        deadline = time.monotonic() + timeout_s
        while not await self._reached(end) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.002)  # the reader task moves the positions
        self._last_sync = time.monotonic()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def topics_of(app_id: str) -> Sequence[str]:
    """The catalog's two topics for an app id: items, item-stats changelog."""
    return (f"{app_id}-items", f"{app_id}-item-stats-changelog")
