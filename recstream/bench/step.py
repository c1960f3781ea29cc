"""The online step alone, without Kafka: what one core computes per event at catalog scale.

    python -m recstream.bench.step [--items 100000] [--users 100000] [--batch 1 16 64]
        [--events 20000] [--handlers] [--report R.json]

The bench's synthetic catalog (recstream/bench/catalog.py: 384-d text vectors around 64
topics, content neighbours, Zipf popularity) in a Catalog, users drawn uniformly, items on the
load generator's Zipf curve, its event types; rounds of ``--batch`` events of distinct users
through ``OnlineModel.step`` with their states read from and written to bytes (and the shared
weights learning, one step per round, as in the worker), the item side's
updates applied and published into the catalog after each round (what the worker's item-stats
Table and catalog reader do). Prints, per batch size, events/s and the per-round p50 / p99 of
the state codec, the step and the item side, and writes them as JSON.

``--handlers``: the worker's handler instead (``streams/handlers.py``: parse, forward check,
state codec, step, lists and reasons, the batch's writes and answers as JSON), with dicts for
the Faust tables and lists for the topics, and the item-activity records folded and published
into the catalog as the worker's item-activity agent and catalog reader do: per batch size,
``on_events`` and ``on_item_activities`` microseconds per event. What Faust and the Kafka
clients add on top is the difference to `recstream bench` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from recstream.bench.catalog import hot_sides, item_id, synthetic, zipf_weights
from recstream.bench.load import TYPE_P, TYPES
from recstream.ranking.catalog import Catalog, CatalogParams
from recstream.ranking.item_side import ItemRow, ItemSide
from recstream.ranking.learner import SharedWeights
from recstream.ranking.params import model_params
from recstream.ranking.settings import RankingSettings
from recstream.ranking.step import Event, OnlineModel
from recstream.ranking.user_state import UserState, item_hash

DAY_MS = 86_400_000


def build(n_items: int, seed: int, settings: RankingSettings) -> tuple[OnlineModel, ItemSide]:
    data = synthetic(Path.home() / ".cache" / "recstream" / "bench", n_items, seed)
    params = model_params(settings)
    cat = Catalog(
        {"text": data["vectors"].shape[1]}, params.cooc,
        CatalogParams(seen_bits=settings.seen_filter_bits), capacity=n_items,
    )  # fmt: skip
    now = time.time_ns() // 1_000_000
    for i in range(n_items):
        nbs = [(item_id(int(j)), float(s)) for j, s in zip(data["nb"][i], data["sim"][i],
                                                           strict=True) if j >= 0]  # fmt: skip
        cat.upsert(
            item_id(i), {"text": data["vectors"][i]}, title=f"synthetic item {i}",
            tags=(f"topic-{data['topic'][i]}",), published_at=int(now - data["age"][i]),
            neighbours=nbs,
        )  # fmt: skip
    side = ItemSide(params.cooc, params.score.trending_half_life_ms, params.score.hot_half_life_ms)
    for iid, row in hot_sides(n_items, now, params.score):
        h = item_hash(iid)
        side.rows[h] = row
        cat.set_side(h, row)
    return OnlineModel(cat, params), side


class _Draws:
    """Users uniformly, items on the load generator's Zipf curve, its event types."""

    def __init__(self, n_items: int, n_users: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.n_users = n_users
        self.item_cdf = np.cumsum(zipf_weights(n_items, 0.8))
        self.item_cdf /= self.item_cdf[-1]
        self.type_cdf = np.cumsum(TYPE_P) / np.sum(TYPE_P)

    def users(self, n: int) -> list[str]:
        return [f"user-{int(u):06d}" for u in self.rng.integers(self.n_users, size=n)]

    def item_and_type(self) -> tuple[str, str]:
        cdf, types = self.item_cdf, self.type_cdf
        i = min(int(np.searchsorted(cdf, self.rng.random(), "right")), len(cdf) - 1)
        t = min(int(np.searchsorted(types, self.rng.random(), "right")), len(TYPES) - 1)
        return item_id(i), TYPES[t]


def run(model: OnlineModel, side: ItemSide, args: argparse.Namespace, batch: int) -> dict:
    draws = _Draws(len(model.cat), args.users, args.seed)
    states: dict[str, bytes] = {}
    p = model.p
    shared = SharedWeights.start(p.score.prior)  # one partition's, learned as the worker does
    now = time.time_ns() // 1_000_000
    parts: dict[str, list[float]] = {"codec": [], "step": [], "item_side": [], "round": []}
    done = 0
    t_all = time.perf_counter()
    while done < args.events:
        evs: list[Event] = []
        for u in sorted(set(draws.users(batch))):
            i, t = draws.item_and_type()
            now += 1
            evs.append(Event(u, i, t, now, None, f"e{done + len(evs)}"))
        t0 = time.perf_counter()
        sts = [UserState.from_bytes(states[e.user_id]) if e.user_id in states else UserState()
               for e in evs]  # fmt: skip
        t1 = time.perf_counter()
        res = model.step(evs, sts, now, [shared.w] * len(evs))
        shared.learn(res.gradients.values(), p.shared_learning_rate, p.shared_l2)
        t2 = time.perf_counter()
        for e, o in zip(evs, res.outcomes, strict=True):
            states[e.user_id] = o.state.to_bytes()
        t3 = time.perf_counter()
        for h in side.apply(res.updates):
            model.cat.set_side(h, side.rows[h])
        t4 = time.perf_counter()
        parts["codec"].append((t1 - t0 + t3 - t2) * 1e3)
        parts["step"].append((t2 - t1) * 1e3)
        parts["item_side"].append((t4 - t3) * 1e3)
        parts["round"].append((t4 - t0) * 1e3)
        done += len(evs)
    wall = time.perf_counter() - t_all
    out: dict = {"batch": batch, "events": done, "events_per_s": round(done / wall, 1)}
    for k, v in parts.items():
        a = np.asarray(v[len(v) // 10 :])  # after the first tenth (numba compiled, warm)
        out[f"{k}_ms_p50"] = round(float(np.percentile(a, 50)), 3)
        out[f"{k}_ms_p99"] = round(float(np.percentile(a, 99)), 3)
    return out


class _Table(dict[bytes, bytes]):
    """A Faust table as a dict that remembers the keys written since ``written()``."""

    def __init__(self) -> None:
        super().__init__()
        self._written: set[bytes] = set()

    def __setitem__(self, key: bytes, value: bytes) -> None:
        super().__setitem__(key, value)
        self._written.add(key)

    def written(self) -> set[bytes]:
        out, self._written = self._written, set()
        return out


class _Sink:
    """A topic as a list of (key, value, partition)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes, int | None]] = []

    async def send(
        self, *, key: bytes | None, value: bytes, partition: int | None = None, **_: Any
    ) -> None:
        self.sent.append((key, value, partition))


def run_handlers(model: OnlineModel, args: argparse.Namespace, batch: int) -> dict:
    """``--handlers``: stream batches of ``batch`` events through the worker's handler."""
    from recstream.streams.handlers import Handlers, Msg
    from recstream.streams.internal import key_partition
    from recstream.streams.settings import Settings

    settings = Settings()
    parts = settings.kafka.partitions
    users: dict[str, bytes] = {}
    stats = _Table()
    recs, dead, activity = _Sink(), _Sink(), _Sink()
    h = Handlers(settings, model=model, users=users, item_stats=stats, recommendations=recs,
                 dead_letters=dead, item_activity=activity, weights={})  # fmt: skip
    draws = _Draws(len(model.cat), args.users, args.seed)
    offsets = [0] * parts
    now = time.time_ns() // 1_000_000

    def messages() -> list[Msg]:
        out = []
        for user in draws.users(batch):
            i, t = draws.item_and_type()
            p = key_partition(user.encode(), parts)
            ev = {"user_id": user, "item_id": i, "type": t, "ts": now,
                  "event_id": f"e{p}-{offsets[p]}"}  # fmt: skip
            out.append(Msg("user-events", p, offsets[p], user.encode(), orjson.dumps(ev)))
            offsets[p] += 1
        return out

    async def loop() -> dict:
        t_ev: list[float] = []
        t_act: list[float] = []
        done = answered = 0
        while done < args.events:
            msgs = messages()
            t0 = time.perf_counter()
            await h.on_events(msgs)
            t1 = time.perf_counter()
            records = [Msg("item-activity", p or 0, n, k, v)
                       for n, (k, v, p) in enumerate(activity.sent)]  # fmt: skip
            activity.sent.clear()
            await h.on_item_activities(records)
            for key in stats.written():  # what the catalog reader publishes
                model.cat.set_side(int.from_bytes(key, "little"), ItemRow.from_bytes(stats[key]))
            t2 = time.perf_counter()
            answered += len(recs.sent)
            recs.sent.clear()
            t_ev.append((t1 - t0) / len(msgs))
            t_act.append((t2 - t1) / len(msgs))
            done += len(msgs)
        assert not dead.sent, dead.sent[:1]
        skip = len(t_ev) // 10  # numba compiled, warm
        return {
            "batch": batch, "events": done, "answered": answered,
            "on_events_us_per_event": round(float(np.mean(t_ev[skip:])) * 1e6, 1),
            "item_side_us_per_event": round(float(np.mean(t_act[skip:])) * 1e6, 1),
        }  # fmt: skip

    return asyncio.run(loop())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recstream.bench.step", description=__doc__)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--handlers", action="store_true", help="the worker's handler instead")
    p.add_argument("--report", type=Path)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    model, side = build(args.items, args.seed, RankingSettings())
    print(f"catalog of {args.items} items built in {time.perf_counter() - t0:.1f} s")
    rows = []
    for b in args.batch:
        r = run_handlers(model, args, b) if args.handlers else run(model, side, args, b)
        rows.append(r)
        print(orjson.dumps(r).decode())
    if args.report:
        report = {"items": args.items, "users": args.users, "machine": platform.processor()
                  or platform.machine(), "runs": rows}  # fmt: skip
        args.report.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
