"""The pytest plugin apps use (recstream/testing.py), as an app's test suite uses it: the
README's example, word for word, and an app producing with its own client."""

from __future__ import annotations

import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from recstream.testing import Recstream

pytestmark = pytest.mark.integration


def test_a_like_shapes_the_next_list(recstream: Recstream) -> None:
    recstream.publish(
        [
            {"item_id": "bread", "title": "Sourdough at home"},
            {"item_id": "rye", "title": "Baking rye bread"},
            {"item_id": "jazz", "title": "Modal jazz piano"},
        ]
    )
    rec = recstream.send_event({"user_id": "u1", "item_id": "bread", "type": "like"})
    assert [i["item_id"] for i in rec["items"]][0] == "rye"


def test_an_app_producing_with_its_own_client(recstream: Recstream) -> None:
    recstream.publish([{"item_id": f"i{n}", "title": f"item {n}"} for n in range(5)])

    async def app_code() -> None:  # what the app under test does with its own producer
        producer = AIOKafkaProducer(bootstrap_servers=recstream.bootstrap_servers)
        await producer.start()
        try:
            ts = int(time.time() * 1000)  # epoch ms, now: requests count the time since it
            ev = {"user_id": "u9", "item_id": "i3", "type": "view", "ts": ts, "event_id": "e-1"}
            await producer.send_and_wait(recstream.topics.events, orjson.dumps(ev), key=b"u9")
            await producer.send_and_wait(recstream.topics.events, b"not json", key=b"u9")
        finally:
            await producer.stop()

    import asyncio

    asyncio.run(app_code())
    rec = recstream.recommendation_for("e-1")
    assert rec["user_id"] == "u9" and "i3" not in [i["item_id"] for i in rec["items"]]
    recstream.wait_for(lambda: len(recstream.dead_letters) == 1, what="the dead letter")
    assert recstream.dead_letters[0]["source_topic"] == recstream.topics.events
    asked, first = recstream.ask("u9", k=2)["items"], rec["items"][:2]
    assert [(i["item_id"], i["reason"]) for i in asked] == [
        (i["item_id"], i["reason"]) for i in first
    ]
    # scores move with the time of asking (the short-term features fade, by under 0.1% in the
    # first seconds)
    assert [i["score"] for i in asked] == pytest.approx([i["score"] for i in first], rel=1e-3)
