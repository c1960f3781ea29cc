"""Per-user state, its online update and its binary codec. Pure, synchronous, replayable.

The state lives in a changelog-backed Faust Table keyed by user id (streams/app.py) as the
bytes of :meth:`UserState.to_bytes`; this module knows nothing of Faust. It is bounded
(a few KB whatever the user's history):

- ``interest``: the long-term interest per modality, an exponentially time-decayed, weighted
  sum of the vectors of the items the user interacted with, stored as int8 with one scale per
  vector (384 B for text); time is *event* time, so a replay gives identical state.
- ``recent`` / ``recent_w``: the last ``recent_items`` items (64-bit item hashes, see
  :func:`item_hash`) and event weights, newest last: the short-term interest and the seeds of
  collaborative retrieval.
- ``seen_filter``: a Bloom filter of every item interacted with (ranking.seen); ``disliked``:
  the latest dislikes; ``liked``: the latest positively taken items (what reasons may name).
- ``weights``: the user's own corrections to the ranking weights (ranking.learner), learned
  from ``shown`` (the list the user was last shown, best first) and ``scales`` (the divisors
  its features were scaled by): what the user took against what the ranking offered them.

Idempotence: every applied event records its source offset per partition, and the 64-bit
hashes of the latest ``event_id`` values are kept: a redelivered message (at-least-once after
a crash) or a producer duplicate changes nothing.

Wire form (version 3): one version byte, then fixed-width little-endian fields (see
``to_bytes``). States written by earlier versions (JSON, ``{"v": 2, ...}``) still load.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from recstream.ranking import kernels
from recstream.ranking import seen as bloom

STATE_VERSION = 4  # 3: the same layout, its Bloom filter raw or zlib-compressed only
POSITIVE_THRESHOLD = 0.0
SEEN_FILTER_BITS = 6144
MAX_DISLIKED = 32

_U64 = np.dtype("<u8")
_F32 = np.dtype("<f4")
_EMPTY_U64 = np.zeros(0, dtype=np.uint64)
_EMPTY_F32 = np.zeros(0, dtype=np.float32)


def item_digest(item_id: str) -> bytes:
    """The 16-byte digest an item is known by: its first 8 bytes are the item's 64-bit hash,
    its four 32-bit words its Bloom positions (ranking.seen, the same since version 2)."""
    return hashlib.blake2b(item_id.encode(), digest_size=16).digest()


def item_hash(item_id: str) -> int:
    return int.from_bytes(item_digest(item_id)[:8], "little")


def event_hash(event_id: str) -> int:
    """64-bit hash of an event id (the blake2b digest version 2 stored as 16 hex digits)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def quantize(v: np.ndarray) -> tuple[np.ndarray, float]:
    """int8 codes and a float32 scale; ``dequantize`` of them is what the state holds."""
    q, scale = kernels.quantize(np.ascontiguousarray(v, dtype=np.float32).ravel())
    return q, float(scale)


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
    return q.astype(np.float32) * np.float32(scale)


@dataclass
class UserState:
    interest: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> float32[d]
    last_ts: int = 0  # event time of the newest applied event (epoch ms)
    n_events: int = 0
    recent: np.ndarray = field(default_factory=lambda: _EMPTY_U64)  # item hashes, newest last
    recent_w: np.ndarray = field(default_factory=lambda: _EMPTY_F32)  # their event weights
    disliked: np.ndarray = field(default_factory=lambda: _EMPTY_U64)  # oldest first
    liked: np.ndarray = field(default_factory=lambda: _EMPTY_U64)  # newest last
    event_ids: np.ndarray = field(default_factory=lambda: _EMPTY_U64)  # event_hash of each
    offsets: dict[int, int] = field(default_factory=dict)  # source partition -> last offset
    weights: np.ndarray = field(default_factory=lambda: _EMPTY_F32)  # ranking weight deltas
    seen_filter: bytes = b""  # Bloom filter of every item interacted with
    shown: np.ndarray = field(default_factory=lambda: _EMPTY_U64)  # last list, best first
    scales: np.ndarray = field(default_factory=lambda: _EMPTY_F32)  # its feature divisors

    def has_seen(self, item_id: str) -> bool:
        return bool((self.recent == np.uint64(item_hash(item_id))).any()) or bloom.contains(
            self.seen_filter, item_id
        )

    def excluded(self) -> np.ndarray:
        """uint64 hashes never to show again exactly (older seen items: ``seen_filter``)."""
        return np.concatenate([self.recent, self.disliked])

    def is_duplicate(self, partition: int | None, offset: int | None, event_id: str | None) -> bool:
        if (
            partition is not None
            and offset is not None
            and offset <= self.offsets.get(partition, -1)
        ):
            return True
        return event_id is not None and bool(
            (self.event_ids == np.uint64(event_hash(event_id))).any()
        )

    # -- wire form ----------------------------------------------------------------------------
    def to_bytes(self, version: int = STATE_VERSION) -> bytes:
        """Versions 3 and 4: ``<B version> <q last_ts> <I n_events>``, then the modalities (``<B
        count>``, each ``<B name length> name <H dim> <f scale> int8[dim]``), then seven arrays
        each as ``<B length>`` + elements (recent: u64, recent_w: f32, disliked, liked,
        event_ids, shown: u64, scales: f32), the offsets (``<B count>`` + ``<H partition> <q
        offset>`` each), the weights (``<B length>`` + f32) and the Bloom filter (``<B mode>
        <H length>`` + bytes; mode 0: raw; mode 1: zlib-compressed, written by version 3; mode
        2: ``<H filter bytes>`` + the gaps between its set bits as LEB128 varints,
        kernels.filter_gaps, where that is shorter than the filter).

        Version 4 is version 3 with mode 2: a sparse filter is as short as zlib made it, at a
        tenth of the time (zlib was ~15 us of each write). Version 3 states load, and
        ``version=3`` writes them (for a rolling upgrade from a release that reads only 3:
        ``RECSTREAM_USER_STATE_VERSION``, streams/settings.py)."""
        if version not in (3, STATE_VERSION):
            raise ValueError(f"cannot write user state version {version!r}: 3 or {STATE_VERSION}")
        out = [struct.pack("<BqIB", version, self.last_ts, self.n_events, len(self.interest))]
        for m, vec in sorted(self.interest.items()):
            q, s = quantize(vec)
            name = m.encode()
            out.append(struct.pack("<B", len(name)) + name + struct.pack("<Hf", len(q), s))
            out.append(q.tobytes())
        for arr, dt in (
            (self.recent, _U64),
            (self.recent_w, _F32),
            (self.disliked, _U64),
            (self.liked, _U64),
            (self.event_ids, _U64),
            (self.shown, _U64),
            (self.scales, _F32),
        ):
            out.append(struct.pack("<B", len(arr)) + np.asarray(arr, dtype=dt).tobytes())
        out.append(struct.pack("<B", len(self.offsets)))
        out.extend(struct.pack("<Hq", p, o) for p, o in sorted(self.offsets.items()))
        out.append(struct.pack("<B", len(self.weights)))
        out.append(np.asarray(self.weights, dtype=_F32).tobytes())
        bits = self.seen_filter
        if version == 3:
            packed = zlib.compress(bits, 1) if bits else b""
            mode, body = (1, packed) if len(packed) < len(bits) else (0, bits)
            out.append(struct.pack("<BH", mode, len(body)) + body)
            return b"".join(out)
        gaps = kernels.filter_gaps(np.frombuffer(bits, np.uint8)).tobytes() if bits else b""
        if bits and len(gaps) + 2 < len(bits):
            out.append(struct.pack("<BHH", 2, len(gaps) + 2, len(bits)) + gaps)
        else:
            out.append(struct.pack("<BH", 0, len(bits)) + bits)
        return b"".join(out)

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        if raw[:1] == b"{":
            return cls.from_dict(orjson.loads(raw))
        if not raw or raw[0] not in (3, STATE_VERSION):
            raise ValueError(f"unsupported user state version {raw[0] if raw else None!r}")
        version, last_ts, n_events, n_mod = struct.unpack_from("<BqIB", raw, 0)
        at = struct.calcsize("<BqIB")
        interest = {}
        for _ in range(n_mod):
            (ln,) = struct.unpack_from("<B", raw, at)
            name = raw[at + 1 : at + 1 + ln].decode()
            at += 1 + ln
            dim, scale = struct.unpack_from("<Hf", raw, at)
            at += 6
            q = np.frombuffer(raw, dtype=np.int8, count=dim, offset=at)
            interest[name] = dequantize(q, scale)
            at += dim
        arrays = []
        for dt in (_U64, _F32, _U64, _U64, _U64, _U64, _F32):
            n = raw[at]
            arrays.append(np.frombuffer(raw, dtype=dt, count=n, offset=at + 1))
            at += 1 + n * dt.itemsize
        n = raw[at]
        at += 1
        offsets = {}
        for _ in range(n):
            p, o = struct.unpack_from("<Hq", raw, at)
            offsets[p] = o
            at += 10
        n = raw[at]
        weights = np.frombuffer(raw, dtype=_F32, count=n, offset=at + 1)
        at += 1 + 4 * n
        mode, ln = struct.unpack_from("<BH", raw, at)
        body = raw[at + 3 : at + 3 + ln]
        if mode == 1:
            seen_filter = zlib.decompress(body)
        elif mode == 2:
            (size,) = struct.unpack_from("<H", body, 0)
            filt = kernels.filter_from_gaps(np.frombuffer(body, np.uint8, offset=2), size)
            if filt is None:
                raise ValueError("user state: a seen filter's set bits run past its end")
            seen_filter = filt.tobytes()
        else:
            seen_filter = bytes(body)
        recent, recent_w, disliked, liked, event_ids, shown, scales = arrays
        # astype copies: the state's arrays are its own, writable, in native byte order
        return cls(
            interest=interest,
            last_ts=last_ts,
            n_events=n_events,
            recent=recent.astype(np.uint64),
            recent_w=recent_w.astype(np.float32),
            disliked=disliked.astype(np.uint64),
            liked=liked.astype(np.uint64),
            event_ids=event_ids.astype(np.uint64),
            offsets=offsets,
            weights=weights.astype(np.float32),
            seen_filter=seen_filter,
            shown=shown.astype(np.uint64),
            scales=scales.astype(np.float32),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UserState:
        """A state written by version 2 (JSON: item ids as strings, hex event hashes)."""
        if d.get("v") != 2:
            raise ValueError(f"unsupported user state version {d.get('v')!r}")
        eids = d["eids"]

        def hashes(ids: Sequence[str]) -> np.ndarray:
            return np.asarray([item_hash(i) for i in ids], dtype=np.uint64)

        return cls(
            interest={
                m: dequantize(np.frombuffer(base64.b64decode(q), dtype=np.int8), s)
                for m, (q, s) in d["interest"].items()
            },
            last_ts=d["last_ts"],
            n_events=d["n"],
            recent=hashes([i for i, _ in d["recent"]]),
            recent_w=np.asarray([w for _, w in d["recent"]], dtype=np.float32),
            disliked=hashes(d["disliked"]),
            liked=hashes([i for i, _ in d["recent_positive"]]),
            event_ids=np.asarray(
                [
                    int.from_bytes(bytes.fromhex(eids[j : j + 16]), "little")
                    for j in range(0, len(eids), 16)
                ],
                dtype=np.uint64,
            ),
            offsets={int(p): o for p, o in d["offsets"].items()},
            weights=np.asarray(d.get("w", []), dtype=np.float32),
            seen_filter=bloom.decode(d["seen"]),
        )


def event_weight(event_type: str, value: float | None, weights: Mapping[str, float]) -> float:
    """Weight of one event in the interest sum. ``value`` (e.g. watch fraction in [0, 1])
    scales consumption events: a view watched to 90% counts more than one abandoned at 5%."""
    w = float(weights.get(event_type, 0.0))
    if value is not None and event_type in ("view", "complete"):
        w *= 0.5 + min(max(float(value), 0.0), 1.0)
    return w


@dataclass(frozen=True)
class StateParams:
    """How the state is updated (RankingSettings: ranking/params.py)."""

    event_weights: Mapping[str, float]
    half_life_ms: float
    dedupe_window: int = 32
    recent_positive: int = 5
    recent_items: int = 24
    seen_filter_bits: int = SEEN_FILTER_BITS


def _push(old: np.ndarray, value: Any, n: int, dtype: type) -> np.ndarray:
    """The last ``n`` of ``old`` with ``value`` appended (np.append's result, in a fraction of
    its time: every event makes several)."""
    out: np.ndarray = np.empty(len(old) + 1, dtype)
    out[:-1] = old
    out[-1] = value
    return out[-n:]


def apply_event(
    state: UserState,
    *,
    item: int,
    item_digest16: bytes,
    item_vectors: Mapping[str, np.ndarray],
    event_type: str,
    ts: int,
    value: float | None,
    params: StateParams,
    partition: int | None = None,
    offset: int | None = None,
    event_id: str | None = None,
    user_weights: np.ndarray | None = None,
) -> UserState:
    """Return the state after one event on item hash ``item`` (the input is not modified).

    interest_m <- interest_m * 0.5 ** (dt / half_life) + w * item_vector_m, per modality m,
    where dt is the event time since the newest applied event (out-of-order events: dt = 0),
    then rounded to int8 codes (what the changelog stores, so a restart changes nothing).
    ``item_digest16``: :func:`item_digest` of the item (its Bloom positions);
    ``user_weights``: the user's new ranking weight deltas, if any.
    """
    w = event_weight(event_type, value, params.event_weights)
    dt = max(0, ts - state.last_ts) if state.n_events else 0
    decay = np.float32(0.5 ** (dt / params.half_life_ms) if dt else 1.0)

    # per modality: decayed, plus the item's vector times w, rounded to int8 codes and back (a
    # part the user or the item lacks is zeros: adding or scaling zeros changes no code)
    interest = {}
    w32 = np.float32(w)
    for m in [*state.interest, *(m for m in item_vectors if m not in state.interest)]:
        v = np.asarray(state.interest.get(m, _EMPTY_F32), np.float32)
        vec = np.asarray(item_vectors.get(m, _EMPTY_F32), np.float32)
        v = v if m in state.interest else np.zeros(len(vec), np.float32)
        vec = vec if m in item_vectors else np.zeros(len(v), np.float32)
        if len(vec) != len(v):
            raise ValueError(f"{m} vector of {len(vec)} dims, the state's has {len(v)}")
        interest[m] = kernels.fold_interest(v, decay, w32, vec)

    h = np.uint64(item)
    keep = state.recent != h
    n = params.recent_items
    recent = _push(state.recent[keep], h, n, np.uint64)
    recent_w = _push(state.recent_w[keep], np.float32(round(w, 4)), n, np.float32)
    seen_filter = bloom.add_positions(
        state.seen_filter or bloom.empty(params.seen_filter_bits), item_digest16
    )
    disliked = state.disliked
    if event_type == "dislike" and not (disliked == h).any():
        disliked = _push(disliked, h, MAX_DISLIKED, np.uint64)
    liked = state.liked
    if w > POSITIVE_THRESHOLD:
        liked = _push(liked[liked != h], h, params.recent_positive, np.uint64)
    elif w < 0:  # never explain a recommendation by an item the user has since rejected
        liked = liked[liked != h]
    event_ids = state.event_ids
    if event_id is not None and params.dedupe_window:
        event_ids = _push(event_ids, event_hash(event_id), params.dedupe_window, np.uint64)
    offsets = state.offsets
    if partition is not None and offset is not None:
        offsets = {**offsets, partition: max(offset, offsets.get(partition, -1))}

    return UserState(
        interest=interest,
        last_ts=max(state.last_ts, ts),
        n_events=state.n_events + 1,
        recent=recent,
        recent_w=recent_w,
        disliked=disliked,
        liked=liked,
        event_ids=event_ids,
        offsets=offsets,
        weights=state.weights if user_weights is None else np.asarray(user_weights, np.float32),
        seen_filter=seen_filter,
        shown=state.shown,
        scales=state.scales,
    )
