"""kill -9 mid-stream, restart: every user's state equals an uninterrupted run's.

The worker is at-least-once: after SIGKILL it re-reads events past the last committed offset.
The user state records the offsets it applied, so a redelivered event changes nothing. The
reference is computed by an uninterrupted replay of the same events, in partition order, through
the same update code (ranking.user_state.apply_event), with the item vectors the worker read.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from recstream.ranking.catalog import Catalog
from recstream.ranking.params import model_params
from recstream.ranking.user_state import UserState, apply_event, item_digest, item_hash
from recstream.streams.internal import ItemMessage
from recstream.streams.settings import RankingSettings
from tests.conftest import AppHarness, settings_for

pytestmark = pytest.mark.integration

N_USERS = 12
N_EVENTS = 900


async def behind(c: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for tp, offset in end.items():
        if await c.position(tp) < offset:
            return True
    return False


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (desc,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert not desc["error_code"] and desc["partitions"], f"no such topic {topic}: {desc}"
    return sorted(p["partition"] for p in desc["partitions"])


async def read_topic(bootstrap: str, topic: str) -> list[tuple[int, int, bytes, bytes | None]]:
    """(partition, offset, key, value) of every message now in the topic, partition order."""
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out = []
        deadline = time.monotonic() + 30
        while await behind(c, end) and time.monotonic() < deadline:
            for tp, msgs in (await c.getmany(timeout_ms=200)).items():
                out += [(tp.partition, m.offset, m.key, m.value) for m in msgs]
        return out
    finally:
        await c.stop()


async def read_changelog(bootstrap: str, topic: str) -> dict[str, UserState]:
    """Latest value per key of the users table changelog = the table's state."""
    out: dict[str, UserState] = {}
    for _, _, key, value in await read_topic(bootstrap, topic):
        if value is not None:  # Faust writes table changelogs as JSON
            out[orjson.loads(key)] = UserState.from_bytes(value)
    return out


async def read_events(bootstrap: str, topic: str) -> list[tuple[int, int, dict[str, Any]]]:
    """(partition, offset, event) for every event in the topic."""
    return [(p, o, orjson.loads(v or b"")) for p, o, _, v in await read_topic(bootstrap, topic)]


def missing(recs: list[dict[str, Any]], events: list[dict[str, Any]]) -> str:
    """Which events are still unanswered, per user (a user's events share a partition)."""
    answered = {r.get("trigger") for r in recs}
    left = [e for e in events if e["event_id"] not in answered]
    by_user: dict[str, list[str]] = defaultdict(list)
    for e in left:
        by_user[e["user_id"]].append(e["event_id"])
    per_user = {u: f"{len(ids)} ({ids[0]}..{ids[-1]})" for u, ids in sorted(by_user.items())}
    return f"{len(left)} of {len(events)} events unanswered, by user: {per_user}"


async def explain_missing(
    s: Any, recs: list[dict[str, Any]], events: list[dict[str, Any]], dead: list[dict[str, Any]]
) -> str:
    """missing(), plus where each unanswered event sits in user-events and whether an answer
    to it is in the recommendations topic after all (read again from the start): tells a
    worker that never answered from an answer the app's reader did not see."""
    k = s.kafka
    out = [missing(recs, events)]
    answered = {r.get("trigger") for r in recs}
    left = {e["event_id"] for e in events} - answered
    if not left:
        return out[0]
    where = {
        ev.get("event_id"): (p, o)
        for p, o, ev in await read_events(k.bootstrap_servers, k.topic(k.events_topic))
    }
    in_topic: dict[str, list[tuple[int, int]]] = {}
    for p, o, _, v in await read_topic(k.bootstrap_servers, k.topic(k.recommendations_topic)):
        trig = orjson.loads(v or b"{}").get("trigger")
        if trig in left:
            in_topic.setdefault(trig, []).append((p, o))
    for e in sorted(left):
        p_o = where.get(e)
        dl = [
            f"{d['source_topic']}: {d['error']}"
            for d in dead
            if (d.get("partition"), d.get("offset")) == p_o
        ]
        out.append(
            f"{e}: user-events (partition, offset) {p_o}, "
            f"answers in recommendations (partition, offset) {in_topic.get(e, [])}, "
            f"dead letters for it {dl}"
        )
    return "; ".join(out)


def test_kill9_mid_stream_loses_and_doubles_nothing(
    make_worker, worker_env, catalog, tmp_path
) -> None:
    items = catalog[:40]
    s = settings_for(worker_env)
    k = s.kafka
    rng = random.Random(3)
    users = [f"user-{i}" for i in range(N_USERS)]
    types = ["view", "click", "like", "share", "complete", "skip", "dislike"]
    events = []
    for i in range(N_EVENTS):
        ev: dict[str, Any] = {
            "user_id": rng.choice(users),
            "item_id": rng.choice(items)["item_id"],
            "type": rng.choice(types),
            "ts": 1_790_000_000_000 + i * 60_000,
            "event_id": f"ev-{i}",
        }
        if ev["type"] in ("view", "complete"):
            ev["value"] = round(rng.random(), 3)
        events.append(ev)
    expected_n: dict[str, int] = defaultdict(int)
    for ev in events:
        expected_n[ev["user_id"]] += 1

    worker = make_worker()

    async def scenario() -> None:
        nonlocal worker
        async with AppHarness(s, worker) as app:
            await app.wait_ready()
            await app.publish_catalog(items)

            async def send_all() -> None:
                for i, ev in enumerate(events):
                    await app.client.send_event(ev)
                    if i % 25 == 24:
                        await asyncio.sleep(0.1)  # a stream (~250 events/s), not one burst
                await app.client.flush()

            # Kill -9 when about half the events have been answered, while the rest are still
            # being sent: mid-stream however fast the worker is.
            sender = asyncio.create_task(send_all())
            await app.wait(
                lambda: (
                    sum(1 for r in app.recs if (r.get("trigger") or "").startswith("ev-"))
                    >= N_EVENTS // 2
                ),
                what="half the events processed",
            )
            worker.kill9()
            done_before = sum(1 for r in app.recs if (r.get("trigger") or "").startswith("ev-"))
            assert done_before < N_EVENTS, "the kill must land mid-stream"
            await sender
            worker = make_worker()
            app.worker = worker
            # Wait until every event has been answered at least once.
            await app.wait(
                lambda: (
                    {r["trigger"] for r in app.recs if (r.get("trigger") or "").startswith("ev-")}
                    >= {e["event_id"] for e in events}
                ),
                timeout=180,
                what="all events after restart",
                detail=lambda: explain_missing(s, app.recs, events, app.dead),
            )
        # Every state in the changelog: complete and not double counted.
        changelog = f"{s.app_id}-users-changelog"
        deadline = time.monotonic() + 60
        while True:
            states = await read_changelog(k.bootstrap_servers, changelog)
            if {u: st.n_events for u, st in states.items()} == dict(expected_n):
                break
            assert time.monotonic() < deadline, (
                {u: st.n_events for u, st in states.items()},
                dict(expected_n),
            )
            await asyncio.sleep(0.5)
        worker.stop()
        # Each state change went to the changelog partition of its user's events (the table
        # partition a worker that owns those events recovers), also from batches of events of
        # several partitions (streams/app.py::_table_scope).
        sent = await read_events(k.bootstrap_servers, k.topic(k.events_topic))
        home = {ev["user_id"]: p for p, _, ev in sent}
        for p, _, key, value in await read_topic(k.bootstrap_servers, changelog):
            if value is not None:
                assert p == home[orjson.loads(key)], (orjson.loads(key), p)

        # The uninterrupted reference: the same events, in partition order, same update code,
        # with the item vectors the worker read (its catalog, built from the items topic).
        cat = Catalog({"text": 384})
        for _, _, _, value in await read_topic(k.bootstrap_servers, f"{s.app_id}-items"):
            if value is not None:
                msg = ItemMessage.from_bytes(value)
                cat.upsert(msg.item_id, msg.vectors)
        params = model_params(RankingSettings()).state
        ref: dict[str, UserState] = defaultdict(UserState)
        for part, off, ev in await read_events(k.bootstrap_servers, k.topic(k.events_topic)):
            digest = item_digest(ev["item_id"])
            ref[ev["user_id"]] = apply_event(
                ref[ev["user_id"]],
                item=item_hash(ev["item_id"]),
                item_digest16=digest,
                item_vectors=cat.vectors(cat.row_of[item_hash(ev["item_id"])]),
                event_type=ev["type"],
                ts=ev["ts"],
                value=ev.get("value"),
                params=params,
                partition=part,
                offset=off,
                event_id=ev["event_id"],
            )
        assert set(ref) == set(states)
        for u, want in ref.items():
            got = states[u]
            assert got.n_events == want.n_events
            assert got.offsets == want.offsets
            assert np.array_equal(got.recent, want.recent)
            assert np.array_equal(got.disliked, want.disliked)
            assert got.last_ts == want.last_ts
            assert set(got.interest) == set(want.interest)
            for m in want.interest:
                # Exact but for one storage step: interests are stored as int8 codes with one
                # scale (max|v| / 127), and the restarted worker may read an item's vector a
                # few float32 ulps off (reloaded from disk), which can flip one code. One lost
                # or doubled event moves the sum by a whole weighted unit vector, far more.
                step = float(np.abs(want.interest[m]).max()) / 127
                assert np.allclose(got.interest[m], want.interest[m], rtol=0, atol=step * 1.01), u

    asyncio.run(scenario())
