"""The worker's handlers (streams/handlers.py) over the online core (a real Catalog of a dozen
items in an OnlineModel; Tables as dicts, topics as lists, a fixed clock): user events a batch at
a time, the item side's item-activity records (versions 2 and 1), records forwarded to the
partition that owns their user, and requests."""

from __future__ import annotations

import asyncio
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest

from recstream.ranking.catalog import Catalog
from recstream.ranking.item_side import ItemRow, Update
from recstream.ranking.learner import SharedWeights
from recstream.ranking.params import model_params
from recstream.ranking.settings import RankingSettings
from recstream.ranking.step import OnlineModel
from recstream.ranking.user_state import UserState, event_hash, item_hash
from recstream.streams.handlers import FORWARDED_FROM, Handlers, Msg, dedupe_id
from recstream.streams.internal import (
    activity_from_bytes,
    activity_to_bytes,
    hash_key,
    key_partition,
)
from recstream.streams.settings import Settings

NOW = 1_795_000_000_000
CLOCK = NOW + 60_000  # the handlers' clock
FAR = NOW + 3 * 3_600_000  # 3 hours ahead (at most 1 hour by default)
PARTITIONS = Settings().kafka.partitions
EVENTS, REQUESTS, ACTIVITY = "user-events", "recommendation-requests", "item-activity"
ITEMS = [f"{g}{n}" for g in "ab" for n in range(6)]
LN2_PER_MS = math.log(2) / (RankingSettings().trending_half_life_hours * 3_600_000)


def h(item_id: str) -> int:
    return item_hash(item_id)


def nbw(row: ItemRow) -> dict[int, float]:
    """An item row's neighbours and weights (the arrays sorted by neighbour hash, checked)."""
    assert row.nb.tolist() == sorted(row.nb.tolist())
    return dict(zip(row.nb.tolist(), row.w.tolist(), strict=True))


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

    async def send(self, **kw: Any) -> None:  # key, value, partition, headers
        self.sent.append({"partition": None, "headers": None, **kw})


class Table(dict):  # type: ignore[type-arg]
    """A Table that remembers its writes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[Any] = []

    def __setitem__(self, key: Any, value: Any) -> None:
        self.writes.append(key)
        super().__setitem__(key, value)


@dataclass
class World:
    h: Handlers
    users: Table
    stats: Table
    recs: ListSink
    dead: ListSink
    activity: ListSink
    events: ListSink
    requests: ListSink
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def msg(
        self, topic: str, partition: int, key: bytes | None, value: bytes | None,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> Msg:  # fmt: skip
        """The next record of ``topic``'s ``partition`` (offsets as the broker gives them)."""
        at = self.offsets.get((topic, partition), 0)
        self.offsets[topic, partition] = at + 1
        return Msg(topic, partition, at, key, value, headers=headers)

    def deliver(self, sent: dict[str, Any], topic: str = EVENTS) -> Msg:
        """A forwarded record as the owning partition's consumer reads it."""
        return self.msg(
            topic, sent["partition"], sent["key"], sent["value"], tuple(sent["headers"])
        )

    def answers(self) -> list[dict[str, Any]]:
        return [orjson.loads(s["value"]) for s in self.recs.sent]

    def dead_errors(self) -> list[str]:
        return [orjson.loads(s["value"])["error"] for s in self.dead.sent]

    def state(self, user_id: str) -> UserState:
        return UserState.from_bytes(self.users[user_id])

    def row(self, item_id: str) -> ItemRow:
        return ItemRow.from_bytes(self.stats[hash_key(h(item_id))])

    def updates(self) -> list[Update]:
        """Every item-activity update sent, each record checked for its key and partition."""
        out = []
        for s in self.activity.sent:
            ups = activity_from_bytes(s["value"])
            assert s["key"] == hash_key(ups[0].item)
            assert {key_partition(hash_key(u.item), PARTITIONS) for u in ups} == {s["partition"]}
            out.extend(ups)
        return out


def make_world(ranking: RankingSettings | None = None, **settings_kw: Any) -> World:
    settings = Settings(ranking=ranking or RankingSettings(), **settings_kw)
    params = model_params(settings.ranking)
    cat = Catalog({"text": 4}, params.cooc)
    rng = np.random.default_rng(3)
    for n, i in enumerate(ITEMS):
        vec = {"text": rng.standard_normal(4).astype(np.float32)}
        cat.upsert(i, vec, title=i, published_at=NOW - (n % 6) * 3_600_000)
    recs, dead, activity, events, requests = (ListSink() for _ in range(5))
    users, stats = Table(), Table()
    handlers = Handlers(
        settings, model=OnlineModel(cat, params), users=users, item_stats=stats,
        recommendations=recs, dead_letters=dead, item_activity=activity,
        inputs={EVENTS: events, REQUESTS: requests}, clock=lambda: CLOCK,
    )  # fmt: skip
    return World(handlers, users, stats, recs, dead, activity, events, requests)


def event(user_id: str, item_id: str, n: int, event_id: str | None = None, **kw: Any) -> bytes:
    e: dict[str, Any] = {"user_id": user_id, "item_id": item_id, "type": "like", "ts": NOW + n}
    if event_id is not None:
        e["event_id"] = event_id
    return orjson.dumps({**e, **kw})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def handle(w: World, msgs: list[Msg], batched: bool) -> None:
    """``msgs`` as one stream batch, or one at a time."""
    for part in [msgs] if batched else [[m] for m in msgs]:
        run(w.h.on_events(part) if batched else w.h.on_event(part[0]))


# -- user events, a batch at a time -----------------------------------------------------------
def _batch(w: World) -> list[Msg]:
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
        {"user_id": "u3", "item_id": "a2", "type": "click"},  # no event_id ...
        None,  # ... and that record read again: the same partition and offset
        {"user_id": "u2", "item_id": "b2", "type": "like", "event_id": "e8", "ts": FAR},
    ]
    out: list[Msg] = []
    for n, e in enumerate(evs):
        if e is None:
            out.append(out[-1])
            continue
        key = e["user_id"].encode() if isinstance(e, dict) else b"u9"
        value = orjson.dumps({"ts": NOW + n * 1000, **e}) if isinstance(e, dict) else e
        out.append(w.msg(EVENTS, key_partition(key, PARTITIONS), key, value))
    return out


def _handle(batched: bool, ranking: RankingSettings | None = None) -> dict[str, Any]:
    w = make_world(ranking)
    handle(w, _batch(w), batched)
    by_item: dict[int, list[Any]] = {}
    for u in w.updates():
        by_item.setdefault(u.item, []).append((u.w, u.ts, u.pairs))
    answers = [(a["user_id"], a["trigger"], a["items"]) for a in w.answers()]
    return {"w": w, "users": dict(w.users), "answers": answers, "dead": w.dead_errors(),
            "updates": by_item, "records": len(w.activity.sent)}  # fmt: skip


def test_a_batch_is_the_same_as_its_events_one_at_a_time() -> None:
    # with the shared weights fixed: a batch's events all see the weights it started with,
    # one at a time each sees the last one's step (test_the_shared_weights_...)
    fixed = RankingSettings(shared_learning_rate=0.0)
    one, batch = _handle(batched=False, ranking=fixed), _handle(batched=True, ranking=fixed)
    assert set(batch["users"]) == {"u1", "u2", "u3"}
    assert batch["users"] == one["users"]  # the same bytes
    # each item gets the same updates; across users their order may differ (rounds), as it
    # does across input partitions, and the item side's sums do not depend on it
    assert {i: sorted(u) for i, u in batch["updates"].items()} == {
        i: sorted(u) for i, u in one["updates"].items()
    }
    # the same dead letters: the bad JSON, the unknown item, the far-future ts
    assert sorted(batch["dead"]) == sorted(one["dead"]) and len(batch["dead"]) == 3
    for why in (
        "not valid JSON",
        "unknown item: no item 'no-such-item' in the catalog",
        f"event ts {FAR} is {FAR - CLOCK} ms ahead of this worker's clock",
    ):
        assert sum(why in e for e in batch["dead"]) == 1, why  # fmt: skip
    # every good event answered (the redeliveries too), each user's answers in event order
    for a in (one, batch):
        triggers = {u: [t for v, t, _ in a["answers"] if v == u] for u in ("u1", "u2", "u3")}
        assert triggers == {"u1": ["e1", "e3", "e1", "e6"], "u2": ["e2", "e4"],
                            "u3": ["e7", None, None]}  # fmt: skip
    key = lambda a: sorted(a["answers"], key=orjson.dumps)  # noqa: E731
    assert key(batch) == key(one)
    # the users' events applied in order, each once (not the redeliveries, not the dead)
    w: World = batch["w"]
    u1, u2, u3 = w.state("u1"), w.state("u2"), w.state("u3")
    assert u1.n_events == 3 and u1.recent.tolist() == [h("a0"), h("a1"), h("b1")]
    assert u2.n_events == 2 and u2.recent.tolist() == [h("b0"), h("a0")]
    assert u2.last_ts == NOW + 4000 < CLOCK
    assert u3.n_events == 2 and u3.recent.tolist() == [h("b1"), h("a2")]
    assert event_hash("e1") in u1.event_ids.tolist()
    # a redelivery's answer is its user's list, unchanged
    answers = [x for x in batch["answers"] if x[0] == "u1"]
    assert answers[2][2] == answers[1][2]
    # the updates go out grouped: fewer records than updates, and than one event at a time
    n_updates = sum(len(v) for v in batch["updates"].values())
    assert batch["records"] < one["records"] <= n_updates
    # only the positive events of applied, distinct events are counted by the items
    counted = sorted(i for i, ups in batch["updates"].items() for x in ups if x[0] > 0)
    assert counted == sorted(h(i) for i in ("a0", "a1", "b1", "b0", "b1", "a2"))


def test_user_states_are_written_in_the_version_set_for_a_rolling_upgrade() -> None:
    """RECSTREAM_USER_STATE_VERSION=3: the states written are version 3 (what a release that
    reads only version 3 reads), and decode to the states version 4 gives."""
    new, old = make_world(), make_world(user_state_version=3)
    for w in (new, old):
        handle(w, _batch(w), batched=True)
    assert new.users.keys() == old.users.keys() and len(new.users) == 3
    for u, raw in old.users.items():
        assert raw[0] == 3 and new.users[u][0] == 4
        assert UserState.from_bytes(raw).to_bytes() == new.users[u]


def test_the_shared_weights_learn_from_each_event_once_per_partition() -> None:
    w = make_world()
    msgs = _batch(w)
    handle(w, msgs, batched=True)
    stored = dict(w.h.weights)
    prior = w.h.model.p.score.prior
    learned = {int(p): SharedWeights.from_bytes(raw, prior) for p, raw in stored.items()}
    assert learned and sum(sw.n for sw in learned.values()) >= 2
    for p, sw in learned.items():
        # the partition's own events, up to the last one that learned
        assert sw.upto in [m.offset for m in msgs if m.partition == p]
        assert sw.w.tolist() != list(prior)
    handle(w, msgs, batched=True)  # redelivered: every event at or below upto, learned once
    assert dict(w.h.weights) == stored
    # a new event of a user with history, on an item shown below the top of their list,
    # steps that user's partition again
    u1 = [m for m in msgs if m.key == b"u1"][0]
    cat = w.h.model.cat
    last_shown = cat.ids[int(cat.rows_of(w.state("u1").shown)[-1])]
    later = w.msg(EVENTS, u1.partition, b"u1", event("u1", last_shown, 9000, "e99"))
    handle(w, [later], batched=True)
    sw = SharedWeights.from_bytes(w.h.weights[str(u1.partition)], prior)
    assert sw.n == learned[u1.partition].n + 1 and sw.upto == later.offset


def test_a_batch_writes_each_user_and_partition_once_with_what_its_rounds_one_by_one_give() -> None:
    users = ["u1", "u2", "u1", "u1", "u2", "u3"]
    items = ["a0", "a1", "b0", "a2", "a0", "b1"]

    def msgs(w: World) -> list[Msg]:
        return [w.msg(EVENTS, owner(u), u.encode(), event(u, i, n, f"e{n}"))
                for n, (u, i) in enumerate(zip(users, items, strict=True))]  # fmt: skip

    one, batched = make_world(), make_world()
    m = msgs(one)
    for rnd in ([m[0], m[1], m[5]], [m[2], m[4]], [m[3]]):  # each user's 1st, 2nd, 3rd events
        run(one.h.on_events(rnd))
    run(batched.h.on_events(msgs(batched)))
    assert dict(batched.users) == dict(one.users)
    assert dict(batched.h.weights) == dict(one.h.weights)

    def answers(w: World) -> list[tuple[str, list[dict[str, Any]]]]:  # by event, in rounds
        return sorted((a["trigger"], a["items"]) for a in w.answers())

    assert answers(batched) == answers(one) and len(one.answers()) == len(users)
    assert sorted(batched.updates(), key=repr) == sorted(one.updates(), key=repr)
    assert sorted(batched.users.writes) == ["u1", "u2", "u3"]  # once each: their last state
    assert len(one.users.writes) == len(users)
    # one record per item partition (ACTIVITY_RECORD_UPDATES at most each), not per round
    parts = {key_partition(hash_key(u.item), PARTITIONS) for u in batched.updates()}
    assert len(batched.activity.sent) == len(parts) < len(one.activity.sent)


# -- the item side -----------------------------------------------------------------------------
def _trend(*weighted: tuple[float, int]) -> float:
    """The log-space decayed popularity of these (weight, ts) interactions."""
    xs = [math.log(w) + ts * LN2_PER_MS for w, ts in weighted]  # ln(w * 2 ** (ts / half-life))
    return max(xs) + math.log(sum(math.exp(x - max(xs)) for x in xs))


def _activity(w: World, value: bytes | None, partition: int = 0) -> None:
    run(w.h.on_item_activity(w.msg(ACTIVITY, partition, b"k", value)))


def test_the_user_sides_updates_become_the_items_rows() -> None:
    w = make_world()
    run(w.h.on_events([w.msg(EVENTS, owner("u"), b"u", event("u", i, n)) for n, i in
                       enumerate(["a0", "a1", "b0"])]))  # fmt: skip
    a0, a1, b0 = h("a0"), h("a1"), h("b0")
    assert sorted(w.updates(), key=lambda u: (u.ts, u.item)) == sorted([
        Update(a0, 2.0, NOW, ()),
        Update(a1, 2.0, NOW + 1, ((a0, 0.5),)), Update(a0, 0.0, NOW + 1, ((a1, 1.0),)),
        Update(b0, 2.0, NOW + 2, ((a1, 0.5), (a0, 0.45))),
        Update(a1, 0.0, NOW + 2, ((b0, 1.0),)), Update(a0, 0.0, NOW + 2, ((b0, 0.9),)),
    ], key=lambda u: (u.ts, u.item))  # fmt: skip
    for s in w.activity.sent:  # on the items' partitions
        _activity(w, s["value"], s["partition"])
    assert not w.dead.sent
    row = w.row("a0")
    assert row.count == 1.0 and row.trend == pytest.approx(_trend((2.0, NOW)))
    hot_k = math.log(2) / (RankingSettings().hot_half_life_minutes * 60_000)
    assert row.hot == pytest.approx(math.log(2.0) + NOW * hot_k, abs=1e-6)  # same, in minutes
    assert nbw(row) == pytest.approx({a1: 1.0, b0: 0.9})
    assert w.row("a1").count == 1.0 and nbw(w.row("a1")) == pytest.approx({a0: 0.5, b0: 1.0})
    assert w.row("b0").count == 1.0 and nbw(w.row("b0")) == pytest.approx({a1: 0.5, a0: 0.45})


def test_item_activity_folds_updates_into_the_rows_in_order_each_item_written_once() -> None:
    w = make_world()
    pop, rare, x = h("pop"), h("rare"), h("x")
    record = [
        Update(pop, 1.0, 4000),
        Update(rare, 1.0, 4000, ((pop, 1.0),)),
        Update(pop, 2.0, 5000, ((rare, 0.25), (x, 0.5))),
    ]
    _activity(w, activity_to_bytes(record))
    assert w.stats.writes == [hash_key(pop), hash_key(rare)]
    row = w.row("pop")
    assert row.count == 2.0 and row.trend == pytest.approx(_trend((1.0, 4000), (2.0, 5000)))
    assert nbw(row) == {rare: 0.25, x: 0.5}
    assert w.row("rare").count == 1.0 and w.row("rare").nb.tolist() == [pop]
    # a later record: a pair without an interaction adds to the row, not to count or trend
    _activity(w, activity_to_bytes([Update(pop, 0.0, 9000, ((rare, 0.5),))]))
    assert w.stats.writes[2:] == [hash_key(pop)]
    after = w.row("pop")
    assert (after.count, after.trend) == (row.count, row.trend)
    assert nbw(after) == {rare: 0.75, x: 0.5}
    assert not w.dead.sent


def test_a_batch_of_item_activity_writes_each_item_once_as_the_records_one_by_one_would() -> None:
    pop, rare, x = h("pop"), h("rare"), h("x")
    records = [
        activity_to_bytes([Update(pop, 1.0, 4000), Update(rare, 1.0, 4000, ((pop, 1.0),))]),
        b"{not json",
        activity_to_bytes([Update(pop, 2.0, 5000, ((rare, 0.25), (x, 0.5)))]),
        activity_to_bytes([Update(pop, 0.0, 9000, ((rare, 0.5),))]),
    ]
    one, batched = make_world(), make_world()
    for value in records:
        _activity(one, value)
    scoped: list[Msg] = []
    batched.h.table_scope = scoped.append
    msgs = [batched.msg(ACTIVITY, 0, b"k", v) for v in records]
    run(batched.h.on_item_activities(msgs))
    assert dict(batched.stats) == dict(one.stats)
    assert len(one.stats.writes) == 4
    assert batched.stats.writes == [hash_key(pop), hash_key(rare)]  # once each, in first order
    assert scoped == [msgs[3], msgs[0]]  # under the last record that changed the item
    assert batched.dead_errors() == one.dead_errors()
    assert len(one.dead_errors()) == 1


def test_version_1_records_with_string_ids_are_still_read() -> None:
    w = make_world()
    grouped = {"updates": [
        {"item_id": "x", "w": 1.0, "ts": 1000, "pairs": [["pop", 0.5, 16.0]]},  # with a count
        {"item_id": "pop", "w": 2.0, "ts": 1500},  # no pairs
    ]}  # fmt: skip
    bare = {"item_id": "x", "w": 0.0, "ts": 2000, "pairs": [["rare", 0.5]]}  # before grouping
    assert activity_from_bytes(orjson.dumps(grouped)) == [
        Update(h("x"), 1.0, 1000, ((h("pop"), 0.5),)), Update(h("pop"), 2.0, 1500, ()),
    ]  # fmt: skip
    _activity(w, orjson.dumps(grouped))
    _activity(w, orjson.dumps(bare))
    assert not w.dead.sent
    assert set(w.stats) == {hash_key(h("x")), hash_key(h("pop"))}  # keyed by the ids' hashes
    row = w.row("x")
    assert row.count == 1.0 and row.trend == pytest.approx(_trend((1.0, 1000)))
    assert nbw(row) == {h("pop"): 0.5, h("rare"): 0.5}
    assert w.row("pop").count == 1.0 and len(w.row("pop").nb) == 0


MALFORMED = [
    *(None, b"{not json", b"[1, 2]", b'{"v": 2}'),
    b'{"v": 2, "u": [[-1, 1.0, 1, []]]}',
    b'{"v": 2, "u": [["123", 1.0, 1, []]]}',
    b'{"v": 2, "u": [[18446744073709551616, 1.0, 1, []]]}',
    b'{"v": 2, "u": [[1, 1.0, 1, [[2, 1.0]]], [1, 1.0, 1, [[2]]]]}',  # good, then bad
    b'{"v": 2, "u": [[1, "w", 1, []]]}',
    b'{"updates": [{"item_id": "x", "w": 1.0, "ts": 1, "pairs": [["rare"]]}]}',
    b'{"updates": [{"item_id": "x", "w": 1.0, "pairs": []}]}',
    b'{"updates": [{"item_id": "", "w": 1.0, "ts": 1}]}',
    b'{"updates": [{"item_id": 7, "w": 1.0, "ts": 1}]}',
    b'{"item_id": "x", "w": "heavy", "ts": 1}',
]


@pytest.mark.parametrize("value", MALFORMED, ids=range(len(MALFORMED)))
def test_a_malformed_item_activity_record_is_dead_lettered_and_changes_nothing(
    value: bytes | None,
) -> None:
    w = make_world()
    _activity(w, activity_to_bytes([Update(1, 1.0, 1, ((2, 1.0),))]))
    before = dict(w.stats)
    _activity(w, value)
    assert w.stats == before and len(w.stats.writes) == 1
    [error] = w.dead_errors()
    assert error.startswith("invalid item-activity record: ")


@pytest.mark.parametrize(
    "value",
    [
        b'{"updates": [5]}',
        b'{"updates": [null]}',
        b'{"item_id": "i1", "w": "nan", "ts": 1}',
        b'{"v": 2, "u": [[1, "inf", 1, []]]}',
    ],
)
def test_a_malformed_update_is_dead_lettered(value: bytes) -> None:
    w = make_world()
    _activity(w, value)
    assert len(w.dead_errors()) == 1 and not w.stats


@pytest.mark.parametrize("where", ["item", "neighbour"])
def test_an_item_id_over_256_characters_in_a_version_1_record_is_dead_lettered(
    where: str,
) -> None:
    w = make_world()
    long = "i" * 257
    ok = {"item_id": "i" * 256, "w": 1.0, "ts": 1, "pairs": [["i" * 256, 1.0]]}
    _activity(w, orjson.dumps(ok))  # 256 is allowed
    assert not w.dead.sent and len(w.stats) == 1
    bad = {**ok, "item_id": long} if where == "item" else {**ok, "pairs": [[long, 1.0]]}
    _activity(w, orjson.dumps(bad))
    [error] = w.dead_errors()
    assert "invalid item-activity record" in error and "1..256 characters" in error
    assert len(w.stats) == 1 and len(w.stats.writes) == 1


# -- forwarding records to the partition that owns their user ---------------------------------
def test_the_users_chosen_here_are_misrouted_by_librdkafka() -> None:
    # what makes the other tests mean something
    assert zlib.crc32(b"alice") % PARTITIONS != owner("alice")
    assert zlib.crc32(b"bob") % PARTITIONS != owner("bob")


def test_a_misrouted_event_is_forwarded_intact_and_not_applied_there() -> None:
    w = make_world()
    raw = event("alice", "a1", 1, "e1")
    wrong = w.msg(EVENTS, elsewhere("alice"), b"alice", raw, (("traceparent", b"00-ab"),))
    w.msg(EVENTS, elsewhere("alice"), b"x", b"{}")  # the next record: offsets move on
    wrong2 = w.msg(EVENTS, elsewhere("alice"), b"alice", event("alice", "a2", 2, "e2"))
    right = w.msg(EVENTS, owner("bob"), b"bob", event("bob", "b3", 3, "e3"))
    run(w.h.on_events([wrong, right, wrong2]))

    assert [s["partition"] for s in w.events.sent] == [owner("alice")] * 2
    first = w.events.sent[0]
    assert first["key"] == b"alice" and first["value"] == raw  # the exact bytes
    assert first["headers"] == [
        ("traceparent", b"00-ab"),
        (FORWARDED_FROM, f"{wrong.partition}:{wrong.offset}".encode()),
    ]
    assert w.events.sent[1]["headers"] == [(FORWARDED_FROM, f"{wrong2.partition}:2".encode())]
    # not applied nor answered here; bob's event, on its own partition, is
    assert set(w.users) == {"bob"}
    assert [a["user_id"] for a in w.answers()] == ["bob"]
    assert w.dead.sent == [] and w.requests.sent == [] and w.h.forwarded == 2

    # on the owning partition the copies are alice's events, in their order
    run(w.h.on_events([w.deliver(s) for s in w.events.sent]))
    assert len(w.events.sent) == 2  # not forwarded again
    state = w.state("alice")
    assert state.n_events == 2 and state.recent.tolist() == [h("a1"), h("a2")]
    assert [a["trigger"] for a in w.answers()] == ["e3", "e1", "e2"]
    assert state.offsets == {owner("alice"): 1}  # the owning partition's offsets


@pytest.mark.parametrize("batched", [False, True], ids=["one-at-a-time", "one-batch"])
def test_a_forwarded_copy_is_applied_once_even_if_forwarded_twice(batched: bool) -> None:
    w = make_world()
    # no event_id: the copy's dedupe id comes from its origin
    original = w.msg(EVENTS, elsewhere("alice"), b"alice", event("alice", "a1", 1))
    other = w.msg(EVENTS, elsewhere("alice"), b"alice", event("alice", "a2", 2))
    # the forwarding worker crashed before committing: it re-reads both and forwards again
    for _ in range(2):
        run(w.h.on_events([original, other]))
    assert len(w.events.sent) == 4 and w.users == {}
    copies = [w.deliver(s) for s in w.events.sent]  # offsets 0..3 of alice's partition
    assert dedupe_id(copies[0], None) == dedupe_id(copies[2], None) is not None
    assert dedupe_id(copies[0], None) != dedupe_id(copies[1], None)
    handle(w, copies, batched)
    state = w.state("alice")
    assert state.n_events == 2, "each event applied once, each copy's twin ignored"
    assert state.recent.tolist() == [h("a1"), h("a2")]
    assert state.offsets == {owner("alice"): 1}  # the twins recorded nothing
    origin = event_hash(f"{FORWARDED_FROM}={original.partition}:{original.offset}")
    assert origin in state.event_ids.tolist()
    # every copy answered (a redelivery is answered again from the state), once learned
    assert [a["user_id"] for a in w.answers()] == ["alice"] * 4
    assert sorted(u.item for u in w.updates() if u.w > 0) == sorted([h("a1"), h("a2")])
    assert w.dead.sent == []


def test_the_user_id_in_the_value_decides_not_the_key() -> None:
    w = make_world()
    keyless = w.msg(EVENTS, elsewhere("alice"), None, event("alice", "a1", 1, "k1"))
    # keyed by someone else but on alice's partition: alice's event, processed here
    odd_key = w.msg(EVENTS, owner("alice"), b"bob", event("alice", "a2", 2, "k2"))
    # keyed by alice, on alice's partition, but bob's event: bob's partition owns it
    odd_value = w.msg(EVENTS, owner("alice"), b"alice", event("bob", "b3", 3, "k3"))
    run(w.h.on_events([keyless, odd_key, odd_value]))

    assert [(s["key"], s["partition"]) for s in w.events.sent] == [
        (None, owner("alice")),
        (b"alice", owner("bob")),
    ]
    assert w.state("alice").recent.tolist() == [h("a2")] and "bob" not in w.users
    run(w.h.on_events([w.deliver(s) for s in w.events.sent]))
    assert w.state("alice").recent.tolist() == [h("a2"), h("a1")]
    assert w.state("bob").recent.tolist() == [h("b3")]
    assert sorted(a["trigger"] for a in w.answers()) == ["k1", "k2", "k3"]
    assert w.dead.sent == []


def test_a_misrouted_request_is_answered_by_the_owner_from_the_users_state() -> None:
    w = make_world()
    run(w.h.on_events([w.msg(EVENTS, owner("bob"), b"bob", event("bob", "a1", 1, "e"))]))
    req = orjson.dumps({"user_id": "bob", "request_id": "r1", "k": 3})
    run(w.h.on_request(w.msg(REQUESTS, elsewhere("bob"), b"bob", req)))
    assert [a["trigger"] for a in w.answers()] == ["e"]  # not answered where it landed
    [sent] = w.requests.sent
    assert (sent["key"], sent["value"], sent["partition"]) == (b"bob", req, owner("bob"))
    assert sent["headers"] == [(FORWARDED_FROM, f"{elsewhere('bob')}:0".encode())]

    run(w.h.on_request(w.deliver(sent, REQUESTS)))
    answer = w.answers()[-1]
    assert answer["request_id"] == "r1" and len(answer["items"]) == 3
    assert "a1" not in [r["item_id"] for r in answer["items"]]  # bob's state: a1 taken
    assert len(w.requests.sent) == 1 and w.events.sent == []


def test_bad_input_is_dead_lettered_where_it_lands() -> None:
    w = make_world()
    run(w.h.on_events([w.msg(EVENTS, elsewhere("alice"), b"alice", b"{not json")]))
    run(w.h.on_request(w.msg(REQUESTS, elsewhere("alice"), b"alice", b'{"k": 3}')))
    assert w.events.sent == [] and w.requests.sent == []
    errors = w.dead_errors()
    assert len(errors) == 2
    assert "not valid JSON" in errors[0] and "required field 'user_id'" in errors[1]


def test_a_copy_still_on_the_wrong_partition_is_dead_lettered_not_passed_on() -> None:
    w = make_world()
    # what a worker configured with another partition count would have forwarded here
    raw = event("alice", "a1", 1, "e1")
    stray = w.msg(EVENTS, elsewhere("alice"), b"alice", raw, ((FORWARDED_FROM, b"0:41"),))
    run(w.h.on_events([stray]))
    assert w.events.sent == [] and w.users == {} and w.recs.sent == []
    [error] = w.dead_errors()
    assert error.startswith(
        f"forwarded from partition:offset 0:41 to partition {elsewhere('alice')}, but user "
        f"'alice' belongs to partition {owner('alice')} of {PARTITIONS}"
    )
    assert "RECSTREAM_KAFKA_PARTITIONS" in error


# -- requests ---------------------------------------------------------------------------------
def test_a_request_is_answered_from_the_state_without_changing_it_k_at_most_max_k() -> None:
    w = make_world(RankingSettings(max_k=4))
    taken = [("a0", "like"), ("b1", "view"), ("a3", "dislike")]
    run(w.h.on_events([w.msg(EVENTS, owner("carol"), b"carol", event("carol", i, n, type=t))
                       for n, (i, t) in enumerate(taken)]))  # fmt: skip
    users, activity = dict(w.users), len(w.activity.sent)
    state = w.state("carol")

    async def ask(user_id: str, **kw: Any) -> dict[str, Any]:
        req = orjson.dumps({"user_id": user_id, "request_id": f"r{len(w.recs.sent)}", **kw})
        await w.h.on_request(w.msg(REQUESTS, owner(user_id), user_id.encode(), req))
        return w.answers()[-1]

    for kw, n in (({"k": 2}, 2), ({"k": 8}, 4), ({"k": 1000}, 4), ({}, 4)):  # default k: 10
        a = run(ask("carol", **kw))
        assert a["request_id"] == a["trigger"] and len(a["items"]) == n, kw
        shared = w.h.shared(owner("carol")).w  # the weights carol's partition learned
        (want,) = w.h.model.recommend([state], [n], CLOCK, shared=[shared])
        assert [(r["item_id"], r["reason"]) for r in a["items"]] == [
            (i, why) for i, _, why in want.items(w.h.model.cat)
        ]
        assert a["items"][0]["score"] == pytest.approx(float(want.scores[0]), abs=1e-6)
        assert not {r["item_id"] for r in a["items"]} & {i for i, _ in taken}
    cold = run(ask("dave"))  # nobody yet: answered, and still nobody
    assert len(cold["items"]) == 4 and "dave" not in w.users
    assert w.users == users and w.users.writes == ["carol"]  # a batch writes a user once
    assert len(w.activity.sent) == activity and w.dead.sent == []
