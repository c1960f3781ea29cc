"""Tansu's end-offset defect and the correction table recovery relies on (streams/transport.py).

Faust recovers a table by reading its changelog up to the partition's end offset. Tansu
reports the last batch's base offset + 1, so without the correction the last batch's updates
would be dropped on every restart. This test pins both the defect (so we notice when Tansu
fixes it) and the correction.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.transport import true_end_offsets

pytestmark = pytest.mark.integration


async def _batches(bootstrap: str, topic: str, sizes: list[int]) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    offsets = []
    try:
        for n in sizes:  # each group is sent together: one multi-record batch
            futs = [await producer.send(topic, b"v%d" % i, partition=0) for i in range(n)]
            offsets += [(await f).offset for f in futs]
    finally:
        await producer.stop()
    return offsets


def test_end_offsets_are_corrected_after_multi_record_batches(broker: str) -> None:
    topic = f"offsets-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        offsets = await _batches(broker, topic, [5, 3])
        assert offsets == list(range(8))
        consumer = AIOKafkaConsumer(bootstrap_servers=broker)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
            reported = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        return reported, await true_end_offsets(broker, reported)

    reported, corrected = asyncio.run(run())
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    # The defect: 8 records, but "end offset" = base offset of the batch of 3 (5) + 1.
    assert reported[p0] == 6, f"Tansu's end offset is now {reported[p0]}: defect fixed?"
    assert corrected == {p0: 8, p1: 0}  # an empty partition is left alone
