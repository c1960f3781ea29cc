"""Baselines replayed by the same harness: online popularity, online item-kNN co-occurrence,
a random ranker, and EASE (fit once on the split protocol's training part). Each keeps only
what it learned from the interactions replayed so far."""

from __future__ import annotations

import time

import numpy as np
from numba import njit

from recstream.ranking.evaluate.data import Interactions


class PopularityModel:
    """Score = number of interactions so far (all users)."""

    name = "popularity"

    def __init__(self, data: Interactions) -> None:
        self.data = data
        self.count = np.zeros(data.n_items, dtype=np.float64)

    def scores(self, user: int, now_ms: int) -> np.ndarray:
        return self.count

    def learn(self, j: int) -> None:
        self.count[self.data.item[j]] += 1.0


class ItemKNNModel:
    """Item-item co-occurrence kNN learned online: C[a, b] counts users who interacted with
    both a and b so far; score(c) = sum over the user's history h of C[h, c] / sqrt(n_h n_c)
    (cosine of the items' user sets)."""

    name = "item-knn"

    def __init__(self, data: Interactions) -> None:
        self.data = data
        n = data.n_items
        self.co = np.zeros((n, n), dtype=np.float32)
        self.count = np.zeros(n, dtype=np.float32)
        self.history: dict[int, list[int]] = {}

    def scores(self, user: int, now_ms: int) -> np.ndarray:
        hist = self.history.get(user)
        if not hist:
            return self.count.astype(np.float64) * 1e-9  # cold user: popularity
        inv = 1.0 / np.sqrt(np.maximum(self.count.astype(np.float64), 1.0))
        return _rows_summed(self.co, np.asarray(hist, np.int64), inv) * inv + self.count * 1e-9

    def learn(self, j: int) -> None:
        u, i = int(self.data.user[j]), int(self.data.item[j])
        hist = self.history.setdefault(u, [])
        if i in hist:
            return
        if hist:
            self.co[hist, i] += 1.0
            self.co[i, hist] += 1.0
        hist.append(i)
        self.count[i] += 1.0


@njit(cache=True)
def _rows_summed(co, rows, w):  # pragma: no cover
    """sum over r in ``rows`` of co[r] * w[r], float64: the rows read in place (a fancy index
    would copy them first), every column summed in the same order."""
    out = np.zeros(co.shape[1])
    for r in rows:
        wr = w[r]
        for c in range(co.shape[1]):
            out[c] += co[r, c] * wr
    return out


class RandomModel:
    """Uniform random scores: HR@k should come out near k / (number of candidates)."""

    name = "random"

    def __init__(self, data: Interactions, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.n = data.n_items

    def scores(self, user: int, now_ms: int) -> np.ndarray:
        return self.rng.random(self.n)

    def learn(self, j: int) -> None:
        pass


# RecBole's default reg_weight for EASE (recbole/properties/model/EASE.yaml), not tuned here.
EASE_REG = 250.0


def ease_weights(
    history: dict[int, list[int]], n_items: int, reg: float = EASE_REG, chunk: int = 1024
) -> np.ndarray:
    """EASE's item-item weights (Steck 2019, closed form) for the binary user-item matrix X of
    ``history`` (user -> items): G = X'X + reg I, P = G^-1, B = -P / diag(P) (column j
    divided by P_jj), diag(B) = 0. float32[n_items, n_items].

    float32 throughout, for half the memory of float64 (330 MB a matrix at 9,066 items,
    about three of them at once while inverting): G holds integer counts (exact below 2^24)
    and reg keeps it well conditioned; on the split protocol's training parts of ml-100k and
    ml-latest-small, B is within 1.2e-8 of the float64 one and every user's top-10 list is
    the same. X is built ``chunk`` users at a time; the inverse is O(n_items^3) (about a
    minute at 9,066 items on one core)."""
    g = np.zeros((n_items, n_items), dtype=np.float32)
    users = list(history.values())
    for start in range(0, len(users), chunk):
        x = np.zeros((len(users[start : start + chunk]), n_items), dtype=np.float32)
        for r, items in enumerate(users[start : start + chunk]):
            x[r, items] = 1.0
        g += x.T @ x
    g[np.diag_indices(n_items)] += reg
    p = np.linalg.inv(g)
    del g
    p /= -np.diag(p)  # in place: B = -P / diag(P), column-wise
    np.fill_diagonal(p, 0.0)
    return p


class EASEModel:
    """EASE (Steck 2019): a linear item-item model fit in closed form on every interaction
    learned so far; score = x_u B, x_u the user's binary row. Batch, not online: ``learn``
    only collects the interactions and the first ``scores`` fits (again after more learning),
    so it belongs to the split protocol, which learns the whole training part first."""

    name = "ease"

    def __init__(self, data: Interactions, reg: float = EASE_REG) -> None:
        self.data, self.reg = data, reg
        self.history: dict[int, list[int]] = {}
        self.weights: np.ndarray | None = None
        self.fit_s = 0.0

    def learn(self, j: int) -> None:
        u, i = int(self.data.user[j]), int(self.data.item[j])
        hist = self.history.setdefault(u, [])
        if i not in hist:
            hist.append(i)
            self.weights = None

    def scores(self, user: int, now_ms: int) -> np.ndarray:
        if self.weights is None:
            t0 = time.perf_counter()
            self.weights = ease_weights(self.history, self.data.n_items, self.reg)
            self.fit_s += time.perf_counter() - t0
        hist = self.history.get(user, [])
        return self.weights[hist].sum(axis=0, dtype=np.float64)

    def report(self) -> dict[str, float]:
        return {"fit_s": round(self.fit_s, 2), "reg": self.reg}
