"""Compile the online model's kernels before a worker takes partitions.

numba compiles each kernel (ranking/kernels.py) on its first call, or loads it from its cache
once the machine has compiled it. On a fresh machine that is seconds: measured, the first 10 s
of a first worker run at 1,000 events/s answered 2,458 events while the step compiled. A worker
that joins its consumer group before that makes its first events wait. ``warm_up`` runs the
step, a request and the item side once over a small scratch catalog of the model's modalities
and dimensions, down both of the step's paths (the whole catalog with the dense history
matrix; candidates from neighbours and trends without it), so the compiling happens before the
worker says it is ready. The model's own catalog is not touched.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from recstream.ranking.catalog import Catalog
from recstream.ranking.item_side import ItemRow, ItemSide
from recstream.ranking.learner import SharedWeights
from recstream.ranking.step import Event, ModelParams, OnlineModel
from recstream.ranking.user_state import UserState

ITEMS = 48
USERS = 6
ROUNDS = 3


def warm_up(model: OnlineModel, now_ms: int) -> float:
    """Run the scratch replay (see the module's docstring); returns the seconds it took."""
    t0 = time.perf_counter()
    for scan in (True, False):
        limit = ITEMS if scan else 0
        p = dataclasses.replace(model.p, full_scan_limit=limit)
        cat = Catalog(
            model.cat.dims, p.cooc, dataclasses.replace(model.cat.params, dense_limit=limit),
            capacity=ITEMS,
        )  # fmt: skip
        _replay(OnlineModel(cat, p), p, now_ms)
    return time.perf_counter() - t0


def _replay(model: OnlineModel, p: ModelParams, now_ms: int) -> None:
    cat, rng = model.cat, np.random.default_rng(0)
    ids = [f"warm-up-{i}" for i in range(ITEMS)]
    # four topics, so that the users' likes have really similar items to explain lists with
    centres = {m: rng.standard_normal((4, d)) for m, d in cat.dims.items()}
    for i, item_id in enumerate(ids):
        vectors = {m: (c[i % 4] + 0.1 * rng.standard_normal(c.shape[1])).astype(np.float32)
                   for m, c in centres.items()}  # fmt: skip
        near = [(ids[(i + j) % ITEMS], 0.9 - 0.1 * j) for j in range(1, 4)]
        cat.upsert(item_id, vectors, title=item_id, published_at=now_ms - 1000 * i,
                   neighbours=near)  # fmt: skip
    positive = [t for t, w in p.state.event_weights.items() if w > 0] or ["view"]
    side = ItemSide(p.cooc, p.score.trending_half_life_ms, p.score.hot_half_life_ms)
    shared = SharedWeights.start(p.score.prior)
    states: dict[str, bytes] = {}
    for n in range(ROUNDS):
        events = [
            Event(
                user_id=f"u{u}",
                item_id=ids[(u + 4 * n) % ITEMS],
                type=positive[(u + n) % len(positive)],
                ts=now_ms + n,
                dedupe_id=f"e{n}-{u}",
                partition=0,
                offset=n * USERS + u,
            )
            for u in range(USERS)
        ]
        before = [UserState.from_bytes(states[e.user_id]) if e.user_id in states else UserState()
                  for e in events]  # fmt: skip
        res = model.step(events, before, now_ms + n, [shared.w] * len(events))
        shared.learn(res.gradients.values(), p.shared_learning_rate, p.shared_l2)
        for e, o in zip(events, res.outcomes, strict=True):
            states[e.user_id] = o.state.to_bytes()
        # the evaluator's item side (rows moved by what changed) and the worker's (rows
        # folded in the item-stats Table, published whole from their bytes)
        for h, changed in side.apply(res.updates).items():
            cat.set_side(h, side.rows[h], changed)
        for u in res.updates:
            row = ItemRow()
            row.apply(u, p.cooc, p.score.trending_half_life_ms, p.score.hot_half_life_ms)
            cat.set_side(u.item, ItemRow.from_bytes(row.to_bytes()))
    model.recommend([UserState.from_bytes(states["u0"]), UserState()], [p.k, p.k], now_ms,
                    shared=[shared.w, None])  # fmt: skip
