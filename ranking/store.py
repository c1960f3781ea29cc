"""The item catalog in Qdrant: one point per item, one named vector per modality.

Production uses a Qdrant server (``RECSTREAM_QDRANT_URL``); with no URL the same code runs on
qdrant-client's embedded local mode. Both go through ``AsyncQdrantClient``, so the worker's
event loop never blocks on a network call.

Payload per point: ``item_id``, ``title``, ``tags``, ``published_at`` (epoch ms), ``kind``,
and ``trend``: the item's time-decayed popularity kept comparable across items without ever
rewriting idle items. A counter ``pop`` decaying with half-life H is stored in log space as
``trend = ln(pop) + t * ln2 / H`` (t = time of its last update); ordering by ``trend`` is
ordering by the current decayed popularity, and ``pop_now = exp(trend - now * ln2 / H)``.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qdrant_client import AsyncQdrantClient, models

_ID_NAMESPACE = uuid.UUID("6f1c7f0e-6a2b-4f7e-9d0e-3b9a3c5d7e11")
NO_TREND = -1.0e18  # an item nobody interacted with yet sorts last


def point_id(item_id: str) -> str:
    """Qdrant point ids are UUIDs or integers; item ids are free strings."""
    return str(uuid.uuid5(_ID_NAMESPACE, item_id))


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

    @classmethod
    def from_point(cls, point: Any) -> StoredItem:
        p = point.payload or {}
        vec = point.vector if isinstance(point.vector, dict) else {}
        return cls(
            item_id=p["item_id"],
            title=p.get("title"),
            tags=tuple(p.get("tags") or ()),
            published_at=p.get("published_at"),
            trend=float(p.get("trend", NO_TREND)),
            vectors={m: np.asarray(v, dtype=np.float32) for m, v in vec.items()},
            score=getattr(point, "score", None),
        )


def trend_after(trend: float, weight: float, ts: int, half_life_ms: float) -> float:
    """Add ``weight`` at time ``ts`` to a log-space decayed counter (see module doc)."""
    k = math.log(2) / half_life_ms
    scaled = ts * k
    if trend <= NO_TREND / 2:
        return math.log(weight) + scaled
    # ln(exp(trend) + weight * exp(scaled)), computed stably
    hi, lo = max(trend, math.log(weight) + scaled), min(trend, math.log(weight) + scaled)
    return hi + math.log1p(math.exp(lo - hi))


def popularity_now(trend: float, now_ms: int, half_life_ms: float) -> float:
    if trend <= NO_TREND / 2:
        return 0.0
    return math.exp(min(trend - now_ms * math.log(2) / half_life_ms, 700.0))


def _exclude_filter(exclude: Iterable[str]) -> models.Filter | None:
    ids = [point_id(i) for i in exclude]
    if not ids:
        return None
    return models.Filter(must_not=[models.HasIdCondition(has_id=ids)])


class ItemStore:
    """Async access to the item collection. ``dims`` maps modality -> vector size."""

    def __init__(self, client: AsyncQdrantClient, collection: str, dims: Mapping[str, int]):
        self.client = client
        self.collection = collection
        self.dims = dict(dims)

    @classmethod
    def connect(
        cls,
        *,
        url: str | None,
        api_key: str | None,
        location: str,
        collection: str,
        dims: Mapping[str, int],
        timeout_s: float = 10.0,
    ) -> ItemStore:
        if url:
            client = AsyncQdrantClient(url=url, api_key=api_key, timeout=int(timeout_s))
        elif location == ":memory:":
            client = AsyncQdrantClient(location=":memory:")
        else:
            client = AsyncQdrantClient(path=location)
        return cls(client, collection, dims)

    async def ensure_collection(self) -> None:
        if await self.client.collection_exists(self.collection):
            info = await self.client.get_collection(self.collection)
            have = info.config.params.vectors
            missing = [m for m in self.dims if not isinstance(have, dict) or m not in have]
            if missing:
                raise RuntimeError(
                    f"Qdrant collection {self.collection!r} has no vector(s) {missing}; "
                    "use a new collection name (RECSTREAM_QDRANT_COLLECTION) or recreate it"
                )
            return
        await self.client.create_collection(
            self.collection,
            vectors_config={
                m: models.VectorParams(size=d, distance=models.Distance.COSINE)
                for m, d in self.dims.items()
            },
        )
        # A Qdrant server needs these indexes to order by them (scroll order_by).
        for key, schema in (
            ("trend", models.PayloadSchemaType.FLOAT),
            ("published_at", models.PayloadSchemaType.INTEGER),
        ):
            await self.client.create_payload_index(self.collection, key, schema)

    async def upsert(self, records: Sequence[ItemRecord]) -> None:
        """Insert or replace items, keeping the popularity an item already earned."""
        if not records:
            return
        existing = await self.get([r.item_id for r in records], with_vectors=False)
        points = []
        for r in records:
            old = existing.get(r.item_id)
            points.append(
                models.PointStruct(
                    id=point_id(r.item_id),
                    vector={
                        m: np.asarray(v, dtype=np.float32).tolist() for m, v in r.vectors.items()
                    },
                    payload={
                        "item_id": r.item_id,
                        "title": r.title,
                        "tags": list(r.tags),
                        "published_at": r.published_at,
                        "kind": r.kind,
                        "trend": old.trend if old else NO_TREND,
                    },
                )
            )
        await self.client.upsert(self.collection, points=points, wait=True)

    async def delete(self, item_ids: Sequence[str]) -> None:
        if item_ids:
            await self.client.delete(
                self.collection,
                points_selector=models.PointIdsList(points=[point_id(i) for i in item_ids]),
                wait=True,
            )

    async def get(
        self, item_ids: Sequence[str], *, with_vectors: bool = True
    ) -> dict[str, StoredItem]:
        if not item_ids:
            return {}
        points = await self.client.retrieve(
            self.collection,
            ids=[point_id(i) for i in dict.fromkeys(item_ids)],
            with_payload=True,
            with_vectors=with_vectors,
        )
        items = (StoredItem.from_point(p) for p in points)
        return {it.item_id: it for it in items}

    async def candidates(
        self, units: Mapping[str, np.ndarray], *, exclude: Iterable[str], limit: int
    ) -> list[StoredItem]:
        """One round trip: items nearest each interest vector, the trending and the newest
        items, all minus ``exclude`` (done by Qdrant, so a deleted item can never come back)."""
        flt = _exclude_filter(exclude)
        requests = [
            models.QueryRequest(
                query=np.asarray(vec, dtype=np.float32).tolist(),
                using=m,
                filter=flt,
                limit=limit,
                with_payload=True,
                with_vector=True,
            )
            for m, vec in units.items()
            if m in self.dims
        ]
        for key in ("trend", "published_at"):
            requests.append(
                models.QueryRequest(
                    query=models.OrderByQuery(
                        order_by=models.OrderBy(key=key, direction=models.Direction.DESC)
                    ),
                    filter=flt,
                    limit=limit,
                    with_payload=True,
                    with_vector=True,
                )
            )
        responses = await self.client.query_batch_points(self.collection, requests=requests)
        n_vec = len(requests) - 2
        out = []
        for i, resp in enumerate(responses):
            for p in resp.points:
                item = StoredItem.from_point(p)
                # Order-by queries put the ordered value in ``score``: not a similarity.
                out.append(item if i < n_vec else dataclasses.replace(item, score=None))
        return out

    async def set_trends(self, trends: Mapping[str, float]) -> None:
        """Write new trend values; items deleted meanwhile are skipped (filter, not ids)."""
        ops = [
            models.SetPayloadOperation(
                set_payload=models.SetPayload(
                    payload={"trend": t},
                    filter=models.Filter(must=[models.HasIdCondition(has_id=[point_id(i)])]),
                )
            )
            for i, t in trends.items()
        ]
        if ops:
            await self.client.batch_update_points(self.collection, update_operations=ops, wait=True)

    async def count(self) -> int:
        return (await self.client.count(self.collection, exact=True)).count

    async def close(self) -> None:
        await self.client.close()
