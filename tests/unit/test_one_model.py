"""One model: the same events replayed through the worker's handlers (streams/handlers.py, the
item side's records going round through item-activity, the item-stats Table and the catalog
reader as in the worker) and through ``recstream evaluate``'s model (evaluate/online.py) give
the same user states and the same ranked lists."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from recstream.ranking.catalog import Catalog
from recstream.ranking.evaluate.data import Interactions
from recstream.ranking.evaluate.online import OnlineRecstream, content_neighbours
from recstream.ranking.learner import SharedWeights
from recstream.ranking.params import model_params
from recstream.ranking.scoring import FEATURES
from recstream.ranking.settings import RankingSettings
from recstream.ranking.step import OnlineModel
from recstream.ranking.user_state import UserState
from recstream.streams.catalog_reader import CatalogReader
from recstream.streams.handlers import Handlers, Msg
from recstream.streams.internal import key_partition
from recstream.streams.settings import KafkaSettings, Settings

NOW = 1_795_000_000_000
N_ITEMS, N_USERS, N_EVENTS = 40, 6, 240
TYPES = ["view", "like", "complete", "skip", "share", "dislike"]
# What a state remembers for deduplication (offsets, event ids) is the transport's, not the
# model's: the worker has offsets, the evaluator has none. Everything else must be equal.
MODEL_FIELDS = ("interest", "recent", "recent_w", "liked", "disliked", "weights", "shown",
                "scales", "seen_filter", "n_events", "last_ts")  # fmt: skip


class Sink:
    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    async def send(self, **kw: object) -> None:
        self.sent.append(kw)


def _data(rng: np.random.Generator) -> tuple[Interactions, np.ndarray]:
    user = rng.integers(0, N_USERS, N_EVENTS).astype(np.int32)
    # a few popular items, so the co-occurrence side has rows worth publishing
    item = np.minimum(rng.zipf(1.6, N_EVENTS) - 1, N_ITEMS - 1).astype(np.int32)
    ts = NOW + np.cumsum(rng.integers(1, 600_000, N_EVENTS)).astype(np.int64)
    etype = [TYPES[i] for i in rng.integers(0, len(TYPES), N_EVENTS)]
    data = Interactions(
        user, item, ts, etype, np.full(N_EVENTS, np.nan), [str(u) for u in range(N_USERS)],
        [f"i{n}" for n in range(N_ITEMS)], item_title=[f"title {n}" for n in range(N_ITEMS)],
    )  # fmt: skip
    text = rng.standard_normal((N_ITEMS, 8)).astype(np.float32)
    return data, text


def _worker(
    data: Interactions, text: np.ndarray, settings: Settings, weights: dict[str, bytes]
) -> tuple[dict[str, bytes], list[list[tuple[str, float, str]]]]:
    """The events through the handlers, one message at a time, the item side round-tripped
    through item-activity -> item-stats -> the catalog reader after each."""
    params = model_params(settings.ranking)
    cat = Catalog({"text": text.shape[1]}, params.cooc, capacity=N_ITEMS)
    # each item's content neighbours as the encoding stage gives them (the evaluator's)
    near = content_neighbours(text, settings.ranking.content_neighbours, data.item_ids)
    for n, item_id in enumerate(data.item_ids):
        cat.upsert(item_id, {"text": text[n]}, title=data.item_title[n], neighbours=near[n])
    reader = CatalogReader(cat, {}, "items", "item-stats")
    users: dict[str, bytes] = {}
    stats: dict[bytes, bytes] = {}
    recs, dead, activity = Sink(), Sink(), Sink()
    clock = [0]
    h = Handlers(
        settings, model=OnlineModel(cat, params), users=users, item_stats=stats,
        recommendations=recs, dead_letters=dead, item_activity=activity,
        clock=lambda: clock[0], weights=weights,
    )  # fmt: skip
    partitions = settings.kafka.partitions
    lists = []
    for j in range(len(data)):
        user_id = data.user_ids[int(data.user[j])]
        ev = {"user_id": user_id, "item_id": data.item_ids[int(data.item[j])],
              "type": data.etype[j], "ts": int(data.ts[j])}  # fmt: skip
        clock[0] = int(data.ts[j])
        p = key_partition(user_id.encode(), partitions)
        asyncio.run(h.on_event(Msg("user-events", p, j, user_id.encode(), orjson.dumps(ev))))
        assert not dead.sent, dead.sent
        answer = orjson.loads(recs.sent[-1]["value"])  # type: ignore[arg-type]
        lists.append([(i["item_id"], i["score"], i["reason"]) for i in answer["items"]])
        for n, rec in enumerate(activity.sent):
            written = dict(stats)
            msg = Msg("item-activity", 0, n, rec["key"], rec["value"])  # type: ignore[arg-type]
            asyncio.run(h.on_item_activity(msg))
            for key, value in stats.items():  # what the Table's changelog carries
                if written.get(key) != value:
                    reader._apply("item-stats", key, value)
        activity.sent.clear()
    return users, lists


def _evaluator(
    data: Interactions, text: np.ndarray, settings: Settings
) -> tuple[dict[int, bytes], list[list[tuple[str, float, str]]], np.ndarray]:
    m = OnlineRecstream(data, settings.ranking, text, explain=True)
    lists = []
    for j in range(len(data)):
        ranked = m.learn(j)  # the list the step answers the event with
        assert ranked is not None
        lists.append([(i, round(s, 6), why) for i, s, why in ranked.items(m.cat)])
    return m.states, lists, m.shared.w


@pytest.mark.parametrize("full_scan", [4096, 8], ids=["whole catalog", "candidate sources"])
def test_the_worker_and_the_evaluator_are_the_same_model(full_scan: int) -> None:
    data, text = _data(np.random.default_rng(7))
    # one partition: the evaluator learns one set of shared weights from every event, as a
    # worker does from each partition's events
    settings = Settings(
        kafka=KafkaSettings(partitions=1), ranking=RankingSettings(full_scan_items=full_scan)
    )
    weights: dict[str, bytes] = {}
    worker_states, worker_lists = _worker(data, text, settings, weights)
    eval_states, eval_lists, eval_shared = _evaluator(data, text, settings)
    assert worker_lists == eval_lists
    prior = settings.ranking.score_weights
    shared = SharedWeights.from_bytes(weights["0"], [prior[f] for f in FEATURES])
    assert shared.w.tolist() == eval_shared.tolist()
    # learned from the stream: upto is the offset of the last event that learned
    assert shared.n > 100 and len(data) - 10 < shared.upto < len(data)
    assert shared.w.tolist() != [prior[f] for f in FEATURES]
    assert len({tuple(x) for x in worker_lists}) > 20  # the lists change as users act
    reasons = {why for lst in worker_lists for _, _, why in lst}
    assert len(reasons) > 3, reasons  # and are explained in more than one way
    assert set(worker_states) == {str(u) for u in eval_states}
    for u, raw in eval_states.items():
        a, b = UserState.from_bytes(worker_states[str(u)]), UserState.from_bytes(raw)
        for name in MODEL_FIELDS:
            x, y = getattr(a, name), getattr(b, name)
            if isinstance(x, dict):
                assert x.keys() == y.keys(), name
                for mod in x:
                    np.testing.assert_array_equal(x[mod], y[mod], err_msg=name)
            else:
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
        assert b.n_events > 0
