"""The item store: one interface (base.ItemStore), two implementations, one selector.

``connect`` picks the implementation: a Qdrant server through qdrant-client (client.py), or
the Qdrant engine embedded in-process (edge.py; qdrant-client's local mode with
``backend="client"``, for tests). Neither implementation imports this selector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recstream.ranking.store.base import (
    CANDIDATE_FIELDS,
    CONTENT_FIELDS,
    CONTENT_VECTORS,
    MODALITY_DIMS,
    ORDER_KEYS,
    Backend,
    CandidateQuery,
    ItemRecord,
    ItemStore,
    StoredItem,
    content_payload,
    content_vectors,
    point_id,
    point_uuid,
    unit_list,
)

__all__ = [
    "CANDIDATE_FIELDS",
    "CONTENT_FIELDS",
    "CONTENT_VECTORS",
    "Backend",
    "CandidateQuery",
    "ItemRecord",
    "ItemStore",
    "MODALITY_DIMS",
    "ORDER_KEYS",
    "StoredItem",
    "content_payload",
    "content_vectors",
    "point_id",
    "point_uuid",
    "unit_list",
    "connect",
]


def connect(
    *,
    url: str | None,
    api_key: str | None,
    location: str,
    collection: str,
    dims: Mapping[str, int],
    timeout_s: float = 10.0,
    backend: Backend = "auto",
    **edge_options: Any,
) -> ItemStore:
    """``url`` set: a Qdrant server via qdrant-client. Else embedded at ``location`` (a
    folder or ":memory:"): the edge engine (``backend`` auto/edge) or qdrant-client's local
    mode (``backend="client"``). ``edge_options``: see EdgeStore (``on_disk_vectors`` applies
    to both backends)."""
    if url or backend == "client":
        from recstream.ranking.store.client import QdrantStore

        return QdrantStore.connect(
            url=url,
            api_key=api_key,
            location=location,
            collection=collection,
            dims=dims,
            timeout_s=timeout_s,
            on_disk_vectors=edge_options.get("on_disk_vectors", ()),
        )
    from recstream.ranking.store.edge import EdgeStore

    return EdgeStore.open(location, collection, dims, **edge_options)
