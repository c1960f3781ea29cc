"""What a ranking worker does with each message: parse, read states, step, write, send.

Plain async code, bound to Faust in streams/app.py. The model is ranking/step.py's online
step over the catalog every ranking worker holds whole (streams/catalog_reader.py).

  user-events              parse each event (a batch at a time) -> the users' states from the
                           users Table and the partition's shared weights from the weights
                           Table -> ``OnlineModel.step`` -> the item-side updates to
                           item-activity (keyed by item), the shared weights' step, then the
                           new states to the Table, then each event's list to recommendations
  recommendation-requests  parse -> the user's state -> ``OnlineModel.recommend`` ->
                           recommendations (the state does not change)
  item-activity            each item's side (ranking/item_side.py) in the item-stats Table,
                           whose compacted changelog every worker's catalog reads: a stream
                           batch at a time, each item changed written once per batch

Failures: bad input -> dead-letters (the reason and the original bytes) and go on; anything
else is a bug -> the worker crashes loudly and its restart processes the message again
(nothing acked is lost).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from recstream.clock import now_ms
from recstream.ranking.item_side import ItemRow, Update
from recstream.ranking.learner import SharedWeights
from recstream.ranking.step import Event, OnlineModel, Ranked
from recstream.ranking.user_state import UserState
from recstream.streams import schemas
from recstream.streams.internal import (
    activity_from_bytes,
    activity_to_bytes,
    hash_key,
    key_partition,
)
from recstream.streams.schemas import BadInput
from recstream.streams.settings import Settings

log = logging.getLogger(__name__)

# The header a forwarded copy carries: "<partition>:<offset>" of the original record.
FORWARDED_FROM = "recstream-forwarded-from"
# Item-activity updates per record at most (a grouped record stays far below Kafka's 1 MB).
ACTIVITY_RECORD_UPDATES = 256


class Sink(Protocol):
    """Where output goes: a Faust topic in the worker, a list in unit tests."""

    async def send(
        self,
        *,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any: ...


class CatalogSync(Protocol):
    async def sync(self) -> None: ...


@dataclass(frozen=True)
class Msg:
    """The parts of a Kafka message the handlers need (from faust's ``event.message``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    # The Faust event the message came with (or, for a record SkipGuard re-read, the event
    # after it, of the same partition): what a table write on its behalf is made under.
    origin: Any = dataclasses.field(default=None, compare=False, repr=False)


def forwarded_from(msg: Msg) -> str | None:
    for name, value in msg.headers:
        if name == FORWARDED_FROM:
            return value.decode(errors="replace")
    return None


def dedupe_id(msg: Msg, event_id: str | None) -> str | None:
    """What a user's state remembers an event by besides its offset: the app's ``event_id``,
    else for a forwarded copy its origin. A forward can be sent twice (the forwarding worker
    crashed before committing the original, re-read it and forwarded it again): the two copies
    sit at different offsets of the owning partition, so only the origin tells them apart."""
    if event_id is not None:
        return event_id
    origin = forwarded_from(msg)
    return None if origin is None else f"{FORWARDED_FROM}={origin}"


@dataclass
class _Batch:
    """What a batch's rounds leave to write: per user the latest state (with the message of
    its last applied event), per partition the shared weights (with the last message they
    learned from; None: read, unchanged), the item-side updates and the answers in order."""

    states: dict[str, tuple[UserState, Msg]] = dataclasses.field(default_factory=dict)
    shared: dict[int, tuple[SharedWeights, Msg | None]] = dataclasses.field(default_factory=dict)
    updates: list[Update] = dataclasses.field(default_factory=list)
    answers: list[tuple[schemas.UserEvent, Ranked]] = dataclasses.field(default_factory=list)

    def state(self, user_id: str, load: Callable[[str], UserState]) -> UserState:
        got = self.states.get(user_id)
        return got[0] if got is not None else load(user_id)

    def weights(self, partition: int, load: Callable[[int], SharedWeights]) -> SharedWeights:
        got = self.shared.get(partition)
        if got is None:
            got = self.shared[partition] = (load(partition), None)
        return got[0]


class Handlers:
    def __init__(
        self,
        settings: Settings,
        *,
        model: OnlineModel,
        users: MutableMapping[str, bytes],
        item_stats: MutableMapping[bytes, bytes],
        recommendations: Sink,
        dead_letters: Sink,
        item_activity: Sink,
        inputs: Mapping[str, Sink] | None = None,
        catalog: CatalogSync | None = None,
        activity_partitions: int | None = None,
        table_scope: Callable[[Msg], None] | None = None,
        clock: Callable[[], int] = now_ms,
        weights: MutableMapping[str, bytes] | None = None,
    ):
        self.settings = settings
        self.model = model
        self.users = users
        self.item_stats = item_stats
        self.recommendations = recommendations
        self.dead_letters = dead_letters
        self.item_activity = item_activity
        # user-keyed inputs by topic: where a record on the wrong partition is forwarded to
        self.inputs = dict(inputs or {})
        self.catalog = catalog
        self.activity_partitions = activity_partitions or settings.kafka.partitions
        # Faust writes a table change to the changelog partition of the *current* event; in a
        # batch the handler says which message a write is for (streams/app.py sets it).
        self.table_scope = table_scope or (lambda msg: None)
        self.clock = clock
        self.forwarded = 0
        # the shared ranking weights of each user-events partition (key: the partition number)
        self.weights: MutableMapping[str, bytes] = {} if weights is None else weights

    async def dead_letter(self, msg: Msg, error: str, *, part: str | None = None) -> None:
        # Key, payload and error are cut to what the producer and broker accept (see
        # schemas.dead_letter): a refused dead letter would crash the worker on this message
        # at every restart.
        value = schemas.dead_letter(
            source_topic=msg.topic, partition=msg.partition, offset=msg.offset, error=error,
            payload=msg.value, key=msg.key, ts=now_ms(), part=part,
        )  # fmt: skip
        log.warning(
            "dead letter %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, value["error"]
        )
        await self.dead_letters.send(
            key=schemas.dead_letter_key(msg.key), value=schemas.dumps(value)
        )

    # -- partition ownership -----------------------------------------------------------------
    async def forward_misrouted(self, msg: Msg, user_id: str) -> bool:
        """Whether ``msg`` (user-events or recommendation-requests) is for a user whose state
        another partition owns; if so it was sent there and must not be processed here.

        The users Table keeps a user in partition murmur2(user id) % RECSTREAM_KAFKA_PARTITIONS
        (what the Java client, aiokafka and Faust give a keyed record), and only the worker
        assigned that partition has the user's state. Clients on librdkafka (kcat,
        confluent-kafka, Go, .NET, Node) hash keys with CRC32 by default, and a keyless record
        goes anywhere. The value's ``user_id`` decides. The copy keeps the key, value and
        headers, and adds FORWARDED_FROM with the original's partition and offset (an event's
        dedupe id when it has no event_id). The original's offset is committed only after the
        copy is acknowledged (Faust flushes the producer before it commits), so a crash in
        between forwards it again rather than losing it. A copy that is still not on its
        user's partition is dead-lettered: workers that disagree on the partition count would
        pass it back and forth."""
        partitions = self.settings.kafka.partitions
        owner = key_partition(user_id.encode(), partitions)
        if owner == msg.partition:
            return False
        origin = forwarded_from(msg)
        if origin is not None:
            await self.dead_letter(
                msg,
                f"forwarded from partition:offset {origin} to partition {msg.partition}, but "
                f"user {user_id!r} belongs to partition {owner} of {partitions}: workers "
                "disagree on RECSTREAM_KAFKA_PARTITIONS (or the topic was created with another "
                "partition count)",
            )
            return True
        sink = self.inputs.get(msg.topic)
        if sink is None:  # a wiring bug (streams/app.py passes every user-keyed input)
            raise RuntimeError(f"no producer to forward a record of {msg.topic!r} with")
        headers = [*msg.headers, (FORWARDED_FROM, f"{msg.partition}:{msg.offset}".encode())]
        await sink.send(key=msg.key, value=msg.value or b"", partition=owner, headers=headers)
        if not self.forwarded:
            log.info(
                "%s[%d]@%d (user %r) belongs on partition %d, which holds the user's state: "
                "forwarded there (its producer does not partition by murmur2 of the user id, "
                "e.g. librdkafka's CRC32 default, or sent it without a key); such records are "
                "forwarded without a word from now on",
                msg.topic, msg.partition, msg.offset, user_id, owner,
            )  # fmt: skip
        self.forwarded += 1
        return True

    # -- user events -------------------------------------------------------------------------
    def load_state(self, user_id: str) -> UserState:
        raw = self.users.get(user_id)
        return UserState.from_bytes(raw) if raw is not None else UserState()

    def shared(self, partition: int) -> SharedWeights:
        """The shared ranking weights learned from the events of ``partition`` (its users are
        a uniform sample of all users by hash, so every partition learns the same weights)."""
        raw = self.weights.get(str(partition))
        prior = self.model.p.score.prior
        return SharedWeights.from_bytes(raw, prior) if raw else SharedWeights.start(prior)

    async def on_event(self, msg: Msg) -> None:
        await self.on_events([msg])

    async def on_events(self, batch: Sequence[Msg]) -> None:
        """Learn from each event and answer it with a fresh list, a stream batch at a time, in
        rounds: a user's first event of the batch in the first round, their second in the
        next, ... so each user's events apply in order. The rounds run in memory (a round reads
        the states and shared weights the rounds before it left); then the batch is written:
        its item-side updates, each partition's shared weights and each user's state once,
        with the latest values, and an answer per event."""
        rounds: list[list[tuple[Msg, schemas.UserEvent]]] = []
        taken: dict[str, int] = {}
        ahead = self.settings.max_event_ahead_ms
        now = self.clock()
        for msg in batch:
            try:
                event = schemas.parse_event(msg.value, self.settings.max_message_bytes)
            except BadInput as exc:
                await self.dead_letter(msg, str(exc))
                continue
            if await self.forward_misrouted(msg, event.user_id):
                continue
            if event.ts - now > ahead:
                await self.dead_letter(
                    msg,
                    f"event ts {event.ts} is {event.ts - now} ms ahead of this "
                    f"worker's clock (at most {ahead} ms: RECSTREAM_MAX_EVENT_AHEAD_MS); ts is "
                    "epoch milliseconds",
                )
                continue
            n = taken.get(event.user_id, 0)
            taken[event.user_id] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append((msg, event))
        if not rounds:
            return
        out = _Batch()
        for events in rounds:
            await self._event_round(events, out)
        # The item side's updates go out before the states that record these events as
        # applied: a crash in between replays the events (not yet applied) rather than leaving
        # them applied to users but never counted by the items. The shared weights go before
        # the states too: an event replayed after a crash (its offset at or below the stored
        # ``upto``) is not learned from twice.
        await self._send_activity(out.updates)
        for part, (sw, last) in out.shared.items():
            if last is not None:
                self.table_scope(last)
                self.weights[str(part)] = sw.to_bytes()
        for user_id, (state, last) in out.states.items():
            self.table_scope(last)
            self.users[user_id] = state.to_bytes(self.settings.user_state_version)
        for event, ranked in out.answers:
            await self._send_recommendation(
                event.user_id, ranked, trigger=event.event_id, source_ts=event.ts
            )

    async def _event_round(
        self, events: Sequence[tuple[Msg, schemas.UserEvent]], out: _Batch
    ) -> None:
        states = [out.state(e.user_id, self.load_state) for _, e in events]
        step_events = [
            Event(
                e.user_id,
                e.item_id,
                e.type,
                e.ts,
                e.value,
                dedupe_id(msg, e.event_id),
                msg.partition,
                msg.offset,
            )  # fmt: skip
            for msg, e in events
        ]
        shared = {p: out.weights(p, self.shared) for p in {msg.partition for msg, _ in events}}
        res = self.model.step(
            step_events, states, self.clock(), [shared[msg.partition].w for msg, _ in events]
        )
        out.updates.extend(res.updates)
        self._learn_shared(events, res.gradients, shared, out)
        for (msg, event), o in zip(events, res.outcomes, strict=True):
            if o.status == "unknown_item":
                await self.dead_letter(
                    msg,
                    f"unknown item: no item {event.item_id!r} in the catalog (never "
                    "published, deleted, or not indexed yet)",
                )
                continue
            if o.status == "applied":
                out.states[event.user_id] = (o.state, msg)
            assert o.ranked is not None
            out.answers.append((event, o.ranked))

    def _learn_shared(
        self,
        events: Sequence[tuple[Msg, schemas.UserEvent]],
        gradients: Mapping[int, np.ndarray],
        shared: Mapping[int, SharedWeights],
        out: _Batch,
    ) -> None:
        """Each partition's shared weights take one step along its events' gradients (events
        at or below the weights' ``upto`` offset were learned from before a crash: skipped)."""
        by_part: dict[int, list[tuple[Msg, np.ndarray]]] = {}
        for n, g in sorted(gradients.items()):
            msg = events[n][0]
            if msg.offset > shared[msg.partition].upto:
                by_part.setdefault(msg.partition, []).append((msg, g))
        p = self.model.p
        for part, got in by_part.items():
            sw = shared[part]
            sw.learn([g for _, g in got], p.shared_learning_rate, p.shared_l2)
            last = max((m for m, _ in got), key=lambda m: m.offset)
            sw.upto = last.offset
            out.shared[part] = (sw, last)

    async def _send_activity(self, updates: Sequence[Update]) -> None:
        """Per destination partition (murmur2 of the item's hash key, the item-stats Table's
        partitioning), records of up to ACTIVITY_RECORD_UPDATES updates in order."""
        by_part: dict[int, list[Update]] = {}
        n = self.activity_partitions
        for u in updates:
            by_part.setdefault(key_partition(hash_key(u.item), n), []).append(u)
        for partition, ups in sorted(by_part.items()):
            for at in range(0, len(ups), ACTIVITY_RECORD_UPDATES):
                part = ups[at : at + ACTIVITY_RECORD_UPDATES]
                await self.item_activity.send(
                    key=hash_key(part[0].item), value=activity_to_bytes(part), partition=partition
                )

    # -- requests ----------------------------------------------------------------------------
    async def on_request(self, msg: Msg) -> None:
        try:
            req = schemas.parse_request(msg.value, self.settings.max_message_bytes)
        except BadInput as exc:
            await self.dead_letter(msg, str(exc))
            return
        if await self.forward_misrouted(msg, req.user_id):
            return
        if self.catalog is not None:
            await self.catalog.sync()  # an item indexed before this request is in its answer
        state = self.load_state(req.user_id)
        k = min(req.k or self.settings.ranking.k, self.settings.ranking.max_k)
        shared = self.shared(msg.partition).w
        (ranked,) = self.model.recommend([state], [k], self.clock(), shared=[shared])
        await self._send_recommendation(
            req.user_id, ranked, trigger=req.request_id, source_ts=req.ts,
            request_id=req.request_id,
        )  # fmt: skip

    async def _send_recommendation(
        self,
        user_id: str,
        ranked: Ranked,
        *,
        trigger: str | None,
        source_ts: int | None,
        request_id: str | None = None,
    ) -> None:
        items = [
            {"item_id": i, "score": round(s, 6), "reason": why}
            for i, s, why in ranked.items(self.model.cat)
        ]
        value = schemas.recommendation(
            user_id=user_id, items=items, trigger=trigger, source_ts=source_ts,
            generated_at=now_ms(), model_version=self.settings.model_version,
            request_id=request_id,
        )  # fmt: skip
        await self.recommendations.send(key=user_id.encode(), value=schemas.dumps(value))

    # -- item activity (internal, keyed by item) -------------------------------------------
    async def on_item_activity(self, msg: Msg) -> None:
        await self.on_item_activities([msg])

    async def on_item_activities(self, batch: Sequence[Msg]) -> None:
        """Fold a stream batch of records' updates into the items' rows (the item-stats Table),
        in the order they were made; each item changed is written once, after the batch, under
        the last record that changed it (an item's records all come on its own partition)."""
        p = self.model.p
        changed: dict[bytes, tuple[ItemRow, Msg]] = {}
        for msg in batch:
            try:
                updates = activity_from_bytes(msg.value)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                await self.dead_letter(msg, f"invalid item-activity record: {exc}")
                continue
            for u in updates:
                key = hash_key(u.item)
                got = changed.get(key)
                if got is not None:
                    row = got[0]
                else:
                    raw = self.item_stats.get(key)
                    row = ItemRow.from_bytes(raw) if raw is not None else ItemRow()
                row.apply(u, p.cooc, p.score.trending_half_life_ms, p.score.hot_half_life_ms)
                changed[key] = (row, msg)
        for key, (row, msg) in changed.items():
            self.table_scope(msg)
            self.item_stats[key] = row.to_bytes()
