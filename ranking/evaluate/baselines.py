"""Baselines replayed by the same harness: online popularity, online item-kNN co-occurrence,
and a random ranker. Each keeps only what it learned from the interactions replayed so far."""

from __future__ import annotations

import numpy as np

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
        inv = 1.0 / np.sqrt(np.maximum(self.count, 1.0))
        s = self.co[hist].T @ inv[hist]
        return s.astype(np.float64) * inv + self.count * 1e-9

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
