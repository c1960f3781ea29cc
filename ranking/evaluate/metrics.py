"""Top-k metrics with ties counted against the model.

A target's rank is the number of candidates scored at least as high as it (other than itself):
a model that gives many items the same score as the target gets no credit for the tie. An
item the model excludes itself (score -inf) can never be a hit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

METRICS = ("HR", "NDCG", "Recall", "Precision", "MRR")


def target_ranks(scores: np.ndarray, candidates: np.ndarray, targets: Sequence[int]) -> list[int]:
    """0-based pessimistic ranks of ``targets`` among ``candidates`` (a bool mask over items).

    One target: the count of other candidates scoring >= it. Several (the split protocol):
    candidates in score order, non-targets before targets at equal scores; each target's rank
    is its position in that order."""
    if len(targets) == 1:
        t = targets[0]
        st = scores[t]
        if not np.isfinite(st) and st < 0:
            return [int(candidates.sum())]
        return [int(np.count_nonzero((scores >= st) & candidates)) - 1]
    idx = np.flatnonzero(candidates)
    s = scores[idx]
    is_t = np.isin(idx, np.asarray(targets))
    order = np.lexsort((is_t, -s))  # last key first: by score desc, then non-targets first
    pos = np.empty(len(idx), dtype=np.int64)
    pos[order] = np.arange(len(idx))
    out = []
    for p, t, sc in zip(pos[is_t], idx[is_t], s[is_t], strict=True):
        out.append(int(len(idx)) if (np.isneginf(sc)) else int(p))
        del t
    return out


def list_ranks(
    listed: Sequence[int], scores: np.ndarray, candidates: np.ndarray, targets: Sequence[int]
) -> list[int]:
    """Ranks of ``targets`` when the model gives its own top-k list (e.g. diversified): a
    listed target's position in it; any other one can never be a hit (its ``target_ranks``
    rank, at least ``len(listed)``)."""
    at = {int(r): n for n, r in enumerate(listed)}
    ordered = sorted(targets) if len(targets) > 1 else list(targets)  # target_ranks' order
    base = dict(zip(ordered, target_ranks(scores, candidates, ordered), strict=True))
    return [at[t] if t in at else max(len(listed), base[t]) for t in targets]


def query_metrics(ranks: Sequence[int], k: int) -> dict[str, float]:
    """Metrics of one query with ``len(ranks)`` relevant items (RecBole's definitions)."""
    if len(ranks) == 1:  # the prequential protocol's every query: one target
        r = ranks[0]
        if r >= k:
            return dict.fromkeys(METRICS, 0.0)
        return {"HR": 1.0, "NDCG": 1.0 / math.log2(r + 2), "Recall": 1.0,
                "Precision": 1.0 / k, "MRR": 1.0 / (r + 1)}  # fmt: skip
    hits = sorted(r for r in ranks if r < k)
    n_rel = len(ranks)
    dcg = sum(1.0 / math.log2(r + 2) for r in hits)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(n_rel, k)))
    return {
        "HR": 1.0 if hits else 0.0,
        "NDCG": dcg / idcg if idcg else 0.0,
        "Recall": len(hits) / n_rel if n_rel else 0.0,
        "Precision": len(hits) / k,
        "MRR": 1.0 / (hits[0] + 1) if hits else 0.0,
    }


@dataclass
class Accumulator:
    """Means of the per-query metrics, per segment ("all", "first", "cold"), plus catalog
    coverage: the share of the catalog that appeared in at least one top-k list."""

    k: int
    n_items: int
    # unit item vectors (e.g. the item texts'): when given, each list's intra-list diversity
    # (ILD@k: the mean of 1 - cosine over its pairs of items) is averaged as well
    vectors: np.ndarray | None = None
    sums: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    shown: set[int] = field(default_factory=set)
    ild_sum: float = 0.0  # ILD@k summed over the lists measured
    ild_lists: int = 0

    def add(self, ranks: Sequence[int], segments: Iterable[str], topk: Iterable[int]) -> None:
        m = query_metrics(ranks, self.k)
        for seg in ("all", *segments):
            acc = self.sums.get(seg)
            if acc is None:
                acc = self.sums[seg] = dict.fromkeys(METRICS, 0.0)
                self.counts[seg] = 0
            for name, v in m.items():
                acc[name] += v
            self.counts[seg] += 1
        listed = np.fromiter(topk, np.intp)
        self.shown.update(listed.tolist())
        n = len(listed)
        if self.vectors is not None and n > 1:
            vecs = self.vectors[listed]
            # the cosines of the list's pairs, summed: |sum of the vectors|^2 less their own
            # squared norms (the Gram matrix's off-diagonal, without forming it)
            total = vecs.sum(axis=0)
            pairs = float(total @ total) - float(np.einsum("ij,ij->", vecs, vecs))
            self.ild_sum += 1.0 - pairs / (n * (n - 1))
            self.ild_lists += 1

    def result(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {}
        for seg, acc in self.sums.items():
            prefix = "" if seg == "all" else f"{seg}_"
            n = self.counts[seg]
            for name, v in acc.items():
                out[f"{prefix}{name}@{self.k}"] = v / n
            out[f"{prefix}n"] = n
        out[f"Coverage@{self.k}"] = len(self.shown) / self.n_items if self.n_items else 0.0
        if self.ild_lists:
            out[f"ILD@{self.k}"] = self.ild_sum / self.ild_lists
        return out


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best candidates (ties in any order: used for coverage only)."""
    idx = np.flatnonzero(candidates)
    if len(idx) <= k:
        return idx
    s = scores[idx]
    part = np.argpartition(-s, k - 1)[:k]
    return idx[part]
