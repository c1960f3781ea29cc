"""Poison pills: invalid messages as large as the broker takes, on every topic the worker reads.

Each one must end as a dead letter that the producer and the broker accept (cut to
schemas.DEAD_LETTER_MAX_BYTES, saying so, with the original's size and SHA-256), its offset
committed, and the worker must go on with the next valid message of the same partition. A
dead letter over the producer's limit would crash the worker on that message at every restart.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from recstream.clock import now_ms
from recstream.ranking.user_state import item_hash
from recstream.streams import schemas
from recstream.streams.app import TopicNames
from recstream.streams.internal import hash_key, key_partition
from tests.conftest import AppHarness, settings_for

pytestmark = pytest.mark.integration

# The worker's RECSTREAM_MAX_MESSAGE_BYTES: below the broker's default message.max.bytes
# (1,048,588 bytes per record batch), so a value over it still reaches the worker, and high
# enough that the values just under it are parsed (JSON, schema) rather than refused unread.
MAX_BYTES = 1_000_000
NEAR = MAX_BYTES - 10_000
OVER = MAX_BYTES + 30_000
BIG_KEY = 6_000  # over schemas.DEAD_LETTER_MAX_KEY_BYTES


def pad_to(prefix: bytes, size: int, suffix: bytes = b'"}') -> bytes:
    """A JSON object ``prefix`` + a string of 'x' + ``suffix``, ``size`` bytes in all."""
    return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix


def poisons(topic: str, names: TopicNames, item_id: str) -> list[tuple[bytes, bytes, str]]:
    """(key, value, what the error says) of three poison messages for ``topic``: garbage just
    under the worker's limit (with a key over the dead letter's key bound), a JSON object just
    under it whose one huge string makes it invalid, and an object over the limit."""
    garbage = random.Random(topic).randbytes(NEAR)
    key = random.Random(BIG_KEY).randbytes(BIG_KEY)
    if topic == names.content:
        near = pad_to(b'{"item_id": "poison", "title": "t", "tags": "', NEAR)
        over = pad_to(b'{"item_id": "poison", "title": "', OVER)
        return [
            (key, garbage, "not valid JSON"),
            (b"poison", near, "field 'tags'"),
            (b"poison", over, f"over the {MAX_BYTES:,}-byte limit"),
        ]
    if topic == names.events:
        head = f'{{"user_id": "u", "item_id": "{item_id}", "ts": {now_ms()}, '.encode()
        return [
            (key, garbage, "not valid JSON"),
            # the rejection quotes the value of 'type': only its start
            (b"u", pad_to(head + b'"type": "', NEAR), "field 'type' is 'xxx"),
            (b"u", pad_to(head + b'"type": "like", "pad": "', OVER), "-byte limit"),
        ]
    if topic == names.requests:
        return [
            (key, garbage, "not valid JSON"),
            (b"u", pad_to(b'{"user_id": "', NEAR), "field 'user_id'"),
            (b"u", pad_to(b'{"user_id": "u", "pad": "', OVER), "-byte limit"),
        ]
    assert topic == names.item_activity
    # item-activity has no size check: both large objects fail on their huge 'w', and the
    # error quotes it whole (float() does), so the dead letter's error is cut too
    head = f'{{"updates": [{{"item_id": "{item_id}", "ts": 1, "pairs": [], "w": "'.encode()
    return [
        (key, garbage, "invalid item-activity record"),
        (item_id.encode(), pad_to(head, NEAR, b'"}]}'), "could not convert string to float"),
        (item_id.encode(), pad_to(head, OVER, b'"}]}'), "could not convert string to float"),
    ]


async def committed(group: str, bootstrap: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        got = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in got.items()}


def test_poison_pills_go_to_dead_letters_and_the_worker_goes_on(
    make_worker, worker_env, catalog
) -> None:
    items = catalog[:4]
    worker = make_worker(RECSTREAM_MAX_MESSAGE_BYTES=str(MAX_BYTES))
    s = settings_for(worker_env)
    names = TopicNames.from_settings(s)
    bootstrap = s.kafka.bootstrap_servers
    parts = s.kafka.partitions
    liked = items[0]["item_id"]
    fresh = {"item_id": "after-the-poison", "title": "Fresh after the poison", "tags": ["jazz"]}
    # Every poison message goes to the partition its topic's next valid message goes to, so
    # the valid one is answered only if the worker got past the poison.
    partition_of = {
        names.content: key_partition(fresh["item_id"].encode(), parts),
        names.events: key_partition(b"u", parts),
        names.requests: key_partition(b"u", parts),
        # the valid event's item-activity record: keyed by its item's hash
        names.item_activity: key_partition(hash_key(item_hash(liked)), parts),
    }

    async def scenario() -> None:
        dead: dict[tuple[str, int, int], tuple[bytes | None, bytes]] = {}

        async def read_dead_letters() -> None:
            # raw records: their size and Kafka key are what the broker was asked to take
            consumer = AIOKafkaConsumer(
                names.dead_letters,
                bootstrap_servers=bootstrap,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                fetch_max_wait_ms=10,
            )
            await consumer.start()
            try:
                async for m in consumer:
                    v = orjson.loads(m.value)
                    dead[(v["source_topic"], v["partition"], v["offset"])] = (m.key, m.value)
            finally:
                await consumer.stop()

        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=0, max_request_size=2_000_000
        )
        async with AppHarness(s, worker) as app:
            await app.wait_ready()
            await app.publish_catalog(items)
            reader = asyncio.create_task(read_dead_letters())
            await producer.start()
            sent: list[tuple[str, int, int, bytes, bytes, str]] = []
            try:
                for topic, partition in partition_of.items():
                    for key, value, why in poisons(topic, names, liked):
                        # one at a time: each its own record batch, under the broker's limit
                        md = await producer.send_and_wait(
                            topic, value, key=key, partition=partition
                        )
                        sent.append((topic, md.partition, md.offset, key, value, why))
            finally:
                await producer.stop()
            # ... then a valid message on each of those partitions
            await app.client.publish_content(fresh)
            event_id = uuid.uuid4().hex
            event = {
                "user_id": "u",
                "item_id": liked,
                "type": "like",
                "ts": now_ms(),
                "event_id": event_id,
            }
            await app.client.send_event(event)
            await app.client.flush()
            await app.wait(lambda: app.rec_for(event_id) is not None, what="the valid event")
            await app.wait(
                lambda: app.indexed_record(fresh["item_id"]) is not None,
                what="the valid content item indexed",
            )
            answer = await app.ask("u")
            assert liked not in [r["item_id"] for r in answer["items"]]
            await app.wait(
                lambda: len(dead) >= len(sent),
                what="a dead letter for every poison message",
                detail=lambda: f"got {sorted(dead)}; sent {[t[:3] for t in sent]}",
            )
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass

            assert len(dead) == len(sent)
            sizes = []
            for topic, partition, offset, key, value, why in sent:
                dl_key, raw = dead[(topic, partition, offset)]
                sizes.append(len(raw))
                assert len(raw) <= schemas.DEAD_LETTER_MAX_BYTES
                d = orjson.loads(raw)
                assert why in d["error"], (topic, why, d["error"][:300])
                assert len(d["error"]) <= schemas.DEAD_LETTER_MAX_ERROR_CHARS + 100
                assert d["payload_truncated"] is True
                assert d["payload_size"] == len(value)
                assert d["payload_sha256"] == hashlib.sha256(value).hexdigest()
                kept = base64.b64decode(d["payload"])
                assert value.startswith(kept) and len(kept) > 300_000
                assert base64.b64decode(d["key"]) == dl_key == key[: len(dl_key)]
                if len(key) > schemas.DEAD_LETTER_MAX_KEY_BYTES:
                    assert d["key_truncated"] is True and d["key_size"] == len(key)
                    assert d["key_sha256"] == hashlib.sha256(key).hexdigest()
                    assert len(dl_key) == schemas.DEAD_LETTER_MAX_KEY_BYTES
                else:
                    assert dl_key == key and "key_truncated" not in d
            item_activity_errors = [
                orjson.loads(dead[t[:3]][1]) for t in sent if t[0] == names.item_activity
            ]
            assert any(d.get("error_truncated") for d in item_activity_errors)
            print(f"dead-letter sizes (bytes): {sizes}")

            # Every poison message is acknowledged: the group's committed offsets are past them
            # (a poison message left uncommitted is read again, forever).
            last = {(t[0], t[1]): t[2] for t in sent}
            deadline = time.monotonic() + 60
            while True:
                # content is read by the encoding stage's own group, the rest by the worker's
                offsets = {
                    **await committed(s.app_id, bootstrap),
                    **await committed(f"{s.app_id}-encode", bootstrap),
                }
                behind = {
                    tp: off
                    for tp, off in last.items()
                    if offsets.get(TopicPartition(*tp), -1) <= off
                }
                if not behind:
                    break
                assert time.monotonic() < deadline, f"offsets not committed past {behind}"
                await asyncio.sleep(0.5)
            assert worker.alive(), worker.diagnosis()

    asyncio.run(scenario())
