"""User state (ranking/user_state.py): update maths, bookkeeping, idempotence, the binary codec
and the loading of version-2 (JSON) states."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import pytest

from recstream.ranking import kernels, seen
from recstream.ranking.user_state import (
    StateParams,
    UserState,
    apply_event,
    event_hash,
    event_weight,
    item_digest,
    item_hash,
    quantize,
)

H = 1_000.0  # interest half-life in these tests, ms
E = np.eye(4, dtype=np.float32)  # item vectors: orthogonal unit vectors
PARAMS = {"dedupe_window", "recent_positive", "recent_items", "seen_filter_bits"}


def step(
    state: UserState, item_id: str, vec: np.ndarray | None, event_type: str, ts: int,
    weights: Mapping[str, float], *, vectors: Mapping[str, np.ndarray] | None = None,
    half_life_ms: float = H, **kw: Any,
) -> UserState:  # fmt: skip
    """apply_event on item ``item_id``; ``kw``: StateParams fields and apply_event's own."""
    p = StateParams(weights, half_life_ms, **{k: kw.pop(k) for k in list(kw) if k in PARAMS})
    return apply_event(
        state, item=item_hash(item_id), item_digest16=item_digest(item_id),
        item_vectors=vectors if vectors is not None else {"text": vec},
        event_type=event_type, ts=ts, value=kw.pop("value", None), params=p, **kw,
    )  # fmt: skip


def hashes(*ids: str) -> list[int]:
    return [item_hash(i) for i in ids]


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def q_step(v: np.ndarray) -> float:  # the int8 storage step of a vector
    return float(np.max(np.abs(v))) / 127


# -- identity ---------------------------------------------------------------------------------


def test_hashes_and_bloom_positions_come_from_blake2b_digests(weights: dict[str, float]) -> None:
    d = hashlib.blake2b(b"x", digest_size=16).digest()
    assert item_digest("x") == d and item_hash("x") == int.from_bytes(d[:8], "little")
    e = hashlib.blake2b(b"ev-1", digest_size=8).digest()
    assert event_hash("ev-1") == int.from_bytes(e, "little")
    s = step(UserState(), "x", E[0], "view", 0, weights, seen_filter_bits=512)
    assert len(s.seen_filter) == 64  # the four 32-bit words of the digest, mod the bits
    want = {int.from_bytes(d[4 * h : 4 * h + 4], "little") % 512 for h in range(4)}
    assert set(np.flatnonzero(seen.flags(s.seen_filter)).tolist()) == want
    assert s.seen_filter == seen.add(seen.empty(512), "x")  # the same as by the id


# -- the update maths -------------------------------------------------------------------------


def test_first_event_is_its_weighted_vector(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", E[0], "like", 5_000, weights)
    np.testing.assert_array_equal(s.interest["text"], 2.0 * E[0])
    assert s.interest["text"].dtype == np.float32
    assert (s.last_ts, s.n_events) == (5_000, 1)
    q, scale = quantize(np.array([0.5, -1.0, 0.25, 0.0], dtype=np.float32))  # int8 storage
    assert q.dtype == np.int8 and q.tolist() == [64, -127, 32, 0]
    assert scale == pytest.approx(1 / 127) and quantize(np.zeros(3, np.float32))[1] == 0.0


def test_one_half_life_halves_an_old_contribution(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", E[0], "like", 10_000, weights)
    s = step(s, "b", E[1], "like", 10_000 + int(H), weights)
    np.testing.assert_allclose(s.interest["text"], [1.0, 2.0, 0.0, 0.0], atol=q_step(2 * E[0]))
    s = step(s, "c", E[2], "click", 10_000 + 3 * int(H), weights)  # two more half-lives
    np.testing.assert_allclose(s.interest["text"], [0.25, 0.5, 1.0, 0.0], atol=2 / 127)


def test_same_time_and_out_of_order_events_do_not_decay(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", E[0], "like", 10_000, weights)
    same = step(s, "b", E[1], "like", 10_000, weights)
    np.testing.assert_array_equal(same.interest["text"], [2.0, 2.0, 0.0, 0.0])
    late = step(s, "b", E[1], "like", 10_000 - 5 * int(H), weights)
    np.testing.assert_array_equal(late.interest["text"], [2.0, 2.0, 0.0, 0.0])
    assert late.last_ts == 10_000 and late.n_events == 2
    # the next in-order event decays from the newest time, not from the late one
    nxt = step(late, "c", E[2], "click", 10_000 + int(H), weights)
    np.testing.assert_array_equal(nxt.interest["text"], [1.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize("event_type", ["skip", "dislike"])
def test_negative_events_push_away(event_type: str, weights: dict[str, float]) -> None:
    liked = step(UserState(), "a", E[0], "like", 0, weights)
    near = np.array([0.6, 0.8, 0.0, 0.0], dtype=np.float32)
    before = cos(liked.interest["text"], near)
    after = step(liked, "b", near, event_type, 0, weights)
    assert cos(after.interest["text"], near) < before
    want = 2.0 * E[0] + weights[event_type] * near
    np.testing.assert_allclose(after.interest["text"], want, atol=q_step(want))
    only = step(UserState(), "b", near, event_type, 0, weights)
    assert cos(only.interest["text"], near) == pytest.approx(-1.0)


# (type, value, weight): value scales consumption events only (view, complete), clamped to
# [0, 1]: 0.5 + value; unknown types weigh nothing
EVENT_WEIGHTS = [
    ("view", None, 0.5), ("view", 1.0, 0.75), ("view", 0.0, 0.25), ("view", 7.0, 0.75),
    ("view", -3.0, 0.25), ("complete", 0.5, 2.0), ("click", 0.0, 1.0), ("like", 0.0, 2.0),
    ("purchase", None, 0.0),
]  # fmt: skip


@pytest.mark.parametrize(("event_type", "value", "expected"), EVENT_WEIGHTS)
def test_event_weight(
    event_type: str, value: float | None, expected: float, weights: dict[str, float]
) -> None:
    assert event_weight(event_type, value, weights) == pytest.approx(expected)


def test_value_scales_the_interest_update(weights: dict[str, float]) -> None:
    full = step(UserState(), "a", E[0], "view", 0, weights, value=1.0)
    brief = step(UserState(), "a", E[0], "view", 0, weights, value=0.0)
    np.testing.assert_allclose(full.interest["text"], 0.75 * E[0])
    np.testing.assert_allclose(brief.interest["text"], 0.25 * E[0])
    assert full.recent_w.tolist() == [0.75] and brief.recent_w.tolist() == [0.25]


def test_modalities_are_updated_independently(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", None, "like", 0, weights, vectors={"text": E[0]})
    s = step(s, "b", None, "like", int(H), weights, vectors={"image": E[1, :3]})
    np.testing.assert_array_equal(s.interest["text"], E[0])  # decayed, no new text
    np.testing.assert_array_equal(s.interest["image"], 2.0 * E[1, :3])


# -- bookkeeping ------------------------------------------------------------------------------


def test_recent_and_disliked(weights: dict[str, float]) -> None:
    s = UserState()
    events = [("a", "view"), ("b", "like"), ("a", "like"), ("c", "dislike"), ("c", "dislike")]
    for item, etype in [*events, ("d", "skip")]:
        s = step(s, item, E[0], etype, 0, weights)
    assert s.recent.dtype == np.uint64 and s.recent_w.dtype == np.float32
    assert s.recent.tolist() == hashes("b", "a", "c", "d")  # once each, latest last
    assert s.recent_w.tolist() == [2.0, 2.0, -2.0, -0.5]
    assert s.disliked.tolist() == hashes("c")  # skip is not a dislike
    assert set(s.excluded().tolist()) == set(hashes("a", "b", "c", "d"))
    assert s.n_events == 6


def test_recent_is_bounded_older_items_stay_in_the_filter(weights: dict[str, float]) -> None:
    s = UserState()
    for i in range(300):
        s = step(s, f"item-{i}", E[i % 4], "view", i, weights, recent_items=8)
    assert s.recent.tolist() == hashes(*(f"item-{i}" for i in range(292, 300)))
    assert set(s.excluded().tolist()) == set(s.recent.tolist())
    assert all(s.has_seen(f"item-{i}") for i in range(300))  # older ones: the Bloom filter
    false_pos = sum(s.has_seen(f"other-{i}") for i in range(2000))
    assert false_pos < 20  # 300 items in 6144 bits, 4 hashes: ~0.1%
    back = UserState.from_bytes(s.to_bytes())
    assert back.seen_filter == s.seen_filter and back.has_seen("item-0")


def test_liked(weights: dict[str, float]) -> None:
    s = UserState()
    for i in range(7):
        s = step(s, f"i{i}", E[0], "like", i, weights, recent_positive=3)
    assert s.liked.tolist() == hashes("i4", "i5", "i6")
    s = step(s, "i4", E[0], "click", 10, weights, recent_positive=3)
    assert s.liked.tolist() == hashes("i5", "i6", "i4")  # re-liked moves last
    s = step(s, "x", E[0], "skip", 11, weights, recent_positive=3)
    assert s.liked.tolist() == hashes("i5", "i6", "i4")  # negatives never added
    s = step(s, "y", E[0], "purchase", 12, weights, recent_positive=3)
    assert s.liked.tolist() == hashes("i5", "i6", "i4")  # weight 0: neither
    # liked, then rejected: "because you liked <it>" would now be wrong
    s = step(s, "i6", E[0], "dislike", 13, weights, recent_positive=3)
    assert s.liked.tolist() == hashes("i5", "i4")
    s = step(s, "i5", E[0], "skip", 14, weights, recent_positive=3)
    assert s.liked.tolist() == hashes("i4")


def test_event_ids_window(weights: dict[str, float]) -> None:
    s = UserState()
    for i in range(5):
        s = step(s, "a", E[0], "view", i, weights, event_id=f"e{i}", dedupe_window=3)
    assert s.event_ids.dtype == np.uint64
    assert s.event_ids.tolist() == [event_hash(e) for e in ["e2", "e3", "e4"]]
    s = step(s, "a", E[0], "view", 9, weights, event_id=None, dedupe_window=3)
    assert s.event_ids.tolist() == [event_hash(e) for e in ["e2", "e3", "e4"]]
    assert s.is_duplicate(None, None, "e4") and not s.is_duplicate(None, None, "e1")
    off = step(UserState(), "a", E[0], "view", 0, weights, event_id="e0", dedupe_window=0)
    assert len(off.event_ids) == 0


def test_offsets_per_partition_and_is_duplicate(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", E[0], "view", 0, weights, partition=0, offset=10)
    s = step(s, "a", E[0], "view", 1, weights, partition=1, offset=3)
    s = step(s, "a", E[0], "view", 2, weights, partition=0, offset=7)  # never goes backwards
    assert s.offsets == {0: 10, 1: 3}
    s = step(UserState(), "a", E[0], "view", 0, weights, partition=2, offset=100, event_id="e1")
    assert s.is_duplicate(2, 100, None) and s.is_duplicate(2, 99, None)  # redelivered
    assert not s.is_duplicate(2, 101, None) and not s.is_duplicate(3, 5, None)  # other partition
    assert s.is_duplicate(None, None, "e1") and s.is_duplicate(2, 500, "e1")  # producer retry
    assert not s.is_duplicate(None, None, "e2") and not s.is_duplicate(None, 5, None)
    assert not UserState().is_duplicate(0, 0, "e1")


# -- purity, serialisation, replay ------------------------------------------------------------


def plain(v: object) -> object:
    """A field as plain Python values (an array as its dtype and list), for exact comparison."""
    if isinstance(v, np.ndarray):
        return (v.dtype.str, v.tolist())
    return {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else v


def fields(s: UserState) -> dict[str, object]:
    return {k: plain(v) for k, v in vars(s).items()}


def test_input_state_is_not_mutated(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", E[0], "like", 0, weights, partition=0, offset=1, event_id="e1")
    s.shown = np.asarray(hashes("p", "q"), np.uint64)
    s.scales = np.ones(6, np.float32)
    before = copy.deepcopy(fields(s))
    new = step(s, "b", E[1], "dislike", int(H), weights, partition=0, offset=2, event_id="e2")
    step(new, "a", E[0], "skip", int(H), weights, user_weights=[0.1] * 6)
    assert fields(s) == before
    assert new.interest["text"] is not s.interest["text"]
    assert new.shown.tolist() == s.shown.tolist()  # the list shown is the caller's to set


def random_events(seed: int, n: int, dim: int = 384) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    types = ["view", "click", "like", "share", "complete", "skip", "dislike"]
    out, ts = [], 1_700_000_000_000
    for i in range(n):
        ts += int(rng.integers(-500, 5_000))  # some arrive out of order
        v = rng.standard_normal(dim).astype(np.float32)
        item = f"item-{int(rng.integers(0, 50))}"
        etype = types[int(rng.integers(0, len(types)))]
        value = float(rng.random()) if rng.random() < 0.5 else None
        out.append(
            dict(item=item_hash(item), item_digest16=item_digest(item), event_type=etype, ts=ts,
                 item_vectors={"text": v / np.linalg.norm(v)}, value=value, partition=i % 2,
                 offset=i, event_id=f"e{i}")
        )  # fmt: skip
    return out


def replay(
    events: list[dict[str, object]], weights: Mapping[str, float], restarts: bool = False
) -> UserState:
    p, s = StateParams(event_weights=weights, half_life_ms=3_600_000.0), UserState()
    for e in events:
        s = apply_event(s, params=p, **e)  # type: ignore[arg-type]
        if restarts:  # as after a restart: state restored from the changelog
            s = UserState.from_bytes(s.to_bytes())
    return s


def test_round_trip_is_exact(weights: dict[str, float]) -> None:
    s = replay(random_events(1, 40), weights)
    s.weights = np.asarray([0.1, -0.2, 0.0, 0.3, 0.05, -0.01], np.float32)
    s.shown = np.asarray([*hashes(*(f"item-{i}" for i in range(10))), 2**64 - 1], np.uint64)
    s.scales = np.asarray([1.0, 1.0, 0.37, 2.5, 1.0, 0.125], np.float32)
    assert len(s.disliked) and len(s.liked) and len(s.offsets) == 2
    back = UserState.from_bytes(s.to_bytes())
    assert fields(back) == fields(s)
    assert back.interest["text"].flags.writeable and back.recent.flags.writeable
    assert back.to_bytes() == s.to_bytes() and all(type(p) is int for p in back.offsets)
    empty = UserState.from_bytes(UserState().to_bytes())
    assert empty.interest == {} and empty.n_events == 0 and empty.seen_filter == b""
    assert fields(empty) == fields(UserState())


def filter_section(bits: bytes) -> int:
    """The length of the Bloom filter's section (a state's last) as version 4 writes it."""
    gaps = kernels.filter_gaps(np.frombuffer(bits, np.uint8)) if bits else b""
    return 5 + len(gaps) if bits and len(gaps) + 2 < len(bits) else 3 + len(bits)


def as_version3(raw: bytes, bits: bytes) -> bytes:
    """A version 4 state with the Bloom filter ``bits``, as version 3 wrote it: the filter
    zlib-compressed (mode 1)."""
    packed = zlib.compress(bits, 1)
    return bytes([3]) + raw[1 : -filter_section(bits)] + struct.pack("<BH", 1, len(packed)) + packed


@pytest.mark.parametrize("n_items", [0, 1, 30, 2_000])
def test_the_filter_is_written_sparse_and_version_3_states_load(
    n_items: int, weights: dict[str, float]
) -> None:
    """Version 4 writes a sparse filter as the gaps between its set bits (mode 2: about a byte
    a bit), a dense one raw; a state written by version 3 (zlib) loads the same."""
    s = UserState()
    for n in range(n_items):
        s = step(s, f"item-{n}", E[n % 4], "view", n, weights)
    raw = s.to_bytes()
    back = UserState.from_bytes(raw)
    assert raw[0] == 4 and back.seen_filter == s.seen_filter and fields(back) == fields(s)
    if not n_items:
        assert raw.endswith(struct.pack("<BH", 0, 0))
        return
    section = raw[-filter_section(s.seen_filter) :]
    set_bits = sum(bin(b).count("1") for b in s.seen_filter)
    if n_items < 100:  # sparse: mode 2, at most two bytes a set bit
        assert section[0] == 2 and len(section) <= 5 + 2 * set_bits
        assert struct.unpack_from("<HH", section, 1) == (len(section) - 3, len(s.seen_filter))
    else:  # nearly full: raw
        assert section[0] == 0 and section[3:] == s.seen_filter
    old = as_version3(raw, s.seen_filter)
    assert old[0] == 3 and fields(UserState.from_bytes(old)) == fields(s)


def test_a_corrupt_sparse_filter_is_refused() -> None:
    bits = seen.add(seen.empty(64), "a")
    raw = UserState(seen_filter=bits).to_bytes()
    section = filter_section(bits)
    assert raw[-section] == 2
    # the filter said to be one byte long: its set bits run past it
    bad = raw[: -section + 3] + struct.pack("<H", 1) + raw[-section + 5 :]
    with pytest.raises(ValueError, match="seen filter"):
        UserState.from_bytes(bad)


def version2() -> tuple[dict[str, object], np.ndarray, bytes, list[str]]:
    """A state as version 2 wrote it (ranking/state.py's ``to_dict``), its interest codes,
    Bloom filter and event ids."""
    q = np.array([10, -127, 0, 64], np.int8)
    bits = functools.reduce(seen.add, ["a", "b", "c", "old-1", "old-2"], seen.empty(6144))
    eids = ["e1", "e2"]
    d = {
        "v": 2, "interest": {"text": [base64.b64encode(q.tobytes()).decode(), 0.02]},
        "last_ts": 1_700_000_123_456, "n": 17, "recent": [["a", 2.0], ["b", -0.5], ["c", 1.0]],
        "disliked": ["b"], "seen": seen.encode(bits),
        "recent_positive": [["c", "Title C"], ["a", "Title A"]],
        "eids": "".join(hashlib.blake2b(e.encode(), digest_size=8).hexdigest() for e in eids),
        "offsets": {"0": 10, "3": 7}, "w": [0.5, -0.25],
    }  # fmt: skip
    return d, q, bits, eids


def test_a_version_2_state_loads(weights: dict[str, float]) -> None:
    d, q, bits, eids = version2()
    s = UserState.from_bytes(orjson.dumps(d))
    np.testing.assert_array_equal(s.interest["text"], q.astype(np.float32) * np.float32(0.02))
    assert (s.last_ts, s.n_events) == (1_700_000_123_456, 17)
    assert s.recent.tolist() == hashes("a", "b", "c") and s.recent_w.tolist() == [2.0, -0.5, 1.0]
    assert s.disliked.tolist() == hashes("b") and s.liked.tolist() == hashes("c", "a")
    assert s.seen_filter == bits and s.weights.tolist() == [0.5, -0.25]
    assert s.has_seen("old-1") and s.has_seen("a") and not s.has_seen("never")
    assert s.offsets == {0: 10, 3: 7} and all(type(p) is int for p in s.offsets)
    assert s.event_ids.tolist() == [event_hash(e) for e in eids]
    assert s.is_duplicate(None, None, "e2") and s.is_duplicate(3, 7, None)
    assert fields(UserState.from_dict(d)) == fields(s)
    # written back in version 3 it stays the same state, and it goes on from there
    back = UserState.from_bytes(s.to_bytes())
    assert s.to_bytes()[0] == 4 and fields(back) == fields(s)
    nxt = step(back, "d", E[0], "like", 1_700_000_123_456, weights)
    assert nxt.recent.tolist() == hashes("a", "b", "c", "d") and nxt.n_events == 18


def test_version_3_is_written_as_the_release_before_version_4_wrote_it() -> None:
    """``to_bytes(3)``: version 4's layout with version byte 3 and the Bloom filter
    zlib-compressed (mode 1) where that is shorter, else raw (mode 0): what version 3's writer
    gave; it loads back to the same state. Other versions are refused."""
    bits = bytes(6144 // 8)
    for n in range(40):
        bits = seen.add(bits, f"i{n}")
    sparse = UserState(seen_filter=bits)
    dense = UserState(seen_filter=np.random.default_rng(0).bytes(768))  # incompressible
    assert sparse.to_bytes(3) == as_version3(sparse.to_bytes(), sparse.seen_filter)
    assert dense.to_bytes(3) == bytes([3]) + dense.to_bytes()[1:]  # raw in both (mode 0)
    for st in (sparse, dense):
        assert fields(UserState.from_bytes(st.to_bytes(3))) == fields(st)
    with pytest.raises(ValueError, match="cannot write user state version 5"):
        sparse.to_bytes(5)


def test_unknown_state_version_is_refused() -> None:
    raw = bytes([99]) + UserState().to_bytes()[1:]
    with pytest.raises(ValueError, match="unsupported user state version 99"):
        UserState.from_bytes(raw)
    with pytest.raises(ValueError, match="unsupported user state version 99"):
        UserState.from_bytes(b'{"v":99}')
    with pytest.raises(ValueError, match="unsupported user state version"):
        UserState.from_bytes(b"")


def test_serialized_size_is_bounded(weights: dict[str, float]) -> None:
    # A heavy user: 1,000 events with ids of 36 chars (uuids).
    rng = np.random.default_rng(0)
    s = UserState()
    for n in range(1_000):
        v = rng.standard_normal(384).astype(np.float32)
        s = step(
            s, f"{n:08d}-0000-4000-8000-{n:012d}", v / np.linalg.norm(v), "like",
            1_700_000_000_000 + n * 60_000, weights, half_life_ms=72 * 3_600_000,
            partition=n % 3, offset=n, event_id=f"{n:032x}",
            user_weights=[0.01234, -0.05, 0.1, 0.0, 0.2, 0.3],
        )  # fmt: skip
    s.shown, s.scales = np.arange(50, dtype=np.uint64), np.ones(6, np.float32)  # a list shown
    assert len(s.to_bytes()) <= 4096, len(s.to_bytes())
    light = step(UserState(), "a", E[0], "like", 0, weights, event_id="e1")
    assert len(light.to_bytes()) < 400


def test_replay_is_bit_identical(weights: dict[str, float]) -> None:
    events = random_events(7, 60)
    a, b, c = replay(events, weights), replay(events, weights), replay(events, weights, True)
    assert a.to_bytes() == b.to_bytes() == c.to_bytes()
    assert np.array_equal(a.interest["text"], c.interest["text"])


def test_two_taste_groups_separate(weights: dict[str, float]) -> None:
    rng, dim = np.random.default_rng(42), 32
    centers = {c: v / np.linalg.norm(v) for c in "AB" for v in [rng.standard_normal(dim)]}

    def item(c: str) -> np.ndarray:
        v = centers[c] + 0.5 * rng.standard_normal(dim) / np.sqrt(dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    catalog = {f"{c}{i}": item(c) for c in "AB" for i in range(10)}
    users, go = {}, functools.partial(step, weights=weights, half_life_ms=3_600_000)
    for taste, other in (("A", "B"), ("B", "A")):
        s = UserState()
        for i in range(10):  # an event a minute, an hour's half-life: every one counts
            ts = 60_000 * (i + 1)
            s = go(s, f"{taste}{i}", catalog[f"{taste}{i}"], "like", ts)
            if i % 3 == 0:  # also glances at, and skips, the other group
                s = go(s, f"{other}{i}", catalog[f"{other}{i}"], "skip", ts)
        users[taste] = s
    for taste, other in (("A", "B"), ("B", "A")):
        v = users[taste].interest["text"]
        assert cos(v, centers[taste]) > 0.8
        assert cos(v, centers[taste]) > cos(v, centers[other]) + 0.5
        own = np.mean([cos(v, catalog[f"{taste}{i}"]) for i in range(10)])
        theirs = np.mean([cos(v, catalog[f"{other}{i}"]) for i in range(10)])
        assert own > theirs
