"""ranking/warm.py: after the warm-up, the online step, a request and both item-side paths over
a real catalog compile nothing more (checked in a fresh process: this one has compiled every
kernel already), and the model's own catalog is untouched."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, time
import numba
import numpy as np
from recstream.ranking import kernels
from recstream.ranking.catalog import Catalog, CatalogParams
from recstream.ranking.item_side import ItemRow, ItemSide
from recstream.ranking.params import model_params
from recstream.ranking.settings import RankingSettings
from recstream.ranking.step import Event, OnlineModel
from recstream.ranking.user_state import UserState
from recstream.ranking.warm import warm_up

def signatures():
    return {k: len(v.signatures) for k, v in vars(kernels).items()
            if isinstance(v, numba.core.registry.CPUDispatcher)}

out = {}
now = 1_700_000_000_000
for big in (False, True):
    s = RankingSettings()
    p = model_params(s)
    n = 300
    cat = Catalog({"text": 8, "image": 4}, p.cooc, CatalogParams(
        seen_bits=s.seen_filter_bits, dense_limit=100 if big else 1000), capacity=n)
    model = OnlineModel(cat, p if not big else __import__("dataclasses").replace(
        p, full_scan_limit=100))
    warm_up(model, now)
    out[f"catalog_after_warm_up_{big}"] = len(cat)
    before = signatures()
    rng = np.random.default_rng(1)
    ids = [f"i{j}" for j in range(n)]
    for j, i in enumerate(ids):
        cat.upsert(i, {"text": rng.standard_normal(8).astype(np.float32),
                       "image": rng.standard_normal(4).astype(np.float32)},
                   title=i, published_at=now - j, neighbours=[(ids[(j + 1) % n], 0.5)])
    side = ItemSide(p.cooc, p.score.trending_half_life_ms, p.score.hot_half_life_ms)
    states = {}
    for r in range(4):
        evs = [Event(f"u{u}", ids[(u * 13 + r) % n], "like", now + r, None, f"e{r}{u}", 0,
                     r * 20 + u) for u in range(20)]
        res = model.step(evs, [states.get(e.user_id, UserState()) for e in evs], now + r)
        for e, o in zip(evs, res.outcomes):
            states[e.user_id] = UserState.from_bytes(o.state.to_bytes())
        for h, ch in side.apply(res.updates).items():
            cat.set_side(h, side.rows[h], ch)
        for h in side.rows:
            cat.set_side(h, ItemRow.from_bytes(side.rows[h].to_bytes()))
    model.recommend(list(states.values()), [10] * len(states), now + 9)
    after = signatures()
    out[f"compiled_after_{big}"] = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    out[f"warm_{big}"] = sum(before.values())
print(json.dumps(out))
"""


def test_nothing_compiles_after_the_warm_up() -> None:
    got = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, check=True
    )
    out = json.loads(got.stdout.strip().splitlines()[-1])
    for big in (False, True):
        assert out[f"catalog_after_warm_up_{big}"] == 0  # the model's catalog untouched
        assert out[f"warm_{big}"] > 10  # the step's kernels are compiled
        assert out[f"compiled_after_{big}"] == {}, out
