"""The item catalog: one point per item, one named vector per modality, behind one interface.

``ItemStore`` is the interface the stream and the offline code use. Two implementations:
  QdrantStore  a Qdrant server through qdrant-client (production; also qdrant-client's
               embedded local mode, which brute-forces in numpy: fine for tests only);
  EdgeStore    ranking/store/edge.py: the Qdrant engine in-process (qdrant-edge-py: HNSW,
               payload indexes, WAL), the default embedded backend.
``recstream.ranking.store.connect`` picks one (``RECSTREAM_QDRANT_BACKEND``);
tests/unit/test_store_congruence runs the same operations on each and compares the results.

Named vectors: ``text`` (384), ``image`` (1280), ``audio`` (512), cosine; an item may lack any.
More may be configured (e.g. a collaborative ``cf`` vector): a vector that is not one of the
CONTENT_VECTORS is derived data, written with ``update_vectors`` and kept when the item's
content is published again. Likewise payload fields written with ``set_payload``.

Payload per point: ``item_id``, ``title``, ``tags``, ``published_at`` (epoch ms), ``kind``,
and ``trend``: the item's time-decayed popularity kept comparable across items without ever
rewriting idle items. A counter ``pop`` decaying with half-life H is stored in log space as
``trend = ln(pop) + t * ln2 / H`` (t = time of its last update); ordering by ``trend`` is
ordering by the current decayed popularity, and ``pop_now = exp(trend - now * ln2 / H)``
(ranking/item_side.py: ``trend_after``, ``popularity_now``).
"""

from __future__ import annotations

import abc
import functools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from recstream.ranking.item_side import NO_TREND

_ID_NAMESPACE = uuid.UUID("6f1c7f0e-6a2b-4f7e-9d0e-3b9a3c5d7e11")
MODALITY_DIMS = {"text": 384, "image": 1280, "audio": 512}
CONTENT_VECTORS = frozenset(MODALITY_DIMS)
CONTENT_FIELDS = ("item_id", "title", "tags", "published_at", "kind")
ORDER_KEYS = ("trend", "published_at")  # candidates(): trending, then fresh
# What ranking reads of a candidate: the whole payload but the ``cf_top`` list (100 [id,
# weight] pairs, the bulk of a payload, read only for the user's seeds). Converting it for
# every candidate of every request was most of the engine results' conversion cost.
CANDIDATE_FIELDS = (*CONTENT_FIELDS, "trend", "cf_count", "cf_pos", "cf_w")
Backend = Literal["auto", "edge", "client"]


def point_id(item_id: str) -> str:
    """Qdrant point ids are UUIDs or integers; item ids are free strings."""
    return str(point_uuid(item_id))


@functools.lru_cache(maxsize=65_536)
def point_uuid(item_id: str) -> uuid.UUID:
    """``point_id`` as the UUID object the engine returns (hashing one is cheaper than
    formatting it; the same seeds and exclusions come back event after event)."""
    return uuid.uuid5(_ID_NAMESPACE, item_id)


@dataclass(frozen=True)
class ItemRecord:
    """What the content agent stores for one item."""

    item_id: str
    vectors: Mapping[str, np.ndarray]
    title: str | None = None
    tags: Sequence[str] = ()
    published_at: int | None = None
    kind: str | None = None


@dataclass(frozen=True)
class StoredItem:
    item_id: str
    title: str | None
    tags: tuple[str, ...]
    published_at: int | None
    trend: float
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    score: float | None = None  # similarity, when it came from a vector query
    payload: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_parts(
        cls, payload: Mapping[str, Any] | None, vectors: Any, score: float | None = None
    ) -> StoredItem:
        p = payload or {}
        vec = vectors if isinstance(vectors, dict) else {}
        return cls(
            item_id=p["item_id"],
            title=p.get("title"),
            tags=tuple(p.get("tags") or ()),
            published_at=p.get("published_at"),
            trend=float(p.get("trend", NO_TREND)),
            vectors={m: np.asarray(v, dtype=np.float32) for m, v in vec.items()},
            score=score,
            payload=p,
        )

    def scored(self, score: float | None) -> StoredItem:
        """This item with a similarity score (a cached view reused for one query's answer)."""
        return self._with(score=score)

    def with_vectors(self, vectors: dict[str, np.ndarray]) -> StoredItem:
        return self._with(vectors=vectors)

    def _with(self, **changes: Any) -> StoredItem:
        """A copy with ``changes``: dataclasses.replace re-runs __init__ (~3x the cost), and
        cached views are copied for every candidate of every event."""
        new = object.__new__(StoredItem)
        new.__dict__.update(self.__dict__, **changes)
        return new

    @classmethod
    def from_point(cls, point: Any) -> StoredItem:
        return cls.from_parts(point.payload, point.vector, getattr(point, "score", None))


def content_payload(r: ItemRecord, old: StoredItem | None) -> dict[str, Any]:
    """The payload an upsert writes: the record's content, the earned trend, and whatever
    ``set_payload`` added before (fields that are not content)."""
    extra = {k: v for k, v in (old.payload if old else {}).items() if k not in CONTENT_FIELDS}
    return {
        **extra,
        "item_id": r.item_id,
        "title": r.title,
        "tags": list(r.tags),
        "published_at": r.published_at,
        "kind": r.kind,
        "trend": old.trend if old else NO_TREND,
    }


def unit_list(v: np.ndarray) -> list[float]:
    """A vector as stored: L2-normalised (cosine). Qdrant normalises too, but qdrant-client's
    local mode returns the raw vectors after a restart: normalising here keeps backends alike."""
    a = np.asarray(v, dtype=np.float32)
    n = float(np.linalg.norm(a))
    return (a / n if n > 1e-12 else a).tolist()


def content_vectors(
    r: ItemRecord, old: StoredItem | None, dims: Mapping[str, int]
) -> dict[str, list[float]]:
    """The vectors an upsert writes: the record's (known names only) plus the derived vectors
    (not CONTENT_VECTORS) the item already had."""
    out = {m: unit_list(v) for m, v in r.vectors.items() if m in dims}
    if old is not None:
        for m, v in old.vectors.items():
            if m not in CONTENT_VECTORS and m not in out:
                out[m] = v.tolist()
    return out


@dataclass(frozen=True)
class CandidateQuery:
    """One user's ``ItemStore.candidates`` question (see there), for ``candidates_many``."""

    units: Mapping[str, np.ndarray]
    exclude: Iterable[str]
    limit: int


class ItemStore(abc.ABC):
    """Async access to the item catalog. ``dims`` maps vector name -> size (cosine)."""

    dims: dict[str, int]
    # True where calls wait on a network (a server): callers then overlap independent reads.
    # The embedded engine answers synchronously, and a task per read only costs.
    concurrent_reads: bool = True

    @property
    def derived_vectors(self) -> list[str]:
        return [m for m in self.dims if m not in CONTENT_VECTORS]

    @abc.abstractmethod
    async def ensure_collection(self) -> None:
        """Create the collection / shard if missing (idempotent)."""

    @abc.abstractmethod
    async def upsert(self, records: Sequence[ItemRecord]) -> None:
        """Insert or replace items' content (vectors and payload); keeps the popularity the
        item earned, its derived vectors and ``set_payload`` fields. Searchable on return."""

    @abc.abstractmethod
    async def delete(self, item_ids: Sequence[str]) -> None: ...

    @abc.abstractmethod
    async def get(
        self,
        item_ids: Sequence[str],
        *,
        with_vectors: bool = True,
        fields: Sequence[str] | None = None,
    ) -> dict[str, StoredItem]:
        """Stored items by id (unknown and deleted ids are absent), payload and vectors.
        ``fields``: only these payload keys (e.g. CANDIDATE_FIELDS); None: the whole payload."""

    @abc.abstractmethod
    async def candidates(
        self, units: Mapping[str, np.ndarray], *, exclude: Iterable[str], limit: int
    ) -> list[StoredItem]:
        """One batch: up to ``limit`` items nearest each vector in ``units`` (vector name ->
        query; unknown names ignored), then the ``limit`` most trending, then the ``limit``
        newest items, all minus ``exclude`` (applied by the engine, so a deleted or excluded
        item never comes back). Items come with payload and vectors; ``score`` is the
        similarity for vector results and None for the trending and fresh ones."""

    async def candidates_many(self, queries: Sequence[CandidateQuery]) -> list[list[StoredItem]]:
        """``candidates`` for several users at once (the events of one stream batch), answers
        in the same order. Backends override it to ask the engine once (one query batch, one
        server round trip) instead of once per user; the answers are the same."""
        return [await self.candidates(q.units, exclude=q.exclude, limit=q.limit) for q in queries]

    @abc.abstractmethod
    async def update_vectors(self, vectors: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Set some named vectors of existing items ({item_id: {name: vector}}), leaving the
        others; unknown or deleted items are skipped."""

    @abc.abstractmethod
    async def set_payload(self, payloads: Mapping[str, Mapping[str, Any]]) -> None:
        """Set payload fields of existing items ({item_id: {field: value}}); unknown or
        deleted items are skipped."""

    async def set_trends(self, trends: Mapping[str, float]) -> None:
        """Write new trend values; items deleted meanwhile are skipped."""
        await self.set_payload({i: {"trend": t} for i, t in trends.items()})

    @abc.abstractmethod
    async def count(self) -> int: ...

    @abc.abstractmethod
    async def close(self) -> None: ...
