"""ItemStore on qdrant-client: a Qdrant server (production) or qdrant-client's local mode.

Everything goes through ``AsyncQdrantClient``, so the worker's event loop never blocks on a
network call. Local mode is a numpy brute force (89 ms per query at 100k x 512-d on the
2-core machine): for tests and tiny catalogs; the embedded default is ranking/store/edge.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
from qdrant_client import AsyncQdrantClient, models

from recstream.ranking.store.base import (
    CANDIDATE_FIELDS,
    ORDER_KEYS,
    CandidateQuery,
    ItemRecord,
    ItemStore,
    StoredItem,
    content_payload,
    content_vectors,
    point_id,
    unit_list,
)


def _exclude_filter(exclude: Iterable[str]) -> models.Filter | None:
    ids: list[models.ExtendedPointId] = [point_id(i) for i in exclude]
    if not ids:
        return None
    return models.Filter(must_not=[models.HasIdCondition(has_id=ids)])


class QdrantStore(ItemStore):
    def __init__(
        self,
        client: AsyncQdrantClient,
        collection: str,
        dims: Mapping[str, int],
        on_disk_vectors: Sequence[str] = (),
    ):
        self.client = client
        self.collection = collection
        self.dims = dict(dims)
        self.on_disk_vectors = tuple(on_disk_vectors)  # applied when the collection is created

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
        on_disk_vectors: Sequence[str] = (),
    ) -> QdrantStore:
        if url:
            client = AsyncQdrantClient(url=url, api_key=api_key, timeout=int(timeout_s))
        elif location == ":memory:":
            client = AsyncQdrantClient(location=":memory:")
        else:
            client = AsyncQdrantClient(path=location)
        return cls(client, collection, dims, on_disk_vectors)

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
                m: models.VectorParams(
                    size=d,
                    distance=models.Distance.COSINE,
                    on_disk=(m in self.on_disk_vectors) or None,
                )
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
        if not records:
            return
        keep = self.derived_vectors
        existing = await self._retrieve([r.item_id for r in records], keep or False)
        points = [
            models.PointStruct(
                id=point_id(r.item_id),
                # a dict of float lists is a VectorStruct (the model's Dict is invariant)
                vector=cast(
                    models.VectorStruct, content_vectors(r, existing.get(r.item_id), self.dims)
                ),
                payload=content_payload(r, existing.get(r.item_id)),
            )
            for r in records
        ]
        await self.client.upsert(self.collection, points=points, wait=True)

    async def delete(self, item_ids: Sequence[str]) -> None:
        if item_ids:
            await self.client.delete(
                self.collection,
                points_selector=models.PointIdsList(points=[point_id(i) for i in item_ids]),
                wait=True,
            )

    async def _retrieve(
        self, item_ids: Sequence[str], with_vectors: Any, fields: Sequence[str] | None = None
    ) -> dict[str, StoredItem]:
        if not item_ids:
            return {}
        points = await self.client.retrieve(
            self.collection,
            ids=[point_id(i) for i in dict.fromkeys(item_ids)],
            with_payload=list(fields) if fields else True,
            with_vectors=with_vectors,
        )
        items = (StoredItem.from_point(p) for p in points)
        return {it.item_id: it for it in items}

    async def get(
        self,
        item_ids: Sequence[str],
        *,
        with_vectors: bool = True,
        fields: Sequence[str] | None = None,
    ) -> dict[str, StoredItem]:
        return await self._retrieve(item_ids, with_vectors, fields)

    async def candidates(
        self, units: Mapping[str, np.ndarray], *, exclude: Iterable[str], limit: int
    ) -> list[StoredItem]:
        return (await self.candidates_many([CandidateQuery(units, exclude, limit)]))[0]

    async def candidates_many(self, queries: Sequence[CandidateQuery]) -> list[list[StoredItem]]:
        """Every user's vector, trending and fresh queries in one ``query_batch_points`` call:
        one round trip to the server for a whole stream batch."""
        requests: list[models.QueryRequest] = []
        spans: list[tuple[int, int, int]] = []  # (first request, first order-by, end)
        for q in queries:
            flt = _exclude_filter(q.exclude)
            start = len(requests)
            requests.extend(
                models.QueryRequest(
                    query=np.asarray(vec, dtype=np.float32).tolist(),
                    using=m,
                    filter=flt,
                    limit=q.limit,
                    with_payload=list(CANDIDATE_FIELDS),
                    with_vector=True,
                )
                for m, vec in q.units.items()
                if m in self.dims
            )
            n_vec = len(requests)
            requests.extend(
                models.QueryRequest(
                    query=models.OrderByQuery(
                        order_by=models.OrderBy(key=key, direction=models.Direction.DESC)
                    ),
                    filter=flt,
                    limit=q.limit,
                    with_payload=list(CANDIDATE_FIELDS),
                    with_vector=True,
                )
                for key in ORDER_KEYS
            )
            spans.append((start, n_vec, len(requests)))
        if not requests:
            return []
        responses = await self.client.query_batch_points(self.collection, requests=requests)
        out = []
        for start, n_vec, end in spans:
            got = []
            for i in range(start, end):
                for p in responses[i].points:
                    # Order-by queries put the ordered value in ``score``: not a similarity.
                    score = p.score if i < n_vec else None
                    got.append(StoredItem.from_parts(p.payload, p.vector, score))
            out.append(got)
        return out

    async def update_vectors(self, vectors: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        live = await self._retrieve(list(vectors), False)
        points = [
            models.PointVectors(
                id=point_id(i),
                vector={m: unit_list(v) for m, v in vectors[i].items() if m in self.dims},
            )
            for i in live
        ]
        if points:
            await self.client.update_vectors(self.collection, points=points, wait=True)

    async def set_payload(self, payloads: Mapping[str, Mapping[str, Any]]) -> None:
        # A filter, not an id list: an item deleted meanwhile is skipped, not re-created.
        ops = [
            models.SetPayloadOperation(
                set_payload=models.SetPayload(
                    payload=dict(p),
                    filter=models.Filter(must=[models.HasIdCondition(has_id=[point_id(i)])]),
                )
            )
            for i, p in payloads.items()
        ]
        if ops:
            await self.client.batch_update_points(self.collection, update_operations=ops, wait=True)

    async def count(self) -> int:
        return (await self.client.count(self.collection, exact=True)).count

    async def close(self) -> None:
        await self.client.close()
