"""Ranking: merge candidates from several sources and order them. Pure and synchronous.

score = similarity + popularity_weight * popularity + freshness_weight * freshness
  similarity  cosine between the user's interest (per modality, weighted) and the item
  popularity  the item's decayed popularity now, log-scaled to [0, 1] among the candidates
  freshness   0.5 ** (age / freshness_half_life), age from the item's published_at
The reason shown to the user names the term that contributed most.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ranking.store import StoredItem, popularity_now


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    score: float
    reason: str

    def to_wire(self) -> dict[str, object]:
        return {"item_id": self.item_id, "score": round(self.score, 6), "reason": self.reason}


@dataclass(frozen=True)
class RankParams:
    popularity_weight: float
    freshness_weight: float
    freshness_half_life_ms: float
    trending_half_life_ms: float
    modality_weights: Mapping[str, float]


def _unit(v: np.ndarray) -> np.ndarray | None:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else None


def interest_units(interest: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Normalised interest per modality; modalities with no net interest are dropped."""
    out = {}
    for m, v in interest.items():
        u = _unit(np.asarray(v, dtype=np.float32))
        if u is not None:
            out[m] = u
    return out


def similarity(
    item: StoredItem, units: Mapping[str, np.ndarray], weights: Mapping[str, float]
) -> float:
    """Weighted mean cosine over the modalities both the user and the item have."""
    num = den = 0.0
    for m, u in units.items():
        vec = item.vectors.get(m)
        if vec is None:
            continue
        w = weights.get(m, 1.0)
        n = float(np.linalg.norm(vec))
        if n > 1e-9:
            num += w * float(np.dot(u, vec)) / n
            den += w
    return num / den if den else 0.0


def _anchor_title(
    item: StoredItem, anchors: Sequence[StoredItem], weights: Mapping[str, float]
) -> str | None:
    """The liked item this candidate most resembles (for "because you liked ...")."""
    best, best_sim = None, -2.0
    for a in anchors:
        s = similarity(item, interest_units(a.vectors), weights)
        if s > best_sim:
            best, best_sim = a, s
    return (best.title or best.item_id) if best is not None else None


def rank(
    *,
    candidates: Sequence[StoredItem],
    interest: Mapping[str, np.ndarray],
    exclude: set[str],
    anchors: Sequence[StoredItem],
    k: int,
    now_ms: int,
    params: RankParams,
) -> list[RankedItem]:
    units = interest_units(interest)
    pool: dict[str, StoredItem] = {}
    for c in candidates:
        if c.item_id not in exclude and c.item_id not in pool:
            pool[c.item_id] = c
    if not pool:
        return []

    pops = {
        i: popularity_now(c.trend, now_ms, params.trending_half_life_ms) for i, c in pool.items()
    }
    max_log_pop = max((math.log1p(p) for p in pops.values()), default=0.0)
    scored = []
    for item_id, c in pool.items():
        sim = similarity(c, units, params.modality_weights) if units else 0.0
        pop = math.log1p(pops[item_id]) / max_log_pop if max_log_pop > 0 else 0.0
        fresh = 0.0
        if c.published_at is not None:
            age = max(0, now_ms - c.published_at)
            fresh = 0.5 ** (age / params.freshness_half_life_ms)
        parts = {
            "similar": sim,
            "trending": params.popularity_weight * pop,
            "fresh": params.freshness_weight * fresh,
        }
        scored.append((sum(parts.values()), item_id, c, parts))
    # Ties broken by item id so output is deterministic.
    scored.sort(key=lambda t: (-t[0], t[1]))

    out = []
    for score, item_id, c, parts in scored[:k]:
        out.append(RankedItem(item_id, score, _reason(c, parts, anchors, params)))
    return out


def _reason(
    item: StoredItem, parts: Mapping[str, float], anchors: Sequence[StoredItem], params: RankParams
) -> str:
    top = max(parts, key=lambda p: parts[p])
    if top == "similar" and parts["similar"] > 0:
        title = _anchor_title(item, anchors, params.modality_weights)
        return f"because you liked \u201c{title}\u201d" if title else "matches your interests"
    if top == "fresh" and parts["fresh"] > 0:
        return f"new in {item.tags[0]}" if item.tags else "new"
    if parts["trending"] > 0:
        return "trending now"
    return "new" if parts["fresh"] > 0 else "from the catalog"
