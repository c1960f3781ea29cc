"""The item side of the collaborative signal through the worker's handlers (streams/handlers.py):
the user side's item-activity records carry each neighbour's count, the item side keeps it and
publishes the "history" weights ``w / count(neighbour) ** history_alpha`` as the packed row's
``cf_w`` (in a real embedded store), and records written before counts were carried are still
accepted."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest

from recstream.ranking import store as stores
from recstream.ranking.collab import count_after, pack_row, unpack_row
from recstream.ranking.features import Seed
from recstream.ranking.params import score_params
from recstream.ranking.recommender import Recommender
from recstream.ranking.state import UserState
from recstream.ranking.store import ItemRecord, ItemStore
from recstream.streams.handlers import Handlers, Msg, key_partition
from recstream.streams.settings import RankingSettings, Settings

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")


class ListSink:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes]] = []
        self.partitions: list[int | None] = []

    async def send(self, *, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        self.sent.append((key, value))
        self.partitions.append(partition)


def _msg(value: dict[str, Any], offset: int) -> Msg:
    key = (value["updates"][0] if "updates" in value else value)["item_id"].encode()
    return Msg("item-activity", 0, offset, key, orjson.dumps(value))


def _handlers(settings: Settings, store: ItemStore, activity: ListSink, dead: ListSink) -> Handlers:
    return Handlers(
        settings,
        store=store,
        content_encoder=None,  # type: ignore[arg-type]  # no content in these tests
        recommender=Recommender(
            store, score_params(settings.ranking), dims={"text": 4}, seen_filter_bits=6144
        ),
        users={},
        item_stats={},
        recommendations=ListSink(),
        dead_letters=dead,
        item_activity=activity,
    )


def test_the_history_row_publishes_its_own_number_of_entries() -> None:
    """cf_top holds cooc_top_n entries, the packed "history" row cooc_history_top_n (the
    strongest first, ties by id), either one the longer."""
    for top_n, hist_n in ((1, 3), (3, 2)):
        ranking = RankingSettings(history_alpha=0.0, cooc_top_n=top_n, cooc_history_top_n=hist_n)

        async def main(ranking: RankingSettings) -> dict[str, Any]:
            store = stores.connect(
                url=None, api_key=None, location=":memory:", collection="t", dims={"text": 4}
            )
            await store.ensure_collection()
            vec = np.array([1, 0, 0, 0], dtype=np.float32)
            await store.upsert([ItemRecord(i, {"text": vec}) for i in ("x", "a", "b", "c")])
            h = _handlers(Settings(ranking=ranking), store, ListSink(), ListSink())
            try:
                pairs = [["b", 2.0], ["c", 1.0], ["a", 2.0]]
                rec = {"item_id": "x", "w": 1.0, "ts": 1_000, "pairs": pairs}
                await h.on_item_activity(_msg(rec, 0))
                await h.flush_item_stats()
                return (await store.get(["x"], with_vectors=False))["x"].payload
            finally:
                await store.close()

        p = asyncio.run(main(ranking))
        best = [("a", 2.0), ("b", 2.0), ("c", 1.0)]
        assert orjson.loads(p["cf_top"]) == {
            "i": [i for i, _ in best[:top_n]], "w": [w for _, w in best[:top_n]]
        }  # fmt: skip
        row = unpack_row(p)
        assert row is not None
        assert row[1].tolist() == [w for _, w in best[:hist_n]]
        assert (row[0] == unpack_row(pack_row(best[:hist_n], 6144))[0]).all()  # type: ignore[index]


def test_records_carry_counts_and_the_item_side_publishes_history_weights() -> None:
    settings = Settings(ranking=RankingSettings(history_alpha=0.5, cooc_backward=0.5))

    async def main() -> None:
        store = stores.connect(
            url=None, api_key=None, location=":memory:", collection="t", dims={"text": 4}
        )
        await store.ensure_collection()
        vec = np.array([1, 0, 0, 0], dtype=np.float32)
        await store.upsert([ItemRecord(i, {"text": vec}) for i in ("pop", "rare", "x")])
        activity, dead = ListSink(), ListSink()
        h = _handlers(settings, store, activity, dead)
        try:
            # user side: a user who took pop now takes x; the store said pop's count is 16
            before = UserState(recent=[("pop", 1.0)])
            seeds = {"x": Seed("x", cf_count=3.0), "pop": Seed("pop", cf_count=16.0)}
            h._add_item_activity(before, "x", 1.0, 1_000, seeds)
            await h._flush_activity()
            # one record per destination partition (the item's, by the default partitioner)
            sent = [orjson.loads(v) for _, v in activity.sent]
            records = {u["item_id"]: u for rec in sent for u in rec["updates"]}
            for (key, _), rec, p in zip(activity.sent, sent, activity.partitions, strict=True):
                assert key == rec["updates"][0]["item_id"].encode()
                assert {key_partition(u["item_id"].encode(), 4) for u in rec["updates"]} == {p}
            assert records["pop"]["pairs"] == [["x", 1.0, 3.0]]
            assert records["x"]["pairs"] == [["pop", 0.5, 16.0]]
            assert records["x"]["w"] == 1.0 and records["pop"]["w"] == 0.0

            # item side: those records, and one written before updates were grouped and
            # counts carried
            old = {"item_id": "x", "w": 0.0, "ts": 1_000, "pairs": [["rare", 0.5]]}
            for n, rec in enumerate([*sent, old]):
                await h.on_item_activity(_msg(rec, n))
            assert not dead.sent
            assert h.item_stats["x"]["n"] == {"pop": 16.0}  # rare's count is not known
            await h.flush_item_stats()
            got = await store.get(["x"], with_vectors=False)
            p = got["x"].payload
            # raw weights, as JSON text in columns
            assert orjson.loads(p["cf_top"]) == {"i": ["pop", "rare"], "w": [0.5, 0.5]}
            row = unpack_row(p)
            assert row is not None
            assert row[1].tolist() == [0.125, 0.5]  # 0.5 / 16 ** 0.5; rare: count unknown

            # a later record brings rare's count: its entry is normalised too
            new = {"item_id": "x", "w": 0.0, "ts": 2_000, "pairs": [["rare", 0.5, 4.0]]}
            await h.on_item_activity(_msg(new, 3))
            await h.flush_item_stats()
            p = (await store.get(["x"], with_vectors=False))["x"].payload
            assert orjson.loads(p["cf_top"]) == {"i": ["rare", "pop"], "w": [1.0, 0.5]}
            assert unpack_row(p)[1].tolist() == [0.5, 0.125]  # type: ignore[index]

            # a pair that is not [id, weight(, count)] is a bad record: dead-lettered
            bad = {"item_id": "x", "w": 0.0, "ts": 3_000, "pairs": [["rare"]]}
            await h.on_item_activity(_msg(bad, 4))
            assert len(dead.sent) == 1

            # a grouped record applies its updates in order, each item written once
            grouped = {"updates": [
                {"item_id": "pop", "w": 1.0, "ts": 4_000, "pairs": []},
                {"item_id": "rare", "w": 1.0, "ts": 4_000, "pairs": [["pop", 1.0, 16.0]]},
                {"item_id": "pop", "w": 2.0, "ts": 5_000, "pairs": [["rare", 0.25, 1.0]]},
            ]}  # fmt: skip
            c_pop = h.item_stats["pop"]["c"]
            await h.on_item_activity(_msg(grouped, 5))
            assert len(dead.sent) == 1
            assert h.item_stats["pop"]["c"] == count_after(count_after(c_pop, 1.0), 2.0)
            assert h.item_stats["pop"]["r"]["rare"] == 0.25
            assert h.item_stats["rare"]["r"] == {"pop": 1.0}
        finally:
            await store.close()

    asyncio.run(main())
