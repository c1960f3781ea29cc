"""Wire forms of the worker's internal topics (apps need not read them, but they are stable).

``<app_id>-items`` (compacted, key: the item id): one record per encoded item, written by the
encoding stage and read whole by every ranking worker (streams/catalog_reader.py); a tombstone
(null value) deletes the item. Value: ``b"RSI" <B version 1> <I header length>``, a JSON header
``{"item_id", "title", "tags", "published_at", "kind", "vectors": [[name, dim], ...],
"neighbours": [[item_id, cosine], ...]}`` and the vectors as float32 little-endian, in the
header's order.

``<app_id>-item-activity`` (key: the 8-byte little-endian hash of the item whose side changes,
partitioned like it): ``{"v": 2, "u": [[item hash, w, ts, [[neighbour hash, weight], ...]],
...]}``, the item-side updates of one batch for the items of one partition, in order
(ranking/item_side.py). Records of version 1 (``{"updates": [{"item_id", "w", "ts", "pairs":
[[neighbour id, weight, count?], ...]}]}`` or one bare update) are still read.

``<app_id>-item-stats-changelog`` (compacted, key: the item hash as above): the item-stats
Table's changelog, each value an ``ItemRow`` (ranking/item_side.py: ``to_bytes``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiokafka.partitioner import murmur2

from recstream.ranking.item_side import Update
from recstream.ranking.user_state import item_hash
from recstream.streams.schemas import MAX_ID_CHARS

ITEM_MAGIC = b"RSI"
ITEM_VERSION = 1
_HEAD = struct.Struct("<3sBI")


@dataclass
class ItemMessage:
    item_id: str
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    title: str | None = None
    tags: tuple[str, ...] = ()
    published_at: int | None = None
    kind: str | None = None
    neighbours: list[tuple[str, float]] = field(default_factory=list)  # content, best first

    def to_bytes(self) -> bytes:
        names = sorted(self.vectors)
        head = orjson.dumps(
            {
                "item_id": self.item_id,
                "title": self.title,
                "tags": list(self.tags),
                "published_at": self.published_at,
                "kind": self.kind,
                "vectors": [[m, int(len(self.vectors[m]))] for m in names],
                "neighbours": [[i, round(float(s), 6)] for i, s in self.neighbours],
            }
        )
        body = b"".join(np.asarray(self.vectors[m], "<f4").tobytes() for m in names)
        return _HEAD.pack(ITEM_MAGIC, ITEM_VERSION, len(head)) + head + body

    @classmethod
    def from_bytes(cls, raw: bytes) -> ItemMessage:
        """Raises ValueError for anything that is not an item record of a known version."""
        if len(raw) < _HEAD.size:
            raise ValueError("item record too short")
        magic, version, n = _HEAD.unpack_from(raw)
        if magic != ITEM_MAGIC or version != ITEM_VERSION:
            raise ValueError(f"not an item record of version {ITEM_VERSION}")
        head = orjson.loads(raw[_HEAD.size : _HEAD.size + n])
        at = _HEAD.size + n
        vectors = {}
        for name, dim in head["vectors"]:
            vectors[str(name)] = np.frombuffer(raw, "<f4", int(dim), at).astype(np.float32)
            at += 4 * int(dim)
        if at != len(raw):
            raise ValueError("item record length does not match its header")
        return cls(
            item_id=str(head["item_id"]),
            vectors=vectors,
            title=head.get("title"),
            tags=tuple(head.get("tags") or ()),
            published_at=head.get("published_at"),
            kind=head.get("kind"),
            neighbours=[(str(i), float(s)) for i, s in head.get("neighbours") or ()],
        )


def hash_key(h: int) -> bytes:
    """An item's key on the item-side topics: its 64-bit hash, little-endian."""
    return int(h).to_bytes(8, "little")


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2; Java, aiokafka, Faust) gives a
    keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def activity_to_bytes(updates: Sequence[Update]) -> bytes:
    return orjson.dumps(
        {"v": 2, "u": [[u.item, u.w, u.ts, [[nb, w] for nb, w in u.pairs]] for u in updates]}
    )


def activity_from_bytes(raw: bytes | None) -> list[Update]:
    """Raises ValueError (or KeyError, TypeError, IndexError) on a malformed record."""
    a = orjson.loads(raw or b"")
    if not isinstance(a, Mapping):
        raise ValueError("an item-activity record is a JSON object")
    if a.get("v") == 2:
        return [
            Update(_u64(i), _finite(w), int(ts), tuple((_u64(nb), _finite(x)) for nb, x in pairs))
            for i, w, ts, pairs in a["u"]
        ]
    return [_v1(u) for u in (a["updates"] if "updates" in a else [a])]


def _u64(v: Any) -> int:
    if not isinstance(v, int) or not 0 <= v < 1 << 64:
        raise ValueError("item hashes are unsigned 64-bit integers")
    return v


def _v1(u: Any) -> Update:
    if not isinstance(u, Mapping):
        raise ValueError("an item-activity update is a JSON object")

    def ident(v: Any) -> int:
        if not isinstance(v, str) or not 0 < len(v) <= MAX_ID_CHARS:
            raise ValueError(f"item id must be a string of 1..{MAX_ID_CHARS} characters")
        return item_hash(v)

    pairs = tuple((ident(p[0]), _finite(p[1])) for p in u.get("pairs") or ())
    return Update(ident(u["item_id"]), _finite(u["w"]), int(u["ts"]), pairs)


def _finite(v: Any) -> float:
    x = float(v)
    if not math.isfinite(x):
        raise ValueError("weights are finite numbers")
    return x
