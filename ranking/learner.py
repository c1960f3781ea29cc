"""The scorer learns online from what each user did with earlier recommendations.

When a user takes an item, that item's features are compared with those of the items that
ranked above it (what we would have shown instead) in a pairwise logistic (BPR) step on the
user's own weight deltas, kept in their state; the prior weights stay fixed. Per-user, so it
lives on the user's partition with the rest of their state. Rounded to 1e-5 so the state's
JSON stays short and a replay is bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bpr_step(
    deltas: Sequence[float],
    prior: Sequence[float],
    taken: np.ndarray,
    passed_over: np.ndarray,
    lr: float,
    l2: float,
) -> list[float]:
    """New deltas after one step. ``taken``: float[F] features of the item taken;
    ``passed_over``: float[m, F] features of items ranked above it that were not taken."""
    # Deltas of another length come from a state written before a feature was added: restart.
    same = len(deltas) == len(prior)
    d = np.asarray(deltas, dtype=np.float64) if same else np.zeros(len(prior))
    if lr <= 0 or len(passed_over) == 0:
        return [round(float(x), 5) for x in d]
    w = np.asarray(prior, dtype=np.float64) + d
    diff = np.asarray(taken, dtype=np.float64)[None, :] - np.asarray(passed_over, np.float64)
    x = diff @ w
    g = 1.0 / (1.0 + np.exp(np.clip(x, -30, 30)))  # sigmoid(-x): big when ranked wrongly
    d = d + lr * ((g[:, None] * diff).mean(axis=0) - l2 * d)
    return [round(float(v), 5) for v in d]
