"""The encoding stage: content -> vectors, once per item, into Qdrant and the items topic.

A plain consumer group of its own (``<app_id>-encode``): encoding is stateless and heavy, so
encoding workers scale apart from ranking workers (``recstream worker --role encode``). Per
micro-batch of ``content`` (up to RECSTREAM_ENCODER_BATCH_SIZE items or _BATCH_MS ms):

1. parse each item (bad ones: a dead letter with the reason and the original bytes);
2. fetch and encode the media, one batched call per encoder (encoders/pipeline.py); a medium
   that fails leaves the item indexed with what worked, and a dead letter names the part;
3. upsert the vectors into the item store (Qdrant: a server, or the engine embedded in this
   process) and ask it for each item's nearest items (its content neighbours);
4. write each item to the compacted ``<app_id>-items`` topic (streams/internal.py), a
   tombstone for a deleted one, and once the broker has them, one ``content-indexed`` record
   per item: every ranking worker reads the items topic whole (streams/catalog_reader.py);
5. commit the batch's offsets. At-least-once: a crash before the commit encodes the batch
   again, and the same records are written again (the topic is compacted by item id).

Neighbours are searched among the items the store holds: several encoding workers share a
Qdrant server (RECSTREAM_QDRANT_URL); the embedded engine suits one encoding worker (each
would otherwise search only what it encoded itself).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from recstream.clock import now_ms
from recstream.ranking.store import CandidateQuery, ItemRecord, ItemStore
from recstream.streams import schemas
from recstream.streams.internal import ItemMessage
from recstream.streams.retrying import retrying

log = logging.getLogger(__name__)


class ItemEncoder(Protocol):
    """What the stage needs of encoders/ (encoders.pipeline.ContentEncoder)."""

    @property
    def dims(self) -> Mapping[str, int]: ...

    async def encode(self, items: Sequence[schemas.ContentItem]) -> Sequence[Any]: ...

    def close(self) -> None: ...


def record_of(item: schemas.ContentItem, vectors: Mapping[str, np.ndarray]) -> ItemRecord:
    kind = (item.attributes or {}).get("kind")
    return ItemRecord(
        item_id=item.item_id,
        vectors=dict(vectors),
        title=item.title,
        tags=tuple(item.tags or ()),
        published_at=item.published_at,
        kind=str(kind) if kind else None,
    )


class EncodeStage:
    def __init__(
        self,
        *,
        kafka_kwargs: dict[str, Any],
        group_id: str,
        content_topic: str,
        items_topic: str,
        indexed_topic: str,
        dead_letters_topic: str,
        encoder: ItemEncoder,
        store: ItemStore,
        batch_size: int,
        batch_ms: int,
        max_message_bytes: int,
        neighbours: int,
    ) -> None:
        self.kwargs = kafka_kwargs
        self.group_id = group_id
        self.content_topic = content_topic
        self.items_topic = items_topic
        self.indexed_topic = indexed_topic
        self.dead_letters_topic = dead_letters_topic
        self.encoder = encoder
        self.store = store
        self.batch_size = batch_size
        self.batch_ms = batch_ms
        self.max_message_bytes = max_message_bytes
        self.neighbours = neighbours
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.encoded = 0

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(**self.kwargs, acks="all", linger_ms=5)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            self.content_topic,
            **self.kwargs,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            max_poll_records=self.batch_size,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def run(self) -> None:
        """Encode forever (a task of the worker); a bug raises (the worker stops un-committed,
        and its restart encodes the batch again)."""
        assert self._consumer is not None
        while True:
            got = await self._consumer.getmany(
                timeout_ms=max(self.batch_ms, 1), max_records=self.batch_size
            )
            msgs = [m for part in got.values() for m in part]
            if not msgs:
                continue
            await self.handle(msgs)
            offsets = {tp: max(m.offset for m in part) + 1 for tp, part in got.items()}
            await self._consumer.commit(
                {TopicPartition(tp.topic, tp.partition): o for tp, o in offsets.items()}
            )

    async def _send(self, topic: str, key: bytes | None, value: bytes | None) -> Any:
        assert self._producer is not None
        return await self._producer.send(topic, value, key=key)

    async def dead_letter(self, msg: ConsumerRecord, error: str, *, part: str | None = None) -> Any:
        log.warning("dead letter %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, error[:300])
        value = schemas.dead_letter(
            source_topic=msg.topic, partition=msg.partition, offset=msg.offset, error=error,
            payload=msg.value, key=msg.key, ts=now_ms(), part=part,
        )  # fmt: skip
        return await self._send(
            self.dead_letters_topic, schemas.dead_letter_key(msg.key), schemas.dumps(value)
        )

    async def handle(self, batch: Sequence[ConsumerRecord]) -> None:
        t0 = time.perf_counter()
        acks = []
        latest: dict[str, tuple[ConsumerRecord, schemas.ContentItem]] = {}
        for msg in batch:
            try:
                item = schemas.parse_content(msg.value, self.max_message_bytes)
            except schemas.BadInput as exc:
                acks.append(await self.dead_letter(msg, str(exc)))
                continue
            latest.pop(item.item_id, None)  # the newest version counts, in arrival order
            latest[item.item_id] = (msg, item)
        deleted = [i for i, (_, it) in latest.items() if it.deleted]
        live = [(m, it) for m, it in latest.values() if not it.deleted]
        encoded = await self.encoder.encode([it for _, it in live]) if live else []
        records = [record_of(it, enc.vectors) for (_, it), enc in zip(live, encoded, strict=True)]
        await retrying(lambda: self.store.upsert(records), "Qdrant upsert")
        await retrying(lambda: self.store.delete(deleted), "Qdrant delete")
        neighbours = await self._neighbours(records)
        for (msg, it), enc, rec, nbs in zip(live, encoded, records, neighbours, strict=True):
            for part, reason in enc.failures:
                kept = ", ".join(sorted(enc.vectors)) or "no vectors (trending/fresh only)"
                acks.append(
                    await self.dead_letter(
                        msg,
                        f"content item {it.item_id!r}: {part} could not be used: {reason}; "
                        f"the item was indexed with {kept}",
                        part=part,
                    )
                )
            item_msg = ItemMessage(
                item_id=rec.item_id,
                vectors=dict(rec.vectors),
                title=rec.title,
                tags=tuple(rec.tags),
                published_at=rec.published_at,
                kind=rec.kind,
                neighbours=nbs,
            )
            acks.append(
                await self._send(self.items_topic, rec.item_id.encode(), item_msg.to_bytes())
            )
        for item_id in deleted:
            acks.append(await self._send(self.items_topic, item_id.encode(), None))
        await asyncio.gather(*acks)  # the items are durable before anyone hears they are there
        at = now_ms()
        indexed = []
        for (msg, it), enc in zip(live, encoded, strict=True):
            value = schemas.indexed(
                item_id=it.item_id, modalities=sorted(enc.vectors),
                failed=[p for p, _ in enc.failures], deleted=False, indexed_at=at,
                published_at=it.published_at,
            )  # fmt: skip
            indexed.append(await self._send(self.indexed_topic, msg.key, schemas.dumps(value)))
        for item_id in deleted:
            msg = latest[item_id][0]
            value = schemas.indexed(
                item_id=item_id, modalities=[], failed=[], deleted=True, indexed_at=at
            )
            indexed.append(await self._send(self.indexed_topic, msg.key, schemas.dumps(value)))
        await asyncio.gather(*indexed)
        self.encoded += len(records)
        if records or deleted:
            log.info(
                "content: %d items encoded, %d deleted in %.0f ms",
                len(records), len(deleted), (time.perf_counter() - t0) * 1000,
            )  # fmt: skip

    async def _neighbours(self, records: Sequence[ItemRecord]) -> list[list[tuple[str, float]]]:
        """Each item's nearest items by content (the best cosine over its modalities), best
        first, from the store's vector search (itself excluded)."""
        if not records or self.neighbours <= 0:
            return [[] for _ in records]
        queries = [CandidateQuery(dict(r.vectors), [r.item_id], self.neighbours) for r in records]
        answers = await retrying(lambda: self.store.candidates_many(queries), "Qdrant query")
        out = []
        for ans in answers:
            best: dict[str, float] = {}
            for it in ans:
                if it.score is not None and it.score > best.get(it.item_id, -2.0):
                    best[it.item_id] = float(it.score)
            ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
            out.append(ranked[: self.neighbours])
        return out
