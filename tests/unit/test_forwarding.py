"""Records of a user on a partition that does not own the user's state (a librdkafka client's
CRC32 partitioner, a keyless record) are forwarded to the owning partition, key, value and
headers intact, with their origin in a header, and not processed where they landed; the copy
is applied once on the owning partition, even when it was forwarded twice
(streams/handlers.py::Handlers.forward_misrouted). Run on a real embedded store (the edge
engine)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest

from recstream.ranking import store as stores
from recstream.ranking.params import score_params
from recstream.ranking.recommender import Recommender
from recstream.ranking.state import UserState, event_hash
from recstream.ranking.store import ItemRecord
from recstream.streams.handlers import FORWARDED_FROM, Handlers, Msg, dedupe_id, key_partition
from recstream.streams.settings import Settings

NOW = 1_795_000_000_000
PARTITIONS = Settings().kafka.partitions
EVENTS, REQUESTS = "user-events", "recommendation-requests"


def owner(user_id: str) -> int:
    return key_partition(user_id.encode(), PARTITIONS)


def elsewhere(user_id: str) -> int:
    """A partition that does not own ``user_id``: where librdkafka's default partitioner
    (CRC32 of the key) puts it when that differs, else the next one."""
    crc = zlib.crc32(user_id.encode()) % PARTITIONS
    return crc if crc != owner(user_id) else (owner(user_id) + 1) % PARTITIONS


class ListSink:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(
        self,
        *,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.sent.append({"key": key, "value": value, "partition": partition, "headers": headers})


@dataclass
class World:
    h: Handlers
    users: dict[str, Any]
    recs: ListSink
    dead: ListSink
    activity: ListSink
    events: ListSink
    requests: ListSink
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def msg(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> Msg:
        """The next record of ``topic``'s ``partition`` (offsets as the broker gives them)."""
        at = self.offsets.get((topic, partition), 0)
        self.offsets[topic, partition] = at + 1
        return Msg(topic, partition, at, key, value, headers=headers)

    def deliver(self, sent: dict[str, Any], topic: str = EVENTS) -> Msg:
        """A forwarded record as the owning partition's consumer reads it."""
        headers = tuple(sent["headers"])
        return self.msg(topic, sent["partition"], sent["key"], sent["value"], headers)

    def answers(self) -> list[dict[str, Any]]:
        return [orjson.loads(s["value"]) for s in self.recs.sent]

    def dead_errors(self) -> list[str]:
        return [orjson.loads(s["value"])["error"] for s in self.dead.sent]


@asynccontextmanager
async def world() -> AsyncIterator[World]:
    store = stores.connect(
        url=None, api_key=None, location=":memory:", collection="t", dims={"text": 4}
    )
    await store.ensure_collection()
    rng = np.random.default_rng(5)
    await store.upsert(
        [
            ItemRecord(f"i{n}", {"text": rng.standard_normal(4)}, title=f"i{n}",
                       published_at=NOW - n * 3_600_000)
            for n in range(8)
        ]
    )  # fmt: skip
    settings = Settings()
    recommender = Recommender(
        store, score_params(settings.ranking), dims={"text": 4}, seen_filter_bits=6144,
        clock=lambda: NOW + 60_000,
    )  # fmt: skip
    sinks = [ListSink() for _ in range(5)]
    recs, dead, activity, events, requests = sinks
    users: dict[str, Any] = {}
    h = Handlers(
        settings,
        store=store,
        content_encoder=None,  # type: ignore[arg-type]  # no content here
        recommender=recommender,
        users=users,
        item_stats={},
        recommendations=recs,
        dead_letters=dead,
        item_activity=activity,
        inputs={EVENTS: events, REQUESTS: requests},
    )
    try:
        yield World(h, users, recs, dead, activity, events, requests)
    finally:
        await store.close()


def event(user_id: str, item_id: str, n: int, event_id: str | None = None, **kw: Any) -> bytes:
    e: dict[str, Any] = {"user_id": user_id, "item_id": item_id, "type": "like", "ts": NOW + n}
    if event_id is not None:
        e["event_id"] = event_id
    return orjson.dumps({**e, **kw})


def run(test: Callable[[World], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        async with world() as w:
            await test(w)

    asyncio.run(main())


def test_the_users_chosen_here_are_misrouted_by_librdkafka() -> None:
    # what makes the other tests (and the integration test's choice of users) mean something
    assert zlib.crc32(b"alice") % PARTITIONS != owner("alice")
    assert zlib.crc32(b"bob") % PARTITIONS != owner("bob")


def test_a_misrouted_event_is_forwarded_intact_and_not_applied_there() -> None:
    async def test(w: World) -> None:
        raw = event("alice", "i1", 1, "e1")
        wrong = w.msg(EVENTS, elsewhere("alice"), b"alice", raw, (("traceparent", b"00-ab"),))
        w.msg(EVENTS, elsewhere("alice"), b"x", b"{}")  # the next record: offsets move on
        wrong2 = w.msg(EVENTS, elsewhere("alice"), b"alice", event("alice", "i2", 2, "e2"))
        right = w.msg(EVENTS, owner("bob"), b"bob", event("bob", "i3", 3, "e3"))
        await w.h.on_events([wrong, right, wrong2])

        assert [s["partition"] for s in w.events.sent] == [owner("alice")] * 2
        first = w.events.sent[0]
        assert first["key"] == b"alice" and first["value"] == raw  # the exact bytes
        assert first["headers"] == [
            ("traceparent", b"00-ab"),
            (FORWARDED_FROM, f"{wrong.partition}:{wrong.offset}".encode()),
        ]
        assert w.events.sent[1]["headers"] == [(FORWARDED_FROM, f"{wrong.partition}:2".encode())]
        # not applied nor answered here; bob's event, on its own partition, is
        assert set(w.users) == {"bob"}
        assert [a["user_id"] for a in w.answers()] == ["bob"]
        assert w.dead.sent == [] and w.requests.sent == []
        assert w.h.forwarded == 2

        # on the owning partition the copies are alice's events, in their order
        await w.h.on_events([w.deliver(s) for s in w.events.sent])
        assert len(w.events.sent) == 2  # not forwarded again
        state = UserState.from_dict(w.users["alice"])
        assert state.n_events == 2 and state.seen == ["i1", "i2"]
        assert [a["trigger"] for a in w.answers()] == ["e3", "e1", "e2"]
        assert state.offsets == {owner("alice"): 1}  # the owning partition's offsets

    run(test)


@pytest.mark.parametrize("batched", [False, True], ids=["one-at-a-time", "one-batch"])
def test_a_forwarded_copy_is_applied_once_even_if_forwarded_twice(batched: bool) -> None:
    async def test(w: World) -> None:
        # no event_id: the copy's dedupe id comes from its origin
        original = w.msg(EVENTS, elsewhere("alice"), b"alice", event("alice", "i1", 1))
        other = w.msg(EVENTS, elsewhere("alice"), b"alice", event("alice", "i2", 2))
        # the forwarding worker crashed before committing: it re-reads both and forwards again
        for _ in range(2):
            await w.h.on_events([original, other])
        assert len(w.events.sent) == 4 and w.users == {}
        copies = [w.deliver(s) for s in w.events.sent]  # offsets 0..3 of alice's partition
        assert dedupe_id(copies[0], None) == dedupe_id(copies[2], None) is not None
        assert dedupe_id(copies[0], None) != dedupe_id(copies[1], None)
        if batched:
            await w.h.on_events(copies)
        else:
            for c in copies:
                await w.h.on_event(c)

        state = UserState.from_dict(w.users["alice"])
        assert state.n_events == 2, "each event applied once, each copy's twin ignored"
        assert state.seen == ["i1", "i2"]
        assert state.offsets == {owner("alice"): 1}  # the twins recorded nothing
        assert event_hash(f"{FORWARDED_FROM}={original.partition}:{original.offset}") in (
            state.recent_event_ids
        )
        # every copy answered (a redelivery is answered again from the state), once learned
        assert [a["user_id"] for a in w.answers()] == ["alice"] * 4
        learned = [u for s in w.activity.sent for u in orjson.loads(s["value"])["updates"]]
        assert sorted(u["item_id"] for u in learned if u["w"] > 0) == ["i1", "i2"]
        assert w.dead.sent == []

    run(test)


def test_the_user_id_in_the_value_decides_not_the_key() -> None:
    async def test(w: World) -> None:
        keyless = w.msg(EVENTS, elsewhere("alice"), None, event("alice", "i1", 1, "k1"))
        # keyed by someone else but on alice's partition: alice's event, processed here
        odd_key = w.msg(EVENTS, owner("alice"), b"bob", event("alice", "i2", 2, "k2"))
        # keyed by alice, on alice's partition, but bob's event: bob's partition owns it
        odd_value = w.msg(EVENTS, owner("alice"), b"alice", event("bob", "i3", 3, "k3"))
        await w.h.on_events([keyless, odd_key, odd_value])

        assert [(s["key"], s["partition"]) for s in w.events.sent] == [
            (None, owner("alice")),
            (b"alice", owner("bob")),
        ]
        assert UserState.from_dict(w.users["alice"]).seen == ["i2"] and "bob" not in w.users
        await w.h.on_events([w.deliver(s) for s in w.events.sent])
        assert UserState.from_dict(w.users["alice"]).seen == ["i2", "i1"]
        assert UserState.from_dict(w.users["bob"]).seen == ["i3"]
        assert sorted(a["trigger"] for a in w.answers()) == ["k1", "k2", "k3"]
        assert w.dead.sent == []

    run(test)


def test_a_misrouted_request_is_answered_by_the_owner_from_the_users_state() -> None:
    async def test(w: World) -> None:
        await w.h.on_events([w.msg(EVENTS, owner("bob"), b"bob", event("bob", "i1", 1, "e"))])
        req = orjson.dumps({"user_id": "bob", "request_id": "r1", "k": 3})
        await w.h.on_request(w.msg(REQUESTS, elsewhere("bob"), b"bob", req))
        assert [a["trigger"] for a in w.answers()] == ["e"]  # not answered where it landed
        [sent] = w.requests.sent
        assert (sent["key"], sent["value"], sent["partition"]) == (b"bob", req, owner("bob"))
        assert sent["headers"] == [(FORWARDED_FROM, f"{elsewhere('bob')}:0".encode())]

        await w.h.on_request(w.deliver(sent, REQUESTS))
        answer = w.answers()[-1]
        assert answer["request_id"] == "r1" and len(answer["items"]) == 3
        assert "i1" not in [r["item_id"] for r in answer["items"]]  # bob's state: i1 seen
        assert len(w.requests.sent) == 1 and w.events.sent == []

    run(test)


def test_bad_input_is_dead_lettered_where_it_lands() -> None:
    async def test(w: World) -> None:
        bad = w.msg(EVENTS, elsewhere("alice"), b"alice", b"{not json")
        await w.h.on_events([bad])
        await w.h.on_request(w.msg(REQUESTS, elsewhere("alice"), b"alice", b'{"k": 3}'))
        assert w.events.sent == [] and w.requests.sent == []
        errors = w.dead_errors()
        assert len(errors) == 2
        assert "not valid JSON" in errors[0] and "required field 'user_id'" in errors[1]

    run(test)


def test_a_copy_still_on_the_wrong_partition_is_dead_lettered_not_passed_on() -> None:
    async def test(w: World) -> None:
        # what a worker configured with another partition count would have forwarded here
        raw = event("alice", "i1", 1, "e1")
        stray = w.msg(EVENTS, elsewhere("alice"), b"alice", raw, ((FORWARDED_FROM, b"0:41"),))
        await w.h.on_events([stray])
        assert w.events.sent == [] and w.users == {} and w.recs.sent == []
        [dead] = [orjson.loads(s["value"]) for s in w.dead.sent]
        assert dead["error"].startswith(
            f"forwarded from partition:offset 0:41 to partition {elsewhere('alice')}, but user "
            f"'alice' belongs to partition {owner('alice')} of {PARTITIONS}"
        )
        assert "RECSTREAM_KAFKA_PARTITIONS" in dead["error"]

    run(test)


pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")
