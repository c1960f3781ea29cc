"""The user-events handler takes a stream batch at a time (streams/handlers.py::on_events): the
same events handled as one batch or one at a time leave the same user states, give the same
answers and send the item side the same updates; a user's events in one
batch apply in order; redeliveries, bad input and unknown items are handled inside a batch as
alone. Run on a real embedded store (the edge engine)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest

from recstream.ranking import store as stores
from recstream.ranking.params import score_params
from recstream.ranking.recommender import Recommender
from recstream.ranking.store import ItemRecord
from recstream.streams.handlers import Handlers, Msg, key_partition
from recstream.streams.settings import Settings

NOW = 1_795_000_000_000
FAR = NOW + 3 * 3_600_000
PARTITIONS = Settings().kafka.partitions


class ListSink:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes, int | None]] = []

    async def send(self, *, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        self.sent.append((key, value, partition))


def _events() -> list[Msg]:
    evs: list[Any] = [
        {"user_id": "u1", "item_id": "a0", "type": "like", "event_id": "e1"},
        {"user_id": "u2", "item_id": "b0", "type": "view", "value": 0.9, "event_id": "e2"},
        {"user_id": "u1", "item_id": "a1", "type": "complete", "event_id": "e3"},
        b"{not json",
        {"user_id": "u2", "item_id": "a0", "type": "skip", "event_id": "e4"},
        {"user_id": "u1", "item_id": "a0", "type": "like", "event_id": "e1"},  # redelivered
        {"user_id": "u3", "item_id": "no-such-item", "type": "view", "event_id": "e5"},
        {"user_id": "u1", "item_id": "b1", "type": "share", "event_id": "e6"},
        {"user_id": "u3", "item_id": "b1", "type": "like", "event_id": "e7"},
        # 3 hours ahead of the worker's clock (at most 1 hour by default): dead-lettered
        {"user_id": "u2", "item_id": "b2", "type": "like", "event_id": "e8", "ts": FAR},
    ]
    out, offsets = [], [0] * PARTITIONS
    for n, e in enumerate(evs):
        if isinstance(e, dict):
            key = e["user_id"].encode()
            e = orjson.dumps({"ts": NOW + n * 1000, **e})
        else:
            key = b"u9"
        p = key_partition(key, PARTITIONS)  # a user's events share a partition, in order
        out.append(Msg("user-events", p, offsets[p], key, e))
        offsets[p] += 1
    return out


async def _run(batched: bool) -> dict[str, Any]:
    store = stores.connect(
        url=None, api_key=None, location=":memory:", collection="t", dims={"text": 4}
    )
    await store.ensure_collection()
    rng = np.random.default_rng(3)
    await store.upsert(
        [
            ItemRecord(f"{g}{n}", {"text": rng.standard_normal(4)}, title=f"{g}{n}",
                       published_at=NOW - n * 3_600_000)
            for g in "ab" for n in range(6)
        ]
    )  # fmt: skip
    settings = Settings()
    recs, dead, activity = ListSink(), ListSink(), ListSink()
    recommender = Recommender(
        store, score_params(settings.ranking), dims={"text": 4}, seen_filter_bits=6144,
        clock=lambda: NOW + 60_000,
    )  # fmt: skip
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
    )
    try:
        msgs = _events()
        if batched:
            await h.on_events(msgs)
        else:
            for m in msgs:
                await h.on_event(m)
    finally:
        await store.close()
    answers = [orjson.loads(v) for _, v, _ in recs.sent]
    updates: dict[str, list[Any]] = {}
    for key, v, p in activity.sent:
        rec = orjson.loads(v)
        assert key == rec["updates"][0]["item_id"].encode()
        for u in rec["updates"]:
            assert key_partition(u["item_id"].encode(), PARTITIONS) == p
            updates.setdefault(u["item_id"], []).append(u)
    return {
        "users": users,
        "answers": [(a["user_id"], a["trigger"], a["items"]) for a in answers],
        "dead": [orjson.loads(v)["error"] for _, v, _ in dead.sent],
        "updates": updates,
        "records": len(activity.sent),
    }


def test_a_batch_is_the_same_as_its_events_one_at_a_time() -> None:
    one = asyncio.run(_run(batched=False))
    batch = asyncio.run(_run(batched=True))
    assert batch["users"] == one["users"]
    # each item gets the same updates; across users their order may differ (rounds), as it
    # does across input partitions, and the item side's sums do not depend on it
    same = lambda a: {i: sorted(u, key=orjson.dumps) for i, u in a["updates"].items()}  # noqa: E731
    assert same(batch) == same(one)
    # the same dead letters; a batch rejects what fails parsing or the clock check first
    assert sorted(batch["dead"]) == sorted(one["dead"])
    assert len(batch["dead"]) == 3  # the bad JSON, the unknown item, the far-future ts
    assert any("unknown item" in e for e in batch["dead"])
    ahead = FAR - (NOW + 60_000)  # the recommender's clock here
    assert any(
        f"event ts {FAR} is {ahead} ms ahead of this worker's clock" in e for e in batch["dead"]
    )
    assert batch["users"]["u2"]["n"] == 2 and batch["users"]["u2"]["last_ts"] < NOW + 60_000
    # every good event answered (the redelivery too), each user's answers in event order
    for a in (one, batch):
        assert [t for u, t, _ in a["answers"] if u == "u1"] == ["e1", "e3", "e1", "e6"]
        assert sorted(t for _, t, _ in a["answers"]) == sorted(
            ["e1", "e2", "e3", "e4", "e1", "e6", "e7"]
        )
    by_trigger = lambda a: sorted(a["answers"], key=lambda x: (x[1], str(x[2])))  # noqa: E731
    assert by_trigger(batch) == by_trigger(one)
    # u1's three events applied in order, the redelivery not counted again
    assert batch["users"]["u1"]["n"] == 3
    # the updates go out grouped: fewer records than updates, and than one event at a time
    n_updates = sum(len(v) for v in batch["updates"].values())
    assert batch["records"] < one["records"] <= n_updates


pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")
