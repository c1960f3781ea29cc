"""Per-user interest state and its online update. Pure, synchronous, replayable.

The state lives in a changelog-backed Faust Table keyed by user id (see streams/app.py); this
module knows nothing of Faust. One interest vector per modality ("text" today; image and audio
are added by the multimodal encoders) is an exponentially time-decayed, weighted sum of the
vectors of the items the user interacted with. Time is *event* time (the event's ``ts``), so a
replay of the same events gives bit-identical state.

Idempotence: every applied event records its source offset per partition, and recent
``event_id`` values are remembered. A redelivered message (at-least-once after a crash) or a
producer duplicate changes nothing. That is what makes kill -9 safe without exactly-once.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

STATE_VERSION = 1
POSITIVE_THRESHOLD = 0.0


@dataclass
class UserState:
    interest: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> float32[d]
    last_ts: int = 0  # event time of the newest applied event (epoch ms)
    n_events: int = 0
    seen: list[str] = field(default_factory=list)  # every item interacted with, in order
    disliked: list[str] = field(default_factory=list)
    # (item_id, title) of the latest positively-weighted items, newest last: for "reasons".
    recent_positive: list[tuple[str, str]] = field(default_factory=list)
    recent_event_ids: list[str] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)  # source partition -> last offset

    # -- serialisation: a JSON-ready dict (vectors as base64 float32); the Faust table keeps
    # -- it as is and writes it to the changelog as JSON.
    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        return cls.from_dict(orjson.loads(raw))

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "interest": {
                m: base64.b64encode(np.ascontiguousarray(vec, np.float32).tobytes()).decode()
                for m, vec in self.interest.items()
            },
            "last_ts": self.last_ts,
            "n": self.n_events,
            "seen": self.seen,
            "disliked": self.disliked,
            "recent_positive": self.recent_positive,
            "recent_event_ids": self.recent_event_ids,
            "offsets": {str(p): o for p, o in self.offsets.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UserState:
        if d.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported user state version {d.get('v')!r}")
        return cls(
            interest={
                m: np.frombuffer(base64.b64decode(b), dtype=np.float32).copy()
                for m, b in d["interest"].items()
            },
            last_ts=d["last_ts"],
            n_events=d["n"],
            seen=list(d["seen"]),
            disliked=list(d["disliked"]),
            recent_positive=[(i, t) for i, t in d["recent_positive"]],
            recent_event_ids=list(d["recent_event_ids"]),
            offsets={int(p): o for p, o in d["offsets"].items()},
        )

    def excluded(self) -> set[str]:
        """Items never to recommend to this user again."""
        return set(self.seen) | set(self.disliked)

    def is_duplicate(self, partition: int | None, offset: int | None, event_id: str | None) -> bool:
        if (
            partition is not None
            and offset is not None
            and offset <= self.offsets.get(partition, -1)
        ):
            return True
        return event_id is not None and event_id in self.recent_event_ids


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
    dedupe_window: int = 64,
    recent_positive: int = 5,
) -> UserState:
    """Return the state after one event (the input is not modified).

    interest_m <- interest_m * 0.5 ** (dt / half_life) + w * item_vector_m, per modality m,
    where dt is the event time since the newest applied event (out-of-order events: dt = 0).
    """
    w = event_weight(event_type, value, weights)
    dt = max(0, ts - state.last_ts) if state.n_events else 0
    decay = 0.5 ** (dt / half_life_ms) if dt else 1.0

    interest = {m: (v * np.float32(decay)).astype(np.float32) for m, v in state.interest.items()}
    for m, vec in item_vectors.items():
        contrib = (np.float32(w) * np.asarray(vec, dtype=np.float32)).astype(np.float32)
        interest[m] = interest[m] + contrib if m in interest else contrib

    seen = state.seen if item_id in state.seen else [*state.seen, item_id]
    disliked = state.disliked
    if event_type == "dislike" and item_id not in disliked:
        disliked = [*disliked, item_id]
    recent = state.recent_positive
    if w > POSITIVE_THRESHOLD:
        recent = [p for p in recent if p[0] != item_id] + [(item_id, item_title or item_id)]
        recent = recent[-recent_positive:]
    elif w < 0:  # never explain a recommendation by an item the user has since rejected
        recent = [p for p in recent if p[0] != item_id]
    event_ids = state.recent_event_ids
    if event_id is not None and dedupe_window:
        event_ids = [*event_ids, event_id][-dedupe_window:]
    offsets = state.offsets
    if partition is not None and offset is not None:
        offsets = {**offsets, partition: max(offset, offsets.get(partition, -1))}

    return UserState(
        interest=interest,
        last_ts=max(state.last_ts, ts),
        n_events=state.n_events + 1,
        seen=seen,
        disliked=disliked,
        recent_positive=recent,
        recent_event_ids=event_ids,
        offsets=offsets,
    )
