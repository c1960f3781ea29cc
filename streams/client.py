"""App-side helpers: what an app backend does, with aiokafka and the wire formats.

    async with RecstreamClient(settings) as rc:
        await rc.publish_content({"item_id": "a1", "title": "..."})
        await rc.send_event({"user_id": "u1", "item_id": "a1", "type": "like", "ts": now})

Messages are keyed as the wire contract says (content by item_id, events and requests by
user_id) with the Kafka default (murmur2) partitioner, so a user's events and requests land on
the partition that holds that user's state.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterable
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from recstream.clock import now_ms
from recstream.streams.settings import Settings


def key_field_for(settings: Settings, topic: str) -> str | None:
    k = settings.kafka
    by_name = {
        k.content_topic: "item_id",
        k.events_topic: "user_id",
        k.requests_topic: "user_id",
        k.recommendations_topic: "user_id",
    }
    return by_name.get(topic)


class RecstreamClient:
    def __init__(self, settings: Settings, **producer_kwargs: Any):
        self.settings = settings
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=0, **producer_kwargs
        )

    async def __aenter__(self) -> RecstreamClient:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def _send(self, topic_setting: str, key: str, value: dict[str, Any] | bytes) -> None:
        topic = self.settings.kafka.topic(topic_setting)
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        await self.producer.send(topic, raw, key=key.encode())

    async def publish_content(self, item: dict[str, Any]) -> None:
        await self._send(self.settings.kafka.content_topic, item["item_id"], item)

    async def send_event(self, event: dict[str, Any]) -> None:
        event.setdefault("ts", now_ms())
        await self._send(self.settings.kafka.events_topic, event["user_id"], event)

    async def request(
        self, user_id: str, *, request_id: str | None = None, k: int | None = None
    ) -> None:
        req: dict[str, Any] = {"user_id": user_id, "ts": now_ms()}
        if request_id:
            req["request_id"] = request_id
        if k:
            req["k"] = k
        await self._send(self.settings.kafka.requests_topic, user_id, req)

    async def flush(self) -> None:
        await self.producer.flush()


async def consume(
    settings: Settings, topic_setting: str, *, from_beginning: bool = False
) -> AsyncIterator[tuple[bytes | None, Any, int]]:
    """Yield (key, decoded JSON or raw bytes, kafka timestamp ms) from a topic, no group."""
    consumer = AIOKafkaConsumer(
        settings.kafka.topic(topic_setting),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        async for msg in consumer:
            try:
                value: Any = orjson.loads(msg.value) if msg.value is not None else None
            except orjson.JSONDecodeError:
                value = msg.value
            yield msg.key, value, msg.timestamp
    finally:
        await consumer.stop()


async def produce_lines(
    settings: Settings,
    topic_setting: str,
    lines: IO[bytes] | Iterable[bytes],
    *,
    key_field: str | None,
) -> int:
    """`recstream produce`: each non-empty line is sent as-is (bytes), keyed by its key field.
    Lines that are not JSON objects are still sent (the worker dead-letters them)."""
    field = key_field or key_field_for(settings, topic_setting)
    n = 0
    async with RecstreamClient(settings) as rc:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            key = None
            if field:
                try:
                    obj = orjson.loads(line)
                    key = str(obj[field]) if isinstance(obj, dict) and field in obj else None
                except orjson.JSONDecodeError:
                    key = None
            await rc.producer.send(
                settings.kafka.topic(topic_setting), line, key=key.encode() if key else None
            )
            n += 1
        await rc.flush()
    return n


async def tail(
    settings: Settings, topic_setting: str, *, from_beginning: bool, limit: int = 0
) -> None:
    n = 0
    async for _key, value, _ in consume(settings, topic_setting, from_beginning=from_beginning):
        out = value if isinstance(value, (bytes, type(None))) else orjson.dumps(value)
        sys.stdout.buffer.write((out or b"null") + b"\n")
        sys.stdout.flush()
        n += 1
        if limit and n >= limit:
            return
        await asyncio.sleep(0)
