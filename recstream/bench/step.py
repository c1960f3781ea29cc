"""The online step alone, without Kafka: what one core computes per event at catalog scale.

    python -m recstream.bench.step [--items 100000] [--users 100000] [--batch 1 16 64]
        [--events 20000] [--report R.json]

The bench's synthetic catalog (recstream/bench/catalog.py: 384-d text vectors around 64
topics, content neighbours, Zipf popularity) in a Catalog, users drawn uniformly, items on the
load generator's Zipf curve, its event types; rounds of ``--batch`` events of distinct users
through ``OnlineModel.step`` with their states read from and written to bytes (and the shared
weights learning, one step per round, as in the worker), the item side's
updates applied and published into the catalog after each round (what the worker's item-stats
Table and catalog reader do). Prints, per batch size, events/s and the per-round p50 / p99 of
the state codec, the step and the item side, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import orjson

from recstream.bench.catalog import hot_sides, item_id, synthetic, zipf_weights
from recstream.bench.load import TYPE_P, TYPES
from recstream.ranking.catalog import Catalog, CatalogParams
from recstream.ranking.item_side import ItemSide
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


def run(model: OnlineModel, side: ItemSide, args: argparse.Namespace, batch: int) -> dict:
    rng = np.random.default_rng(args.seed)
    item_cdf = np.cumsum(zipf_weights(len(model.cat), 0.8))
    item_cdf /= item_cdf[-1]
    type_cdf = np.cumsum(TYPE_P) / np.sum(TYPE_P)
    states: dict[str, bytes] = {}
    p = model.p
    shared = SharedWeights.start(p.score.prior)  # one partition's, learned as the worker does
    now = time.time_ns() // 1_000_000
    parts: dict[str, list[float]] = {"codec": [], "step": [], "item_side": [], "round": []}
    done = 0
    t_all = time.perf_counter()
    while done < args.events:
        users = {f"user-{int(u):06d}" for u in rng.integers(args.users, size=batch)}
        evs: list[Event] = []
        for u in sorted(users):
            i = min(int(np.searchsorted(item_cdf, rng.random(), "right")), len(item_cdf) - 1)
            t = TYPES[min(int(np.searchsorted(type_cdf, rng.random(), "right")), len(TYPES) - 1)]
            now += 1
            evs.append(Event(u, item_id(i), t, now, None, f"e{done + len(evs)}"))
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recstream.bench.step", description=__doc__)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", type=Path)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    model, side = build(args.items, args.seed, RankingSettings())
    print(f"catalog of {args.items} items built in {time.perf_counter() - t0:.1f} s")
    rows = []
    for b in args.batch:
        r = run(model, side, args, b)
        rows.append(r)
        print(orjson.dumps(r).decode())
    if args.report:
        report = {"items": args.items, "users": args.users, "machine": platform.processor()
                  or platform.machine(), "runs": rows}  # fmt: skip
        args.report.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
