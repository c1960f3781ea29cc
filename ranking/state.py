"""Per-user state and its online update. Pure, synchronous, replayable.

The state lives in a changelog-backed Faust Table keyed by user id (see streams/app.py); this
module knows nothing of Faust. It is bounded (a few KB whatever the user's history):

- ``interest``: the long-term interest per modality, an exponentially time-decayed, weighted
  sum of the vectors of the items the user interacted with, stored as int8 with one scale
  per vector (384 B for text); time is *event* time, so a replay gives identical state.
- ``recent``: the last ``recent_items`` (item id, event weight), newest last: the short-term
  interest and the seeds of collaborative retrieval ("people who watched X also watched").
- ``seen``: a Bloom filter of every item interacted with (ranking.seen); the exact ids of the
  recent ones and of the latest dislikes go to the vector store as an exclusion filter.
- ``weights``: the user's own corrections to the ranking weights, learned online from which
  recommended items they took (ranking.learner).

Idempotence: every applied event records its source offset per partition, and 8-byte hashes
of recent ``event_id`` values are remembered. A redelivered message (at-least-once after a
crash) or a producer duplicate changes nothing. That is what makes kill -9 safe.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from recstream.ranking import seen as bloom

STATE_VERSION = 2
POSITIVE_THRESHOLD = 0.0
SEEN_FILTER_BITS = 6144
MAX_TITLE = 48  # chars of a liked item's title kept for reasons
MAX_DISLIKED = 32


def quantize(v: np.ndarray) -> tuple[np.ndarray, float]:
    """int8 codes and a float32 scale; ``dequantize`` of them is what the state holds."""
    v = np.asarray(v, dtype=np.float32)
    top = float(np.max(np.abs(v))) if v.size else 0.0
    scale = np.float32(top / 127.0) if top > 0 else np.float32(0.0)
    if scale == 0:
        return np.zeros(v.shape, np.int8), 0.0
    q = np.clip(np.rint(v / scale), -127, 127).astype(np.int8)
    return q, float(scale)


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
    return q.astype(np.float32) * np.float32(scale)


def requantize(v: np.ndarray) -> np.ndarray:
    return dequantize(*quantize(v))


def event_hash(event_id: str) -> str:
    return hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()


@dataclass
class UserState:
    interest: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> float32[d]
    last_ts: int = 0  # event time of the newest applied event (epoch ms)
    n_events: int = 0
    recent: list[tuple[str, float]] = field(default_factory=list)  # (item, weight), newest last
    disliked: list[str] = field(default_factory=list)  # the latest MAX_DISLIKED, oldest first
    seen_filter: bytes = b""  # Bloom filter of every item interacted with
    # (item_id, title) of the latest positively-weighted items, newest last: for "reasons".
    recent_positive: list[tuple[str, str]] = field(default_factory=list)
    recent_event_ids: list[str] = field(default_factory=list)  # event_hash() of each
    offsets: dict[int, int] = field(default_factory=dict)  # source partition -> last offset
    weights: list[float] = field(default_factory=list)  # per-user ranking weight deltas

    @property
    def seen(self) -> list[str]:
        """The exact ids of the recent items, oldest first (older ones: ``has_seen``)."""
        return [i for i, _ in self.recent]

    def has_seen(self, item_id: str) -> bool:
        return any(i == item_id for i, _ in self.recent) or bloom.contains(
            self.seen_filter, item_id
        )

    # -- serialisation: a JSON-ready dict; the Faust table keeps it as is and writes it to
    # -- the changelog as JSON.
    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        return cls.from_dict(orjson.loads(raw))

    def to_dict(self) -> dict[str, Any]:
        interest = {}
        for m, vec in self.interest.items():
            q, s = quantize(vec)
            interest[m] = [base64.b64encode(q.tobytes()).decode(), s]
        return {
            "v": STATE_VERSION,
            "interest": interest,
            "last_ts": self.last_ts,
            "n": self.n_events,
            "recent": [[i, w] for i, w in self.recent],
            "disliked": self.disliked,
            "seen": bloom.encode(self.seen_filter) if self.seen_filter else "",
            "recent_positive": self.recent_positive,
            "eids": "".join(self.recent_event_ids),
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "w": self.weights,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UserState:
        if d.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported user state version {d.get('v')!r}")
        eids = d["eids"]
        return cls(
            interest={
                m: dequantize(np.frombuffer(base64.b64decode(q), dtype=np.int8), s)
                for m, (q, s) in d["interest"].items()
            },
            last_ts=d["last_ts"],
            n_events=d["n"],
            recent=[(i, float(w)) for i, w in d["recent"]],
            disliked=list(d["disliked"]),
            seen_filter=bloom.decode(d["seen"]),
            recent_positive=[(i, t) for i, t in d["recent_positive"]],
            recent_event_ids=[eids[j : j + 16] for j in range(0, len(eids), 16)],
            offsets={int(p): o for p, o in d["offsets"].items()},
            weights=[float(x) for x in d.get("w", [])],
        )

    def excluded(self) -> set[str]:
        """Exact ids for the vector store's exclusion filter (older items: ``seen_filter``)."""
        return {i for i, _ in self.recent} | set(self.disliked)

    def is_duplicate(self, partition: int | None, offset: int | None, event_id: str | None) -> bool:
        if (
            partition is not None
            and offset is not None
            and offset <= self.offsets.get(partition, -1)
        ):
            return True
        return event_id is not None and event_hash(event_id) in self.recent_event_ids


def event_weight(event_type: str, value: float | None, weights: Mapping[str, float]) -> float:
    """Weight of one event in the interest sum. ``value`` (e.g. watch fraction in [0, 1])
    scales consumption events: a view watched to 90% counts more than one abandoned at 5%."""
    w = float(weights.get(event_type, 0.0))
    if value is not None and event_type in ("view", "complete"):
        w *= 0.5 + min(max(float(value), 0.0), 1.0)
    return w


def apply_event(
    state: UserState,
    *,
    item_id: str,
    item_title: str | None,
    item_vectors: Mapping[str, np.ndarray],
    event_type: str,
    ts: int,
    value: float | None,
    weights: Mapping[str, float],
    half_life_ms: float,
    partition: int | None = None,
    offset: int | None = None,
    event_id: str | None = None,
    dedupe_window: int = 32,
    recent_positive: int = 5,
    recent_items: int = 24,
    seen_filter_bits: int = SEEN_FILTER_BITS,
    user_weights: Sequence[float] | None = None,
) -> UserState:
    """Return the state after one event (the input is not modified).

    interest_m <- interest_m * 0.5 ** (dt / half_life) + w * item_vector_m, per modality m,
    where dt is the event time since the newest applied event (out-of-order events: dt = 0),
    then rounded to int8 codes (what the changelog stores, so a restart changes nothing).
    ``user_weights``: the user's new ranking weight deltas (ranking.learner), if any.
    """
    w = event_weight(event_type, value, weights)
    dt = max(0, ts - state.last_ts) if state.n_events else 0
    decay = np.float32(0.5 ** (dt / half_life_ms) if dt else 1.0)

    interest = {m: v * decay for m, v in state.interest.items()}
    for m, vec in item_vectors.items():
        contrib = np.float32(w) * np.asarray(vec, dtype=np.float32)
        interest[m] = interest[m] + contrib if m in interest else contrib
    interest = {m: requantize(v) for m, v in interest.items()}

    recent = [p for p in state.recent if p[0] != item_id]
    recent = [*recent, (item_id, round(w, 4))][-recent_items:]
    seen_filter = state.seen_filter or bloom.empty(seen_filter_bits)
    seen_filter = bloom.add(seen_filter, item_id)
    disliked = state.disliked
    if event_type == "dislike" and item_id not in disliked:
        disliked = [*disliked, item_id][-MAX_DISLIKED:]
    liked = state.recent_positive
    if w > POSITIVE_THRESHOLD:
        liked = [p for p in liked if p[0] != item_id] + [
            (item_id, (item_title or item_id)[:MAX_TITLE])
        ]
        liked = liked[-recent_positive:]
    elif w < 0:  # never explain a recommendation by an item the user has since rejected
        liked = [p for p in liked if p[0] != item_id]
    event_ids = state.recent_event_ids
    if event_id is not None and dedupe_window:
        event_ids = [*event_ids, event_hash(event_id)][-dedupe_window:]
    offsets = state.offsets
    if partition is not None and offset is not None:
        offsets = {**offsets, partition: max(offset, offsets.get(partition, -1))}

    return UserState(
        interest=interest,
        last_ts=max(state.last_ts, ts),
        n_events=state.n_events + 1,
        recent=recent,
        disliked=disliked,
        seen_filter=seen_filter,
        recent_positive=liked,
        recent_event_ids=event_ids,
        offsets=offsets,
        weights=list(user_weights) if user_weights is not None else state.weights,
    )
