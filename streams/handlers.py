"""What the worker does with each message. Plain async code, bound to Faust in streams/app.py.

Data path:
  content          -> parse -> fetch media + encode (encoders/pipeline.py) -> upsert named
                      vectors into the item store (ranking/store*.py) -> content-indexed
  user-events      -> parse -> the item and the user's seeds from the store -> update the
                      user's state in the users Table (ranking/state.py) -> candidate set,
                      learning step, ranking (ranking/recommender.py, features.py)
                      -> recommendations; and -> item-activity (repartitioned by item)
  item-activity    -> the item's trend, count and co-occurrence row (ranking/collab.py) in the
                      item-stats Table -> store payload once a second
  recommendation-requests -> recommend from the current state -> recommendations
  Both user-keyed inputs: a record on a partition other than its user's (murmur2 of user_id)
  is forwarded there first (Handlers.forward_misrouted).
Failures: bad input -> dead-letters (with reason and original bytes) and go on; a dependency
that is down -> retry with backoff, offset not committed meanwhile; anything else is a bug ->
the worker crashes loudly and the supervisor restarts it (nothing acked is lost).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson
from aiokafka.partitioner import murmur2

from recstream.clock import now_ms
from recstream.ranking.collab import (
    cf_top_text,
    cooc_records,
    count_after,
    history_weights,
    known_counts_after,
    pack_row,
    published_rows,
    row_after,
)
from recstream.ranking.features import RankedItem, Seed
from recstream.ranking.learner import bpr_step
from recstream.ranking.params import cooc_params
from recstream.ranking.recommender import CandidateAsk, Recommender, rows_above, seed_of
from recstream.ranking.state import UserState, apply_event, event_weight
from recstream.ranking.store import NO_TREND, ItemRecord, ItemStore, trend_after
from recstream.streams import schemas
from recstream.streams.schemas import BadInput
from recstream.streams.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


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


@dataclass(frozen=True)
class Msg:
    """The parts of a Kafka message the handlers need (from faust's ``event.message``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # The Faust event the message came with (or, for a record SkipGuard re-read, the event
    # after it, of the same partition): what a table write on its behalf is made under.
    origin: Any = dataclasses.field(default=None, compare=False, repr=False)
    headers: tuple[tuple[str, bytes], ...] = ()


# Item-activity updates per record at most (a grouped record stays far below Kafka's 1 MB).
ACTIVITY_RECORD_UPDATES = 256


TRANSIENT_ERRORS: tuple[type[BaseException], ...]
try:  # qdrant-client raises these when the server is unreachable or overloaded
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException

    TRANSIENT_ERRORS = (
        ResponseHandlingException,
        httpx.TransportError,
        ConnectionError,
        TimeoutError,
    )
except ImportError:  # pragma: no cover
    TRANSIENT_ERRORS = (ConnectionError, TimeoutError)


async def retrying(op: Callable[[], Awaitable[T]], what: str, max_delay_s: float = 30.0) -> T:
    """Retry a dependency call until it works. Blocking the partition is the point: the offset
    is not committed, so nothing is skipped while Qdrant is away."""
    delay = 0.1
    while True:
        try:
            return await op()
        except TRANSIENT_ERRORS as exc:
            log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay_s)


class ItemEncoder(Protocol):
    """What the content agent needs from encoders/ (encoders.pipeline.ContentEncoder)."""

    @property
    def dims(self) -> Mapping[str, int]: ...

    async def encode(self, items: Sequence[schemas.ContentItem]) -> Sequence[Any]: ...

    def close(self) -> None: ...


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the Kafka default partitioner (murmur2; Java, aiokafka, Faust) gives a
    keyed record: where the item-stats Table keeps the item."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# Record header of a user-events or recommendation-requests record that a worker forwarded to
# the partition owning its user (Handlers.forward_misrouted): "<partition>:<offset>" of the
# original record, in the same topic.
FORWARDED_FROM = "recstream-forwarded-from"


def forwarded_from(msg: Msg) -> str | None:
    """The origin ``"<partition>:<offset>"`` of a forwarded copy; None for an original."""
    for name, value in msg.headers:
        if name == FORWARDED_FROM:
            return (value or b"").decode("utf-8", "replace")
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


def _activity_update(a: Mapping[str, Any]) -> tuple[str, float, int, list]:
    """One item-activity update: (item id, interaction weight, ts, pairs), each pair
    (neighbour, weight, neighbour's count or None: older records carry no count, and the row
    keeps the one it knew)."""
    pairs = [
        (_item_id(p[0]), float(p[1]), float(p[2]) if len(p) > 2 and p[2] is not None else None)
        for p in a.get("pairs") or ()
    ]
    return _item_id(a["item_id"]), float(a["w"]), int(a["ts"]), pairs


def _item_id(v: Any) -> str:
    """An item id from an item-activity record, held to the wire contract's bounds (an
    oversized one would become a Table key whose changelog record the broker refuses)."""
    if not isinstance(v, str) or not 0 < len(v) <= schemas.MAX_ID_CHARS:
        raise ValueError(f"item id must be a string of 1..{schemas.MAX_ID_CHARS} characters")
    return v


def _record(item: schemas.ContentItem, vectors: Mapping[str, np.ndarray]) -> ItemRecord:
    kind = (item.attributes or {}).get("kind")
    return ItemRecord(
        item_id=item.item_id,
        vectors=dict(vectors),
        title=item.title,
        tags=tuple(item.tags or ()),
        published_at=item.published_at,
        kind=str(kind) if kind else None,
    )


class Handlers:
    def __init__(
        self,
        settings: Settings,
        *,
        store: ItemStore,
        content_encoder: ItemEncoder,
        recommender: Recommender,
        users: MutableMapping[str, dict[str, Any]],
        item_stats: MutableMapping[str, dict[str, Any]],
        recommendations: Sink,
        dead_letters: Sink,
        item_activity: Sink,
        indexed: Sink | None = None,
        activity_partitions: int | None = None,
        table_scope: Callable[[Msg], None] | None = None,
        inputs: Mapping[str, Sink] | None = None,
    ):
        self.settings = settings
        self.store = store
        self.content_encoder = content_encoder
        self.recommender = recommender
        self.users = users
        self.item_stats = item_stats
        self.recommendations = recommendations
        self.dead_letters = dead_letters
        self.item_activity = item_activity
        self.indexed = indexed
        r = settings.ranking
        self.half_life_ms = r.interest_half_life_hours * 3_600_000
        self.trend_half_life_ms = r.trending_half_life_hours * 3_600_000
        self._pending_items: dict[str, dict[str, Any]] = {}
        self.cooc = cooc_params(r)
        # item-activity is keyed by item id (the item-stats Table's partitioning): the updates
        # of one stream batch go out as one record per destination partition (murmur2 of the
        # item id, as the producer's default partitioner), not one record per item.
        self.activity_partitions = activity_partitions or settings.kafka.partitions
        self._activity: dict[int, list[dict[str, Any]]] = {}
        # Faust writes a table change to the changelog partition of the *current* event; in a
        # batch the handler says which message a write is for (streams/app.py sets it).
        self.table_scope = table_scope or (lambda msg: None)
        # The user-keyed input topics by name: where a record on a partition that does not own
        # its user is sent again (forward_misrouted).
        self.inputs: Mapping[str, Sink] = inputs or {}
        self.forwarded = 0

    async def dead_letter(self, msg: Msg, error: str, *, part: str | None = None) -> None:
        # Key, payload and error are cut to what the producer and broker accept (see
        # schemas.dead_letter): a refused dead letter would crash the worker on this message
        # at every restart.
        value = schemas.dead_letter(
            source_topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            error=error,
            payload=msg.value,
            key=msg.key,
            ts=now_ms(),
            part=part,
        )
        log.warning(
            "dead letter %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, value["error"]
        )
        await self.dead_letters.send(
            key=schemas.dead_letter_key(msg.key), value=schemas.dumps(value)
        )

    # -- content ----------------------------------------------------------------------------
    async def on_content(self, batch: Sequence[Msg]) -> None:
        """A micro-batch of content messages: one call per encoder and one upsert for all.

        A medium that cannot be fetched or decoded does not lose the item: it is stored with
        the modalities that worked, and a dead-letter record (``part`` = the failed field)
        says which part failed and why."""
        latest: dict[str, tuple[Msg, schemas.ContentItem]] = {}
        for msg in batch:
            try:
                item = schemas.parse_content(msg.value, self.settings.max_message_bytes)
            except BadInput as exc:
                await self.dead_letter(msg, str(exc))
                continue
            latest.pop(item.item_id, None)  # keep the newest version, in arrival order
            latest[item.item_id] = (msg, item)
        deleted = [i for i, (_, it) in latest.items() if it.deleted]
        live = [(m, it) for m, it in latest.values() if not it.deleted]
        encoded = await self.content_encoder.encode([it for _, it in live]) if live else []
        records = []
        for (msg, it), enc in zip(live, encoded, strict=True):
            records.append(_record(it, enc.vectors))
            for part, reason in enc.failures:
                kept = ", ".join(sorted(enc.vectors)) or "no vectors (trending/fresh only)"
                await self.dead_letter(
                    msg,
                    f"content item {it.item_id!r}: {part} could not be used: {reason}; "
                    f"the item was indexed with {kept}",
                    part=part,
                )
        await retrying(lambda: self.store.upsert(records), "Qdrant upsert")
        await retrying(lambda: self.store.delete(deleted), "Qdrant delete")
        if records or deleted:
            log.info("content: %d items stored, %d deleted", len(records), len(deleted))
        if self.indexed is not None:
            at = now_ms()
            for (msg, it), enc in zip(live, encoded, strict=True):
                value = schemas.indexed(
                    item_id=it.item_id,
                    modalities=sorted(enc.vectors),
                    failed=[p for p, _ in enc.failures],
                    deleted=False,
                    indexed_at=at,
                    published_at=it.published_at,
                )
                await self.indexed.send(key=msg.key, value=schemas.dumps(value))
            for item_id in deleted:
                msg = latest[item_id][0]
                value = schemas.indexed(
                    item_id=item_id, modalities=[], failed=[], deleted=True, indexed_at=at
                )
                await self.indexed.send(key=msg.key, value=schemas.dumps(value))

    # -- partition ownership -----------------------------------------------------------------
    async def forward_misrouted(self, msg: Msg, user_id: str) -> bool:
        """Whether ``msg`` (user-events or recommendation-requests) is for a user whose state
        another partition owns; if so it was sent there and must not be processed here.

        The users Table keeps a user in partition murmur2(user id) % RECSTREAM_KAFKA_PARTITIONS
        (what the Java client, aiokafka and Faust give a keyed record), and only the worker
        assigned that partition has the user's state: one processing the record elsewhere
        would read an empty state and write it to the changelog of the wrong partition.
        Clients on librdkafka (kcat, confluent-kafka, Go, .NET, Node) hash keys with CRC32 by
        default, and a keyless record goes anywhere, so their records often land elsewhere.

        The value's ``user_id`` decides, not the key: it is what the state is keyed by (a key
        that is missing or names someone else only decides where the producer put the record).
        The copy keeps the key, value and headers, and adds FORWARDED_FROM with the original's
        partition and offset (an event's dedupe id when it has no event_id: dedupe_id). The
        original's offset is committed only after the copy is acknowledged (Faust flushes the
        producer before it commits), so a crash in between forwards it again rather than
        losing it. A copy that is still not on its user's partition is dead-lettered, not sent
        on: workers that disagree on the partition count would pass it back and forth."""
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
                msg.topic,
                msg.partition,
                msg.offset,
                user_id,
                owner,
            )
        self.forwarded += 1
        return True

    # -- user events -------------------------------------------------------------------------
    def load_state(self, user_id: str) -> UserState:
        raw = self.users.get(user_id)
        return UserState.from_dict(raw) if raw is not None else UserState()

    async def on_event(self, msg: Msg) -> None:
        """One event: :meth:`on_events` of a batch of one."""
        await self.on_events([msg])

    async def on_events(self, batch: Sequence[Msg]) -> None:
        """Learn from each event and answer it with a fresh list, a stream batch at a time.

        The events are taken in rounds (a user's first event of the batch in the first round,
        their second in the next, ...) so each user's events apply in order, each on the state
        the previous one left. Per round: one store ``get`` (every event's item and its user's
        seed items), then one candidate batch for all the round's users (the event's item
        added back for learning). The scorer learns from where the taken item stood under the
        pre-event state; the item side gets the interactions and co-occurrence pairs through
        ``item-activity`` (keyed by item), one record per destination partition per round."""
        rounds: list[list[tuple[Msg, schemas.UserEvent]]] = []
        taken: dict[str, int] = {}
        ahead = self.settings.max_event_ahead_ms
        now = self.recommender.clock()
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
        for events in rounds:
            await self._event_round(events)

    async def _event_round(self, events: Sequence[tuple[Msg, schemas.UserEvent]]) -> None:
        """Events of distinct users (see :meth:`on_events`)."""
        r = self.settings.ranking
        rec = self.recommender
        states = [self.load_state(e.user_id) for _, e in events]
        seed_ids = [rec.seed_ids(st) for st in states]
        wanted = list(
            dict.fromkeys(
                i for (_, e), ids in zip(events, seed_ids, strict=True) for i in (e.item_id, *ids)
            )
        )
        got = await retrying(lambda: self.store.get(wanted), "Qdrant retrieve")
        seeds_of = {i: seed_of(it) for i, it in got.items()}
        # (msg, event, state before, state after or None for a redelivery, seeds)
        todo: list[tuple[Msg, schemas.UserEvent, UserState, UserState | None, dict]] = []
        asks = []
        for (msg, event), state, ids in zip(events, states, seed_ids, strict=True):
            mine = [i for i in ids if i in seeds_of]
            if state.is_duplicate(msg.partition, msg.offset, dedupe_id(msg, event.event_id)):
                # already learned (redelivery): answer again from the state, change nothing
                seeds = {i: seeds_of[i] for i in mine if i != event.item_id}
                todo.append((msg, event, state, None, seeds))
                asks.append(CandidateAsk(state, r.k, seeds))
                continue
            item = got.get(event.item_id)
            if item is None:
                await self.dead_letter(
                    msg,
                    f"unknown item: no item {event.item_id!r} in the catalog (never "
                    "published, deleted, or not indexed yet)",
                )
                continue
            applied = apply_event(
                state,
                item_id=event.item_id,
                item_title=item.title,
                item_vectors=item.vectors,
                event_type=event.type,
                ts=event.ts,
                value=event.value,
                weights=r.event_weights,
                half_life_ms=self.half_life_ms,
                partition=msg.partition,
                offset=msg.offset,
                event_id=dedupe_id(msg, event.event_id),
                dedupe_window=r.dedupe_window,
                recent_positive=r.recent_positive,
                recent_items=r.recent_items,
                seen_filter_bits=r.seen_filter_bits,
            )
            seeds = {i: seeds_of[i] for i in (event.item_id, *mine) if i in seeds_of}
            todo.append((msg, event, state, applied, seeds))
            asks.append(CandidateAsk(applied, r.k, seeds, (item,)))
        if not todo:
            return
        sets = await retrying(lambda: rec.candidate_sets(asks), "Qdrant query")
        now = rec.clock()  # ranking time (the recommender's clock: tests fix it)
        writes: list[tuple[Msg, str, UserState]] = []
        answers: list[tuple[schemas.UserEvent, list[RankedItem]]] = []
        for (msg, event, state, after, seeds), cs in zip(todo, sets, strict=True):
            if after is None:
                answers.append((event, rec.rank(cs, state, seeds, r.k, now).items))
                continue
            w = event_weight(event.type, event.value, r.event_weights)
            if w > 0 and r.learning_rate > 0 and state.n_events:
                before = rec.score(cs, state, seeds, now)
                row = cs.index[event.item_id]
                above = rows_above(before.scores, row, r.learning_negatives)
                deltas = bpr_step(
                    state.weights,
                    rec.params.prior,
                    before.features[row],
                    before.features[above],
                    r.learning_rate,
                    r.learning_l2,
                )
                after = dataclasses.replace(after, weights=deltas)
            if w > 0:
                self._add_item_activity(state, event.item_id, w, event.ts, seeds)
            writes.append((msg, event.user_id, after))
            answers.append((event, rec.rank(cs, after, seeds, r.k, now).items))
        # The item side's updates go out before the states that record these events as
        # applied: a crash in between replays the events (not yet applied) rather than leaving
        # them applied to users but never counted by the items.
        await self._flush_activity()
        for msg, user_id, after in writes:
            self.table_scope(msg)
            self.users[user_id] = after.to_dict()
        for event, items in answers:
            await self._send_recommendation(
                event.user_id, items, trigger=event.event_id, source_ts=event.ts
            )

    def _add_item_activity(
        self,
        before: UserState,
        item_id: str,
        w: float,
        ts: int,
        seeds: Mapping[str, Seed] | None = None,
    ) -> None:
        """One update per item whose side changes: the event's item (its trend and count, and
        its row's pairs) and each recent item whose co-occurrence row gains this item. Each
        pair is ``[neighbour, weight, neighbour's count]`` (the count as fetched with
        ``seeds``: the event's item and the user's seeds; left out when not fetched). Sent by
        :meth:`_flush_activity`, grouped by destination partition."""
        counts = {i: s.cf_count for i, s in (seeds or {}).items()}
        rows = cooc_records(before.recent, item_id, w, self.cooc, counts)
        n = self.activity_partitions
        for row, pairs in rows.items():
            wire = [
                [nb, round(pw, 6)] if c is None else [nb, round(pw, 6), c] for nb, pw, c in pairs
            ]
            update = {"item_id": row, "w": w if row == item_id else 0.0, "ts": ts, "pairs": wire}
            self._activity.setdefault(key_partition(row.encode(), n), []).append(update)

    async def _flush_activity(self) -> None:
        """The pending item-activity updates: per destination partition, records of up to
        ACTIVITY_RECORD_UPDATES updates in the order they were made, ``{"updates": [...]}``,
        keyed by their first update's item id and sent to that partition explicitly."""
        pending, self._activity = self._activity, {}
        for partition, updates in sorted(pending.items()):
            for at in range(0, len(updates), ACTIVITY_RECORD_UPDATES):
                part = updates[at : at + ACTIVITY_RECORD_UPDATES]
                await self.item_activity.send(
                    key=part[0]["item_id"].encode(),
                    value=orjson.dumps({"updates": part}),
                    partition=partition,
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
        state = self.load_state(req.user_id)
        ids = self.recommender.seed_ids(state)
        got = await retrying(lambda: self.store.get(ids), "Qdrant retrieve") if ids else {}
        k = min(req.k or self.settings.ranking.k, self.settings.ranking.max_k)
        await self._emit(
            req.user_id,
            state,
            k,
            seeds={i: seed_of(it) for i, it in got.items()},
            trigger=req.request_id,
            source_ts=req.ts,
            request_id=req.request_id,
        )

    async def _emit(
        self,
        user_id: str,
        state: UserState,
        k: int,
        *,
        seeds: Mapping[str, Seed],
        trigger: str | None,
        source_ts: int | None,
        request_id: str | None = None,
    ) -> None:
        ranked = await retrying(
            lambda: self.recommender.recommend(state, k, seeds=seeds), "Qdrant query"
        )
        await self._send_recommendation(
            user_id, ranked, trigger=trigger, source_ts=source_ts, request_id=request_id
        )

    async def _send_recommendation(
        self,
        user_id: str,
        ranked: Sequence[RankedItem],
        *,
        trigger: str | None,
        source_ts: int | None,
        request_id: str | None = None,
    ) -> None:
        value = schemas.recommendation(
            user_id=user_id,
            items=[r.to_wire() for r in ranked],
            trigger=trigger,
            source_ts=source_ts,
            generated_at=now_ms(),
            model_version=self.settings.model_version,
            request_id=request_id,
        )
        await self.recommendations.send(key=user_id.encode(), value=schemas.dumps(value))

    # -- item activity (internal, keyed by item id) -------------------------------------------
    async def on_item_activity(self, msg: Msg) -> None:
        """Fold a record's updates into the items' sides (Table, exact): each item's decayed
        popularity (trend), interaction count and co-occurrence row, in the order the updates
        were made; each item changed is written to the Table once. A record is
        ``{"updates": [update, ...]}`` or one update (as written before updates were grouped):
        ``{"item_id", "w", "ts", "pairs"}``. The store's copy (payload ``trend``, ``cf_count``,
        ``cf_top``) is written in batches by :meth:`flush_item_stats`."""
        try:
            a = orjson.loads(msg.value or b"")
            updates = [_activity_update(u) for u in (a["updates"] if "updates" in a else [a])]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
            await self.dead_letter(msg, f"invalid item-activity record: {exc}")
            return
        changed: dict[str, dict[str, Any]] = {}
        for item_id, w, ts, pairs in updates:
            old = changed.get(item_id) or self.item_stats.get(item_id)
            old = old or {"t": NO_TREND, "c": 0.0, "r": {}}
            new = dict(old)
            if w > 0:
                new["t"] = trend_after(old["t"], w, ts, self.trend_half_life_ms)
                new["c"] = count_after(old["c"], w)
            if pairs:
                new["r"] = row_after(old["r"], [(nb, pw) for nb, pw, _ in pairs], self.cooc.max_row)
                # "n": the neighbours' counts as last carried ("history" weights); absent in
                # values written before counts were carried
                new["n"] = known_counts_after(
                    old.get("n") or {}, [(nb, c) for nb, _, c in pairs], new["r"]
                )
            changed[item_id] = new
        for item_id, new in changed.items():
            self.item_stats[item_id] = new
            self._pending_items[item_id] = new
        if len(self._pending_items) >= 500:
            await self.flush_item_stats()

    async def flush_item_stats(self) -> None:
        """Copy changed item sides to the store (per 500 changes and by a 1 s timer). A crash
        may lose the last interval's copy, not the data: the Table holds it, and the item's
        next record writes it again."""
        pending, self._pending_items = self._pending_items, {}
        bits = self.settings.ranking.seen_filter_bits
        payloads = {}
        alpha = self.cooc.history_alpha
        for i, v in pending.items():
            top, hist = published_rows(v["r"], self.cooc)
            # cf_pos/cf_w: the row's strongest history_top_n entries as Bloom positions with
            # their "history" weights (w / count(neighbour) ** history_alpha)
            hw = history_weights(hist, v.get("n") or {}, alpha)
            payloads[i] = {
                "trend": v["t"],
                "cf_count": v["c"],
                "cf_top": cf_top_text(top),
                **pack_row(hist, bits, hw),
            }
        await retrying(lambda: self.store.set_payload(payloads), "Qdrant set_payload")

    def close(self) -> None:
        self.content_encoder.close()
