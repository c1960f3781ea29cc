"""User interest state (ranking/state.py): update maths, bookkeeping, idempotence, changelog."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import orjson
import pytest

from recstream.ranking.state import UserState, apply_event, event_hash, event_weight, quantize

H = 1_000.0  # interest half-life in these tests, ms
E = np.eye(4, dtype=np.float32)  # item vectors: orthogonal unit vectors


def step(
    state: UserState,
    item_id: str,
    vec: np.ndarray,
    event_type: str,
    ts: int,
    weights: Mapping[str, float],
    *,
    value: float | None = None,
    title: str | None = None,
    **kw: object,
) -> UserState:
    return apply_event(
        state,
        item_id=item_id,
        item_title=title,
        item_vectors={"text": vec},
        event_type=event_type,
        ts=ts,
        value=value,
        weights=weights,
        half_life_ms=H,
        **kw,  # type: ignore[arg-type]
    )


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- the update maths -------------------------------------------------------------------------


def test_first_event_is_its_weighted_vector(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", E[0], "like", 5_000, weights)
    np.testing.assert_array_equal(s.interest["text"], 2.0 * E[0])
    assert s.interest["text"].dtype == np.float32
    assert (s.last_ts, s.n_events) == (5_000, 1)


def q_step(v: np.ndarray) -> float:
    """The int8 storage step of a vector: max |component| / 127."""
    return float(np.max(np.abs(v))) / 127


def test_one_half_life_halves_an_old_contribution(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", E[0], "like", 10_000, weights)
    s = step(s, "b", E[1], "like", 10_000 + int(H), weights)
    np.testing.assert_allclose(s.interest["text"], [1.0, 2.0, 0.0, 0.0], atol=q_step(2 * E[0]))
    s = step(s, "c", E[2], "click", 10_000 + 3 * int(H), weights)  # two more half-lives
    np.testing.assert_allclose(s.interest["text"], [0.25, 0.5, 1.0, 0.0], atol=2 / 127)


def test_interest_is_stored_as_int8_codes() -> None:
    v = np.array([0.5, -1.0, 0.25, 0.0], dtype=np.float32)
    q, scale = quantize(v)
    assert q.dtype == np.int8 and q.tolist() == [64, -127, 32, 0]
    assert scale == pytest.approx(1 / 127)
    assert quantize(np.zeros(3, np.float32))[1] == 0.0


def test_same_time_events_do_not_decay(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", E[0], "like", 10_000, weights)
    s = step(s, "b", E[1], "like", 10_000, weights)
    np.testing.assert_array_equal(s.interest["text"], [2.0, 2.0, 0.0, 0.0])


def test_out_of_order_event_does_not_decay_and_keeps_last_ts(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", E[0], "like", 10_000, weights)
    late = step(s, "b", E[1], "like", 10_000 - 5 * int(H), weights)
    np.testing.assert_array_equal(late.interest["text"], [2.0, 2.0, 0.0, 0.0])
    assert late.last_ts == 10_000
    # the next in-order event decays from the newest time, not from the late one
    nxt = step(late, "c", E[2], "click", 10_000 + int(H), weights)
    np.testing.assert_array_equal(nxt.interest["text"], [1.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize("event_type", ["skip", "dislike"])
def test_negative_events_push_away(event_type: str, weights: dict[str, float]) -> None:
    liked = step(UserState(), "a", E[0], "like", 0, weights)
    # an item sharing the liked direction: after a negative event it looks less like the user
    near = np.array([0.6, 0.8, 0.0, 0.0], dtype=np.float32)
    before = cos(liked.interest["text"], near)
    after = step(liked, "b", near, event_type, 0, weights)
    assert cos(after.interest["text"], near) < before
    want = 2.0 * E[0] + weights[event_type] * near
    np.testing.assert_allclose(after.interest["text"], want, atol=q_step(want))
    # a user who only rejected something is pointed away from it
    only = step(UserState(), "b", near, event_type, 0, weights)
    assert cos(only.interest["text"], near) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("event_type", "value", "expected"),
    [
        ("view", None, 0.5),
        ("view", 1.0, 0.75),  # watched to the end: 0.5 * 1.5
        ("view", 0.0, 0.25),  # abandoned at once: 0.5 * 0.5
        ("view", 7.0, 0.75),  # clamped to [0, 1]
        ("view", -3.0, 0.25),
        ("complete", 0.5, 2.0),
        ("click", 0.0, 1.0),  # value scales consumption events only
        ("like", 0.0, 2.0),
        ("purchase", None, 0.0),  # unknown types weigh nothing
    ],
)
def test_event_weight(
    event_type: str, value: float | None, expected: float, weights: dict[str, float]
) -> None:
    assert event_weight(event_type, value, weights) == pytest.approx(expected)


def test_value_scales_the_interest_update(weights: dict[str, float]) -> None:
    full = step(UserState(), "a", E[0], "view", 0, weights, value=1.0)
    brief = step(UserState(), "a", E[0], "view", 0, weights, value=0.0)
    np.testing.assert_allclose(full.interest["text"], 0.75 * E[0])
    np.testing.assert_allclose(brief.interest["text"], 0.25 * E[0])


def test_modalities_are_updated_independently(weights: dict[str, float]) -> None:
    s = apply_event(
        UserState(),
        item_id="a",
        item_title=None,
        item_vectors={"text": E[0]},
        event_type="like",
        ts=0,
        value=None,
        weights=weights,
        half_life_ms=H,
    )
    s = apply_event(
        s,
        item_id="b",
        item_title=None,
        item_vectors={"image": E[1, :3]},
        event_type="like",
        ts=int(H),
        value=None,
        weights=weights,
        half_life_ms=H,
    )
    np.testing.assert_array_equal(s.interest["text"], E[0])  # decayed, no new text
    np.testing.assert_array_equal(s.interest["image"], 2.0 * E[1, :3])


# -- bookkeeping ------------------------------------------------------------------------------


def test_seen_and_disliked(weights: dict[str, float]) -> None:
    s = UserState()
    for item, etype in [
        ("a", "view"),
        ("b", "like"),
        ("a", "like"),
        ("c", "dislike"),
        ("c", "dislike"),
        ("d", "skip"),
    ]:
        s = step(s, item, E[0], etype, 0, weights)
    assert s.seen == ["b", "a", "c", "d"]  # once each, latest interaction last
    assert s.disliked == ["c"]  # skip is not a dislike
    assert s.excluded() == {"a", "b", "c", "d"}
    assert s.n_events == 6
    assert [w for _, w in s.recent] == [2.0, 2.0, -2.0, -0.5]


def test_seen_is_bounded_and_old_items_stay_excluded_by_the_filter(
    weights: dict[str, float],
) -> None:
    s = UserState()
    for i in range(300):
        s = step(s, f"item-{i}", E[i % 4], "view", i, weights, recent_items=8)
    assert s.seen == [f"item-{i}" for i in range(292, 300)]  # exact: the latest 8
    assert s.excluded() == set(s.seen)
    assert all(s.has_seen(f"item-{i}") for i in range(300))  # older ones: the Bloom filter
    false_pos = sum(s.has_seen(f"other-{i}") for i in range(2000))
    assert false_pos < 20  # 300 items in 6144 bits, 4 hashes: ~0.1%
    back = UserState.from_bytes(s.to_bytes())
    assert back.seen_filter == s.seen_filter and back.has_seen("item-0")


def test_recent_positive(weights: dict[str, float]) -> None:
    s = UserState()
    for i in range(7):
        s = step(s, f"i{i}", E[0], "like", i, weights, title=f"Title {i}", recent_positive=3)
    assert s.recent_positive == [("i4", "Title 4"), ("i5", "Title 5"), ("i6", "Title 6")]
    s = step(s, "i4", E[0], "click", 10, weights, title="Title 4", recent_positive=3)
    assert [i for i, _ in s.recent_positive] == ["i5", "i6", "i4"]  # re-liked moves last
    s = step(s, "x", E[0], "skip", 11, weights, title="X", recent_positive=3)
    assert [i for i, _ in s.recent_positive] == ["i5", "i6", "i4"]  # negatives never added
    s = step(s, "t", E[0], "like", 12, weights, title=None, recent_positive=3)
    assert s.recent_positive[-1] == ("t", "t")  # no title: the id stands in


@pytest.mark.parametrize("event_type", ["dislike", "skip"])
def test_rejected_item_is_no_longer_a_reason(event_type: str, weights: dict[str, float]) -> None:
    # liked, then rejected: "because you liked <it>" would now be wrong
    s = step(UserState(), "a", E[0], "like", 0, weights, title="A")
    s = step(s, "b", E[1], "like", 1, weights, title="B")
    s = step(s, "a", E[0], event_type, 2, weights, title="A")
    assert s.recent_positive == [("b", "B")]


def test_recent_event_ids_window(weights: dict[str, float]) -> None:
    s = UserState()
    for i in range(5):
        s = step(s, "a", E[0], "view", i, weights, event_id=f"e{i}", dedupe_window=3)
    assert s.recent_event_ids == [event_hash(e) for e in ["e2", "e3", "e4"]]
    assert all(len(h) == 16 for h in s.recent_event_ids)  # 8-byte hashes, not the ids
    s = step(s, "a", E[0], "view", 9, weights, event_id=None, dedupe_window=3)
    assert s.recent_event_ids == [event_hash(e) for e in ["e2", "e3", "e4"]]
    assert s.is_duplicate(None, None, "e4") and not s.is_duplicate(None, None, "e1")
    off = step(UserState(), "a", E[0], "view", 0, weights, event_id="e0", dedupe_window=0)
    assert off.recent_event_ids == []


def test_offsets_are_tracked_per_partition(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", E[0], "view", 0, weights, partition=0, offset=10)
    s = step(s, "a", E[0], "view", 1, weights, partition=1, offset=3)
    s = step(s, "a", E[0], "view", 2, weights, partition=0, offset=7)  # never goes backwards
    assert s.offsets == {0: 10, 1: 3}


def test_is_duplicate(weights: dict[str, float]) -> None:
    s = step(UserState(), "a", E[0], "view", 0, weights, partition=2, offset=100, event_id="e1")
    assert s.is_duplicate(2, 100, None)  # redelivered after a crash
    assert s.is_duplicate(2, 99, None)
    assert not s.is_duplicate(2, 101, None)
    assert not s.is_duplicate(3, 5, None)  # another partition
    assert s.is_duplicate(None, None, "e1")  # producer retry, new offset
    assert s.is_duplicate(2, 500, "e1")
    assert not s.is_duplicate(None, None, "e2")
    assert not s.is_duplicate(None, 5, None)
    assert not UserState().is_duplicate(0, 0, "e1")


# -- purity, serialisation, replay ------------------------------------------------------------


def test_input_state_is_not_mutated(weights: dict[str, float]) -> None:
    s = step(
        UserState(), "a", E[0], "like", 0, weights, title="A", partition=0, offset=1, event_id="e1"
    )
    before = copy.deepcopy(s)
    vec_before = s.interest["text"].copy()
    new = step(s, "b", E[1], "dislike", int(H), weights, partition=0, offset=2, event_id="e2")
    step(new, "a", E[0], "skip", int(H), weights)
    assert s.seen == before.seen and s.disliked == before.disliked
    assert s.recent_positive == before.recent_positive
    assert s.recent_event_ids == before.recent_event_ids and s.offsets == before.offsets
    assert (s.last_ts, s.n_events) == (before.last_ts, before.n_events)
    np.testing.assert_array_equal(s.interest["text"], vec_before)
    assert new.interest["text"] is not s.interest["text"]


def random_events(seed: int, n: int, dim: int = 384) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    types = ["view", "click", "like", "share", "complete", "skip", "dislike"]
    out = []
    ts = 1_700_000_000_000
    for i in range(n):
        ts += int(rng.integers(-500, 5_000))  # some arrive out of order
        v = rng.standard_normal(dim).astype(np.float32)
        out.append(
            {
                "item_id": f"item-{int(rng.integers(0, 50))}",
                "item_title": f"Item {i}",
                "item_vectors": {"text": v / np.linalg.norm(v)},
                "event_type": types[int(rng.integers(0, len(types)))],
                "ts": ts,
                "value": float(rng.random()) if rng.random() < 0.5 else None,
                "partition": 0,
                "offset": i,
                "event_id": f"e{i}",
            }
        )
    return out


def replay(
    events: list[dict[str, object]], weights: Mapping[str, float], through_bytes: bool = False
) -> UserState:
    s = UserState()
    for e in events:
        s = apply_event(s, weights=weights, half_life_ms=3_600_000.0, **e)  # type: ignore[arg-type]
        if through_bytes:  # as after a restart: state restored from the changelog
            s = UserState.from_bytes(s.to_bytes())
    return s


def test_round_trip_is_exact(weights: dict[str, float]) -> None:
    s = replay(random_events(1, 40), weights)
    back = UserState.from_bytes(s.to_bytes())
    assert back.interest.keys() == s.interest.keys()
    assert np.array_equal(back.interest["text"], s.interest["text"])
    assert back.interest["text"].dtype == np.float32
    assert back.interest["text"].flags.writeable
    assert (back.last_ts, back.n_events) == (s.last_ts, s.n_events)
    assert back.seen == s.seen and back.disliked == s.disliked
    assert back.recent_positive == s.recent_positive
    assert all(isinstance(p, tuple) for p in back.recent_positive)
    assert back.recent_event_ids == s.recent_event_ids
    assert back.offsets == s.offsets and all(isinstance(p, int) for p in back.offsets)
    assert back.to_bytes() == s.to_bytes()
    empty = UserState.from_bytes(UserState().to_bytes())
    assert empty.interest == {} and empty.n_events == 0


def test_dict_form_round_trip(weights: dict[str, float]) -> None:
    # the Faust table keeps the dict form; the changelog holds it as JSON
    s = replay(random_events(3, 20), weights)
    d = s.to_dict()
    for back in (UserState.from_dict(d), UserState.from_dict(orjson.loads(orjson.dumps(d)))):
        assert back.to_bytes() == s.to_bytes()
        assert np.array_equal(back.interest["text"], s.interest["text"])
    assert orjson.loads(s.to_bytes()) == orjson.loads(orjson.dumps(d))


def test_unknown_state_version_is_refused() -> None:
    raw = UserState().to_bytes().replace(b'"v":2', b'"v":99')
    with pytest.raises(ValueError, match="unsupported user state version 99"):
        UserState.from_bytes(raw)


def test_serialized_size_is_bounded(weights: dict[str, float]) -> None:
    # A heavy user: 1,000 events with ids of 36 chars (uuids), a long title per like.
    rng = np.random.default_rng(0)
    s = UserState()
    for n in range(1_000):
        v = rng.standard_normal(384).astype(np.float32)
        s = apply_event(
            s,
            item_id=f"{n:08d}-0000-4000-8000-{n:012d}",
            item_title=f"A fairly long title of the item number {n}, with a subtitle",
            item_vectors={"text": v / np.linalg.norm(v)},
            event_type="like",
            ts=1_700_000_000_000 + n * 60_000,
            value=None,
            weights=weights,
            half_life_ms=72 * 3_600_000,
            partition=n % 3,
            offset=n,
            event_id=f"{n:032x}",
            user_weights=[0.01234, -0.05, 0.1, 0.0, 0.2],
        )
    size = len(s.to_bytes())
    assert size <= 4096, size
    light = step(UserState(), "a", E[0], "like", 0, weights, event_id="e1")
    assert len(light.to_bytes()) < 400


def test_replay_is_bit_identical(weights: dict[str, float]) -> None:
    events = random_events(7, 60)
    a = replay(events, weights)
    b = replay(events, weights)
    c = replay(events, weights, through_bytes=True)
    assert a.to_bytes() == b.to_bytes() == c.to_bytes()
    assert np.array_equal(a.interest["text"], c.interest["text"])


def test_two_taste_groups_separate(weights: dict[str, float]) -> None:
    rng = np.random.default_rng(42)
    dim = 32
    centers = {c: rng.standard_normal(dim) for c in "AB"}
    for c in centers:
        centers[c] /= np.linalg.norm(centers[c])

    def item(c: str) -> np.ndarray:
        v = centers[c] + 0.5 * rng.standard_normal(dim) / np.sqrt(dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    catalog = {f"{c}{i}": item(c) for c in "AB" for i in range(10)}
    users: dict[str, UserState] = {}
    for taste, other in (("A", "B"), ("B", "A")):
        s = UserState()
        ts = 0
        for i in range(10):
            ts += 60_000
            s = step(s, f"{taste}{i}", catalog[f"{taste}{i}"], "like", ts, weights)
            if i % 3 == 0:  # also glances at, and skips, the other group
                s = step(s, f"{other}{i}", catalog[f"{other}{i}"], "skip", ts, weights)
        users[taste] = s
    for taste, other in (("A", "B"), ("B", "A")):
        v = users[taste].interest["text"]
        assert cos(v, centers[taste]) > 0.8
        assert cos(v, centers[taste]) > cos(v, centers[other]) + 0.5
        own = np.mean([cos(v, catalog[f"{taste}{i}"]) for i in range(10)])
        theirs = np.mean([cos(v, catalog[f"{other}{i}"]) for i in range(10)])
        assert own > theirs
