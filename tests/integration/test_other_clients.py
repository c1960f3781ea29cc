"""Apps on librdkafka (confluent-kafka here; kcat, Go, .NET and Node clients alike) partition
keys with CRC32 by default, not murmur2 as the users Table does: their events and requests
still reach the user's state. The worker forwards each such record to the partition that owns
its user; the user's list reflects the events, the state is written to the owning partition's
changelog, and a forward sent twice is applied once."""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confluent_kafka import Producer

from recstream.clock import now_ms
from recstream.ranking.user_state import UserState, event_hash
from recstream.streams.handlers import FORWARDED_FROM, key_partition
from tests.conftest import AppHarness, settings_for

pytestmark = pytest.mark.integration

# alice and bob: CRC32 and murmur2 partitions differ (4 partitions); dana: they agree
USERS = ("alice", "bob", "dana")

Record = tuple[int, int, bytes | None, bytes | None, dict[str, bytes]]


async def read_topic(bootstrap: str, topic: str, partitions: int) -> list[Record]:
    """(partition, offset, key, value, headers) of every record now in ``topic``."""
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out: list[Record] = []
        deadline = time.monotonic() + 30
        while any([await c.position(tp) < end[tp] for tp in tps]):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for tp, msgs in (await c.getmany(timeout_ms=200)).items():
                out += [(tp.partition, m.offset, m.key, m.value, dict(m.headers)) for m in msgs]
        return out
    finally:
        await c.stop()


class LibrdkafkaApp:
    """An app producing with confluent-kafka's defaults (partitioner: consistent_random, i.e.
    CRC32 of the key), recording where each record landed."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self.landed: list[tuple[str, int, int, bytes | None]] = []  # topic, partition, offset, key

    def _delivered(self, err: Any, msg: Any) -> None:
        assert err is None, err
        self.landed.append((msg.topic(), msg.partition(), msg.offset(), msg.key()))

    async def send(
        self, topic: str, key: str | None, value: dict[str, Any], partition: int | None = None
    ) -> tuple[int, int]:
        """Produce, wait for the broker's ack; (partition, offset) it landed at."""
        extra = {} if partition is None else {"partition": partition}
        raw_key = key.encode() if key is not None else None
        self.producer.produce(
            topic, orjson.dumps(value), raw_key, on_delivery=self._delivered, **extra
        )
        left = await asyncio.to_thread(self.producer.flush, 30)
        assert left == 0, "confluent-kafka could not deliver"
        return self.landed[-1][1], self.landed[-1][2]


def test_librdkafka_partitioned_events_and_requests_reach_the_users_state(
    make_worker, worker_env, catalog
) -> None:
    worker = make_worker()
    s = settings_for(worker_env)
    k = s.kafka
    n = k.partitions
    events_topic, requests_topic = k.topic(k.events_topic), k.topic(k.requests_topic)
    owner = {u: key_partition(u.encode(), n) for u in USERS}
    cooking = [it for it in catalog if "cooking" in it["tags"]][:6]
    jazz = [it for it in catalog if "jazz" in it["tags"]][:6]
    items = cooking + jazz
    liked = {u: [cooking[2 * j]["item_id"], cooking[2 * j + 1]["item_id"]] for j, u in
             enumerate(USERS)}  # fmt: skip

    lib = LibrdkafkaApp(k.bootstrap_servers)

    async def scenario() -> None:
        async with AppHarness(s, worker) as app:
            await app.wait_ready()
            await app.publish_catalog(items)

            sent: dict[str, dict[str, Any]] = {}  # event_id -> event
            for u in USERS:
                for item_id, kind in zip(liked[u], ("like", "complete"), strict=True):
                    ev = {"user_id": u, "item_id": item_id, "type": kind, "ts": now_ms(),
                          "event_id": f"{u}-{uuid.uuid4().hex[:8]}"}  # fmt: skip
                    p, _ = await lib.send(events_topic, u, ev)
                    # librdkafka's partitioner, not murmur2: the premise of the test
                    assert p == zlib.crc32(u.encode()) % n
                    sent[ev["event_id"]] = ev
            misrouted = {u for u in USERS if owner[u] != zlib.crc32(u.encode()) % n}
            assert misrouted == {"alice", "bob"}, "the users must show both cases"

            await app.wait(
                lambda: set(sent) <= {r["trigger"] for r in app.recs},
                what="an answer to every event",
                detail=lambda: sorted(set(sent) - {r["trigger"] for r in app.recs}),
            )

            # an event without key nor event_id, on a partition that does not own alice
            wrong = (owner["alice"] + 1) % n
            keyless = {"user_id": "alice", "item_id": jazz[0]["item_id"], "type": "view",
                       "value": 0.9, "ts": now_ms()}  # fmt: skip
            kp, ko = await lib.send(events_topic, None, keyless, partition=wrong)
            assert kp == wrong
            untriggered = lambda: [  # noqa: E731
                r for r in app.recs if r["user_id"] == "alice" and r["trigger"] is None
            ]
            await app.wait(lambda: len(untriggered()) == 1, what="the keyless event's answer")

            # Each misrouted record has a copy on its user's partition, bytes intact, and its
            # origin in a header; records already on their user's partition have none.
            log = await read_topic(k.bootstrap_servers, events_topic, n)
            copies = {
                h[FORWARDED_FROM].decode(): (p, key, value)
                for p, _, key, value, h in log
                if FORWARDED_FROM in h
            }
            originals = [r for r in log if FORWARDED_FROM not in r[4]]
            for p, o, key, value, _ in originals:
                user = orjson.loads(value or b"")["user_id"]
                if p == owner[user]:
                    assert f"{p}:{o}" not in copies
                else:
                    assert f"{p}:{o}" in copies, f"[{p}]@{o} ({user}) not forwarded"
                    assert copies[f"{p}:{o}"] == (owner[user], key, value)
            assert len(copies) == 2 * len(misrouted) + 1  # + the keyless one

            # A forward sent twice (the forwarding worker crashed before its commit and
            # forwarded again): the same bytes and origin at a later offset of the partition.
            origin = f"{kp}:{ko}"
            p, key, value = copies[origin]
            aio = AIOKafkaProducer(bootstrap_servers=k.bootstrap_servers)
            await aio.start()
            try:
                await aio.send_and_wait(
                    events_topic, value, key=key, partition=p,
                    headers=[(FORWARDED_FROM, origin.encode())],
                )  # fmt: skip
            finally:
                await aio.stop()
            # answered again (as any redelivery is); whether it was learned twice: below
            await app.wait(lambda: len(untriggered()) == 2, what="the second copy's answer")

            # A request from the librdkafka app lands elsewhere too, and is answered from the
            # state the events built.
            rid = uuid.uuid4().hex
            req = {"user_id": "alice", "request_id": rid, "k": 8}
            rp, ro = await lib.send(requests_topic, "alice", req)
            assert rp != owner["alice"]
            await app.wait(lambda: app.rec_for(rid) is not None, what="the request's answer")
            assert [
                p
                for p, _, _, value, h in await read_topic(k.bootstrap_servers, requests_topic, n)
                if h.get(FORWARDED_FROM) == f"{rp}:{ro}".encode()
                and orjson.loads(value or b"")["request_id"] == rid
            ] == [owner["alice"]], "forwarded once, to the partition that owns alice"
            answer = app.rec_for(rid)
            assert answer is not None and answer["request_id"] == rid
            ids = [r["item_id"] for r in answer["items"]]
            touched = {*liked["alice"], jazz[0]["item_id"]}
            assert len(ids) == 8 and not touched & set(ids), ids
            # the same list an app on the murmur2 partitioner gets
            assert [r["item_id"] for r in (await app.ask("alice", k=8))["items"]] == ids
            for u in ("bob", "dana"):
                mine = [r for r in app.recs if r["user_id"] == u and r["trigger"] in sent]
                assert not set(liked[u]) & {r["item_id"] for r in mine[-1]["items"]}

            # One more event, whose state shows whether the second copy was applied
            last = {"user_id": "alice", "item_id": jazz[1]["item_id"], "type": "skip",
                    "ts": now_ms(), "event_id": "alice-last"}  # fmt: skip
            await lib.send(events_topic, "alice", last)
            await app.wait(lambda: app.rec_for("alice-last") is not None, what="the last answer")
            changelog = f"{s.app_id}-users-changelog"
            states: list[tuple[int, str, UserState]] = []

            async def alice_last_written() -> bool:
                states[:] = [
                    (p, orjson.loads(key or b""), UserState.from_bytes(value))
                    for p, _, key, value, _ in await read_topic(k.bootstrap_servers, changelog, n)
                    if value is not None
                ]
                return any(
                    u == "alice" and event_hash("alice-last") in st.event_ids.tolist()
                    for _, u, st in states
                )

            deadline = time.monotonic() + 60
            while not await alice_last_written():
                assert time.monotonic() < deadline, "alice's last state never reached the log"
                await asyncio.sleep(0.5)
            # every user's state is in the changelog of the partition that owns the user (the
            # one its next owner restores), never where a librdkafka client put the event
            assert {(u, p) for p, u, _ in states} == {(u, owner[u]) for u in USERS}
            final = {u: st for _, u, st in states}  # the latest value per user
            assert final["alice"].n_events == 4, "2 events, the keyless one once, the last one"
            assert event_hash(f"{FORWARDED_FROM}={origin}") in final["alice"].event_ids.tolist()
            assert final["bob"].n_events == final["dana"].n_events == 2
            assert app.dead == []

    try:
        asyncio.run(scenario())
    finally:
        lib.producer.close()
