"""The scorer learns online, from what users did with earlier recommendations.

When a user takes an item, its features (scaled as the list the user was last shown) are
compared with those of catalog items the user could be shown, drawn uniformly and in
proportion to their interactions (mixed negative sampling, ranking/step.py), in one pairwise
logistic (BPR) step. Its gradient moves two sets of weights:

- **shared weights**, learned from every such event of the population: how much content,
  co-occurrence, popularity at three paces, recency and freshness matter on this catalog. They
  start where RankingSettings.score_weights says (each feature is scaled to about [0, 1]
  within a list) and an L2 pull toward zero lets a feature that does not help fade. The stream keeps
  one vector per event partition (streams/handlers.py: a partition's users are a uniform
  sample of all users, so every partition learns the same weights without coordination);
- **the user's deltas** on top of them, kept in the user's state (personalisation), rounded
  to 1e-5 so a replay is bit-identical and the state stays small.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from recstream.ranking import kernels

SHARED_VERSION = 1


def bpr_gradient(weights: np.ndarray, taken: np.ndarray, passed_over: np.ndarray) -> np.ndarray:
    """The mean BPR gradient (float64[F]) of ranking ``taken`` (float[F], the features of
    the item taken) above each of ``passed_over`` (float[m, F], items ranked above it that were
    not taken) under ``weights``: big where the list had them the wrong way round. With diff =
    taken - passed over and x = diff . weights, the mean of sigmoid(-x) * diff (compiled:
    kernels.bpr_gradient)."""
    return kernels.bpr_gradient(
        np.asarray(weights), np.asarray(taken), np.atleast_2d(np.asarray(passed_over))
    )


def user_step(deltas: np.ndarray, grad: np.ndarray, lr: float, l2: float) -> np.ndarray:
    """The user's new deltas (float32[F], rounded to 1e-5) after one step along ``grad``."""
    d = np.asarray(deltas, np.float64)
    d = d + lr * (grad - l2 * d)
    return np.round(d, 5).astype(np.float32)


@dataclass
class SharedWeights:
    """The population's ranking weights. ``upto``: the highest input offset learned from
    (-1: none); the stream skips the gradient of an event at or below it (a replay after a
    crash: the event was learned from already)."""

    w: np.ndarray  # float64[F]
    n: int = 0  # steps taken
    upto: int = -1

    @classmethod
    def start(cls, prior: Sequence[float]) -> SharedWeights:
        return cls(np.asarray(prior, np.float64).copy())

    def learn(self, grads: Iterable[np.ndarray], lr: float, l2: float) -> None:
        """One step along the sum of a round's gradients (each from the same weights, so the
        order of a round's events does not matter)."""
        total = np.zeros_like(self.w)
        n = 0
        for g in grads:
            total += g
            n += 1
        if n:
            self.w = self.w + lr * (total - n * l2 * self.w)
            self.n += n

    def to_bytes(self) -> bytes:
        """``<B version> <q n> <q upto> <I F>`` + f64[F]."""
        head = struct.pack("<BqqI", SHARED_VERSION, self.n, self.upto, len(self.w))
        return head + self.w.astype("<f8").tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes, prior: Sequence[float]) -> SharedWeights:
        """A stored vector; one of another length than ``prior`` (written before a feature was
        added or removed) starts over from it."""
        if not raw or raw[0] != SHARED_VERSION:
            raise ValueError(f"unsupported shared weights version {raw[0] if raw else None!r}")
        _, n, upto, f = struct.unpack_from("<BqqI", raw, 0)
        if f != len(prior):
            return cls(np.asarray(prior, np.float64).copy(), 0, upto)
        w = np.frombuffer(raw, "<f8", f, struct.calcsize("<BqqI")).astype(np.float64)
        return cls(w, n, upto)
