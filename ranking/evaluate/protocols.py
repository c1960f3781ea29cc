"""The two replay protocols. Both feed every model the same interactions in the same order.

prequential  for each interaction in timestamp order: rank every item the user has not
             interacted with yet, score where the target falls, then learn from it.
split        RecBole's default: each user's interactions shuffled (seeded) and cut 80/10/10
             (valid = test = floor(10%), train = the rest); the training part is learned as a
             stream; then every user ranks all items outside their train and valid parts, and
             the test part is the set of targets. The stream's order (``split_replay``):
             ``time``, timestamp order (the default); or ``random``, RecBole's default
             ordering (``order: RO``): the training interactions in a seeded random order,
             carrying the training part's timestamps in ascending order, so time still moves
             forward.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from recstream.ranking.evaluate.data import Interactions
from recstream.ranking.evaluate.metrics import Accumulator, list_ranks, target_ranks, top_k

COLD_ITEM_EVENTS = 10  # an item is "cold" while it has had fewer interactions than this


class Model(Protocol):
    name: str

    def scores(self, user: int, now_ms: int) -> np.ndarray:
        """float[n_items], higher is better; -inf: the model itself excludes the item."""
        ...

    def learn(self, j: int) -> None:
        """Learn from interaction j of the dataset."""
        ...


class Timer:
    def __init__(self) -> None:
        self.ns: list[int] = []

    def summary(self) -> dict[str, float]:
        if not self.ns:
            return {}
        a = np.asarray(self.ns, dtype=np.float64) / 1e6
        return {
            "ms_p50": float(np.percentile(a, 50)),
            "ms_p99": float(np.percentile(a, 99)),
            "ms_mean": float(a.mean()),
        }


def _extra(m: Model) -> dict[str, float]:
    report = getattr(m, "report", None)
    return report() if report else {}


def _scores(m: Model, user: int, now_ms: int) -> np.ndarray | None:
    """The model's scores, or None for a model that gives its own list (``ranked``)."""
    return None if hasattr(m, "ranked") else m.scores(user, now_ms)


def _ranked(
    m: Model,
    s: np.ndarray | None,
    cand: np.ndarray,
    targets: Sequence[int],
    k: int,
    user: int = -1,
    now_ms: int = 0,
) -> tuple[list[int], np.ndarray]:
    """The targets' ranks and the top-k list: from the model's own list where it makes one
    (``ranked``: the online step's list; ``listed``: diversified lists), else by score. A
    target outside a model's own list is a miss (rank k)."""
    ranked = getattr(m, "ranked", None)
    if ranked is not None:
        lst = ranked(user, now_ms, k, cand)
        at = {int(r): n for n, r in enumerate(lst)}
        return [at.get(int(t), k) for t in targets], np.asarray(lst, dtype=np.intp)
    assert s is not None
    listed = getattr(m, "listed", None)
    lst = listed(s, cand, k) if listed is not None else None
    if lst is None:
        return target_ranks(s, cand, targets), top_k(s, cand, k)
    return list_ranks(lst, s, cand, targets), lst


def beside(
    run: Callable[..., dict[str, dict[str, float | int]]],
    data: Interactions,
    models: Sequence[Model],
    jobs: int,
    progress: bool,
    **kwargs: Any,
) -> dict[str, dict[str, float | int]]:
    """``run(data, models, progress=..., **kwargs)`` (a protocol), with ``jobs`` > 1 the
    models that learn without the stream's step (the baselines) in a second process at the
    same time as the others. Each model reads only the data and its own state, so the
    results are the ones one process gives; the per-model timings are each process's own."""
    stream = [m for m in models if hasattr(m, "ranked")]
    others = [m for m in models if not hasattr(m, "ranked")]
    if jobs <= 1 or not stream or not others:
        return run(data, models, progress=progress, **kwargs)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        later = pool.submit(run, data, others, progress=False, **kwargs)
        out = run(data, stream, progress=progress, **kwargs)
        out.update(later.result())
    return {m.name: out[m.name] for m in models}


def prequential(
    data: Interactions,
    models: Sequence[Model],
    k: int = 10,
    progress: bool = True,
    item_vectors: np.ndarray | None = None,
) -> dict[str, dict[str, float | int]]:
    """``item_vectors``: unit vectors per item, for every model's ILD@k (metrics.Accumulator)."""
    accs = {m.name: Accumulator(k, data.n_items, item_vectors) for m in models}
    timers = {m.name: Timer() for m in models}
    # each user's items so far, in an array (an index array ready for the candidate mask) and
    # a set; users seen at all
    seen_rows: dict[int, np.ndarray] = {}
    seen_n: dict[int, int] = {}
    seen_set: dict[int, set[int]] = {}
    item_events = np.zeros(data.n_items, dtype=np.int64)
    cand = np.ones(data.n_items, dtype=bool)
    for j in tqdm(range(len(data)), desc="prequential", disable=not progress, mininterval=1.0):
        u, i, ts = int(data.user[j]), int(data.item[j]), int(data.ts[j])
        mine = seen_set.setdefault(u, set())
        repeat = i in mine
        segments = []
        if u not in seen_n:
            segments.append("first")
            seen_n[u] = 0
            seen_rows[u] = np.zeros(16, np.intp)
        if item_events[i] < COLD_ITEM_EVENTS:
            segments.append("cold")
        hist = seen_rows[u][: seen_n[u]]
        cand[hist] = False
        for m in models:
            t0 = time.perf_counter_ns()
            s = _scores(m, u, ts)
            if not repeat:  # a re-interaction is learned from, not scored: it is not "new"
                t1 = time.perf_counter_ns()
                ranks, top = _ranked(m, s, cand, [i], k, u, ts)
                accs[m.name].add(ranks, segments, top)
                t2 = time.perf_counter_ns()
            else:
                t1 = t2 = time.perf_counter_ns()
            m.learn(j)
            t3 = time.perf_counter_ns()
            timers[m.name].ns.append((t1 - t0) + (t3 - t2))
        cand[hist] = True
        if not repeat:
            n = seen_n[u]
            if n == len(seen_rows[u]):
                seen_rows[u] = np.concatenate([seen_rows[u], np.zeros(n, np.intp)])
            seen_rows[u][n] = i
            seen_n[u] = n + 1
            mine.add(i)
        item_events[i] += 1
    return {
        m.name: {**accs[m.name].result(), **timers[m.name].summary(), **_extra(m)} for m in models
    }


def split_indices(data: Interactions, seed: int = 2020) -> np.ndarray:
    """0 = train, 1 = valid, 2 = test for each interaction (RecBole's RS 0.8/0.1/0.1)."""
    rng = np.random.default_rng(seed)
    part = np.zeros(len(data), dtype=np.int8)
    by_user: dict[int, list[int]] = {}
    for j, u in enumerate(data.user):
        by_user.setdefault(int(u), []).append(j)
    for rows in by_user.values():
        idx = np.asarray(rows)[rng.permutation(len(rows))]
        n = len(idx)
        n_valid = n_test = int(0.1 * n)
        n_train = n - n_valid - n_test
        part[idx[n_train : n_train + n_valid]] = 1
        part[idx[n_train + n_valid :]] = 2
    return part


SPLIT_ORDERS = ("time", "random")


def split_replay(
    data: Interactions, seed: int = 2020, order: str = "time"
) -> tuple[Interactions, np.ndarray]:
    """The split protocol's data and parts (``split_indices``), the training part first, in
    the order the stream learns it (see the module doc); valid and test follow unchanged.

    With ``random``, the i-th training interaction learned gets the i-th smallest training
    timestamp: a random split has no order to learn from (a test interaction may be older
    than most of the training ones), and time-decayed state still sees time go forward."""
    if order not in SPLIT_ORDERS:
        raise ValueError(f"split order must be one of {SPLIT_ORDERS}, not {order!r}")
    part = split_indices(data, seed)
    train, rest = np.flatnonzero(part == 0), np.flatnonzero(part > 0)
    if order == "time":
        rows = np.concatenate([train, rest])
        return data.take(rows), part[rows]
    shuffled = np.random.default_rng(seed).permutation(train)
    rows = np.concatenate([shuffled, rest])
    ts = np.concatenate([np.sort(data.ts[train]), data.ts[rest]])
    return data.take(rows, ts), part[rows]


def split(
    data: Interactions,
    models: Sequence[Model],
    k: int = 10,
    progress: bool = True,
    seed: int = 2020,
    part: np.ndarray | None = None,
    item_vectors: np.ndarray | None = None,
) -> dict[str, dict[str, float | int]]:
    """``part``: 0/1/2 per interaction (train/valid/test), e.g. from ``split_replay``;
    default ``split_indices(data, seed)``. Training interactions are learned in row order.
    ``item_vectors``: as for ``prequential``."""
    if part is None:
        part = split_indices(data, seed)
    accs = {m.name: Accumulator(k, data.n_items, item_vectors) for m in models}
    timers = {m.name: Timer() for m in models}
    train = np.flatnonzero(part == 0)
    for j in tqdm(train, desc="split: learn", disable=not progress, mininterval=1.0):
        for m in models:
            t0 = time.perf_counter_ns()
            m.learn(int(j))
            timers[m.name].ns.append(time.perf_counter_ns() - t0)
    now = int(data.ts[train].max()) if len(train) else 0
    users = sorted(set(int(u) for u in data.user[part == 2]))
    item_train = np.bincount(data.item[train], minlength=data.n_items)
    for u in tqdm(users, desc="split: rank", disable=not progress, mininterval=1.0):
        rows = np.flatnonzero(data.user == u)
        cand = np.ones(data.n_items, dtype=bool)
        cand[data.item[rows[part[rows] < 2]]] = False
        targets = sorted(set(int(i) for i in data.item[rows[part[rows] == 2]]))
        targets = [t for t in targets if cand[t]]
        if not targets:
            continue
        cold = ["cold"] if all(item_train[t] < COLD_ITEM_EVENTS for t in targets) else []
        for m in models:
            s = _scores(m, u, now)
            ranks, top = _ranked(m, s, cand, targets, k, u, now)
            accs[m.name].add(ranks, cold, top)
    return {
        m.name: {**accs[m.name].result(), **timers[m.name].summary(), **_extra(m)} for m in models
    }
