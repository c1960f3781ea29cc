"""Wire schemas (streams/schemas.py): strict parsing, readable rejections, round trips."""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recstream.streams import schemas
from recstream.streams.schemas import (
    EVENT_TYPES,
    MAX_ID_CHARS,
    MAX_TS_MS,
    SCHEMA_VERSION,
    BadInput,
    UserEvent,
    dead_letter,
    dumps,
    parse_content,
    parse_event,
    parse_request,
    recommendation,
)

EVENT = {"user_id": "u1", "item_id": "i1", "type": "like", "ts": 1_700_000_000_000}


def raw(obj: Any) -> bytes:
    return orjson.dumps(obj)


_DROP = object()  # event(field=_DROP) leaves the field out


def event(**changes: Any) -> bytes:
    e = {**EVENT, **changes}
    return raw({k: v for k, v in e.items() if v is not _DROP})


def event_with_literal(field: str, literal: bytes) -> bytes:
    """An event whose ``field`` is written as raw JSON text (for what orjson cannot dump)."""
    return event(**{field: _DROP})[:-1] + b',"' + field.encode() + b'":' + literal + b"}"


def rejected(parse: Any, payload: bytes | None, **kw: Any) -> str:
    with pytest.raises(BadInput) as info:
        parse(payload, **kw)
    return str(info.value)


# -- valid input ------------------------------------------------------------------------------


def test_content_parses_with_all_fields_and_keeps_extras() -> None:
    item = parse_content(
        raw(
            {
                "item_id": "a",
                "title": "Pasta",
                "description": "Fresh pasta at home",
                "tags": ["cooking", "italian"],
                "image_uri": "s3://b/a.jpg",
                "published_at": 1_700_000_000_000,
                "attributes": {"lang": "en", "minutes": 12},
                "deleted": False,
                "source": "cms",  # unknown to v1: kept, not rejected
            }
        )
    )
    assert item.item_id == "a"
    assert item.tags == ["cooking", "italian"]
    assert item.published_at == 1_700_000_000_000
    assert item.attributes == {"lang": "en", "minutes": 12}
    assert item.model_extra == {"source": "cms"}
    assert item.has_text()


def test_content_minimal_defaults() -> None:
    item = parse_content(b'{"item_id": "a"}')
    assert (item.title, item.tags, item.published_at, item.deleted) == (None, None, None, False)
    assert not item.has_text()
    assert parse_content(b'{"item_id": "a", "deleted": true}').deleted is True


def test_event_parses_and_keeps_extras() -> None:
    e = parse_event(event(event_id="e1", value=0.25, session="s9"))
    assert (e.user_id, e.item_id, e.type, e.ts) == ("u1", "i1", "like", 1_700_000_000_000)
    assert (e.event_id, e.value) == ("e1", 0.25)
    assert e.model_extra == {"session": "s9"}


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_type_is_accepted(event_type: str) -> None:
    assert parse_event(event(type=event_type)).type == event_type


def test_whole_float_timestamps_are_accepted_as_int() -> None:
    e = parse_event(b'{"user_id":"u","item_id":"i","type":"view","ts":1.7e12}')
    assert e.ts == 1_700_000_000_000 and type(e.ts) is int
    assert parse_event(event(ts=5.0)).ts == 5
    assert parse_content(b'{"item_id":"a","published_at":1.7e12}').published_at == 1.7e12
    req = parse_request(b'{"user_id":"u","k":5.0,"ts":1.0e3}')
    assert (req.k, req.ts) == (5, 1000)


def test_int_value_is_accepted_as_float() -> None:
    e = parse_event(event(value=1))
    assert e.value == 1.0 and isinstance(e.value, float)


def test_request_parses() -> None:
    req = parse_request(b'{"user_id":"u","request_id":"r1","k":3,"ts":10,"client":"web"}')
    assert (req.user_id, req.request_id, req.k, req.ts) == ("u", "r1", 3, 10)
    assert req.model_extra == {"client": "web"}
    assert parse_request(b'{"user_id":"u"}').k is None


def test_parsed_models_are_frozen() -> None:
    e = parse_event(event())
    with pytest.raises(ValueError):
        e.ts = 1  # type: ignore[misc]


# -- rejections: every one a BadInput whose message says what is wrong --------------------


def test_malformed_json() -> None:
    msg = rejected(parse_event, b'{"user_id": "u",')
    assert msg.startswith("invalid user event: the value is not valid JSON")


@pytest.mark.parametrize(
    ("payload", "kind"),
    [(b"[1, 2]", "list"), (b'"hello"', "str"), (b"42", "int"), (b"1.5", "float")],
)
def test_non_object(payload: bytes, kind: str) -> None:
    msg = rejected(parse_event, payload)
    assert msg == f"invalid user event: expected a JSON object, got {kind}"
    assert "expected a JSON object" in rejected(parse_content, payload)
    assert "expected a JSON object" in rejected(parse_request, payload)


@pytest.mark.parametrize("field", ["user_id", "item_id", "type", "ts"])
def test_missing_required_event_field(field: str) -> None:
    msg = rejected(parse_event, event(**{field: _DROP}))
    assert msg == f"invalid user event: required field '{field}' is missing"


def test_missing_required_content_and_request_fields() -> None:
    assert "required field 'item_id' is missing" in rejected(parse_content, b'{"title": "x"}')
    assert "required field 'user_id' is missing" in rejected(parse_request, b'{"k": 3}')


def test_several_problems_are_all_named() -> None:
    msg = rejected(parse_event, b"{}")
    for field in ("user_id", "item_id", "type"):
        assert f"'{field}'" in msg
    assert "(and 1 more problems)" in msg  # four problems, the first three spelled out


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (event(ts="1700000000000"), "ts"),
        (event(ts=True), "ts"),  # bool is not an int on the wire
        (event(ts=1.5), "ts"),
        (event(item_id=42), "item_id"),
        (event(user_id=None), "user_id"),
        (event(value="0.5"), "value"),
        (event(value=True), "value"),
        (event(event_id=7), "event_id"),
    ],
)
def test_mistyped_event_field(payload: bytes, field: str) -> None:
    msg = rejected(parse_event, payload)
    assert msg.startswith(f"invalid user event: field '{field}': ")


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"item_id": "a", "tags": "cooking"}, "tags"),
        ({"item_id": "a", "tags": ["ok", 3]}, "tags.1"),
        ({"item_id": "a", "deleted": 1}, "deleted"),
        ({"item_id": "a", "deleted": "true"}, "deleted"),
        ({"item_id": "a", "title": 5}, "title"),
        ({"item_id": "a", "published_at": "2024-01-01"}, "published_at"),
        ({"item_id": "a", "attributes": [1]}, "attributes"),
    ],
)
def test_mistyped_content_field(obj: dict[str, Any], field: str) -> None:
    msg = rejected(parse_content, raw(obj))
    assert msg.startswith(f"invalid content item: field '{field}': ")


def test_out_of_range_values() -> None:
    assert "greater than or equal to 0" in rejected(parse_event, event(ts=-1))
    assert "'item_id'" in rejected(parse_event, event(item_id=""))
    assert "'user_id'" in rejected(parse_event, event(user_id="u" * (MAX_ID_CHARS + 1)))
    assert "'k'" in rejected(parse_request, b'{"user_id":"u","k":0}')


@pytest.mark.parametrize("literal", [b"%d" % (MAX_TS_MS + 1), b"%d" % 2**64, b"1e29"])
def test_absurd_timestamps_are_rejected_not_crashing_later(literal: bytes) -> None:
    # orjson reads 1e29 (and integer literals past 64 bits) as whole floats; accepted, they
    # would overflow orjson/Qdrant ints when state or activity is written.
    assert "field 'ts'" in rejected(parse_event, event_with_literal("ts", literal))
    assert parse_event(event(ts=MAX_TS_MS)).ts == MAX_TS_MS
    big = b'{"item_id":"a","published_at":1e29}'
    assert "field 'published_at'" in rejected(parse_content, big)


def test_unknown_event_type_lists_the_allowed_ones() -> None:
    msg = rejected(parse_event, event(type="purchase"))
    assert msg == (
        "invalid user event: field 'type' is 'purchase'; "
        "allowed: view, click, like, share, complete, skip, dislike"
    )


def test_over_size_value_gives_both_sizes() -> None:
    payload = event(title="x" * 2000)
    msg = rejected(parse_event, payload, max_bytes=1000)
    assert msg == (
        f"invalid user event: the value is {len(payload):,} bytes, over the 1,000-byte limit"
    )
    # the size check comes first: even garbage over the limit is reported by its size
    assert "over the 10-byte limit" in rejected(parse_content, b"not json at all", max_bytes=10)


def test_none_value_is_a_tombstone() -> None:
    for parse in (parse_event, parse_content, parse_request):
        assert "has no value (null/tombstone)" in rejected(parse, None)


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"NaN", b"Infinity"])
def test_non_finite_value_is_rejected(literal: bytes) -> None:
    msg = rejected(parse_event, event_with_literal("value", literal))
    assert msg.startswith("invalid user event: ")


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_value_guard(bad: float, monkeypatch: pytest.MonkeyPatch) -> None:
    # orjson already refuses these; parse_event's own check is the guard should the decoder
    # ever let one through (the model alone would accept inf).
    monkeypatch.setattr(schemas, "_load_object", lambda *_: {**EVENT, "value": bad})
    msg = rejected(parse_event, b"{}")
    assert msg == "invalid user event: field 'value' must be a finite number"


# -- round trips (hypothesis) -----------------------------------------------------------------

ids = st.text(min_size=1, max_size=MAX_ID_CHARS)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
extras = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(
        lambda k: k not in UserEvent.model_fields and k not in {"published_at", "k"}
    ),
    json_scalars | st.lists(json_scalars, max_size=3),
    max_size=3,
)


@st.composite
def event_dicts(draw: st.DrawFn) -> dict[str, Any]:
    d: dict[str, Any] = {
        "user_id": draw(ids),
        "item_id": draw(ids),
        "type": draw(st.sampled_from(EVENT_TYPES)),
        "ts": draw(st.integers(0, MAX_TS_MS)),
    }
    if draw(st.booleans()):
        d["event_id"] = draw(st.text(max_size=MAX_ID_CHARS))
    if draw(st.booleans()):
        d["value"] = draw(
            st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
        )
    return {**draw(extras), **d}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_dicts())
def test_event_round_trip(d: dict[str, Any]) -> None:
    e = parse_event(orjson.dumps(d))
    for field in ("user_id", "item_id", "type", "ts"):
        assert getattr(e, field) == d[field]
    assert e.event_id == d.get("event_id")
    assert e.value == d.get("value")
    assert e.model_extra == {k: v for k, v in d.items() if k not in UserEvent.model_fields}
    # what a producer re-serialises from the model parses to the same model
    assert parse_event(orjson.dumps(e.model_dump())) == e


@settings(max_examples=100, deadline=None)
@given(
    item_id=ids,
    title=st.none() | st.text(max_size=50),
    tags=st.none() | st.lists(st.text(max_size=10), max_size=4),
    published_at=st.none() | st.integers(0, MAX_TS_MS),
    deleted=st.booleans(),
)
def test_content_round_trip(
    item_id: str,
    title: str | None,
    tags: list[str] | None,
    published_at: int | None,
    deleted: bool,
) -> None:
    d = {
        "item_id": item_id,
        "title": title,
        "tags": tags,
        "published_at": published_at,
        "deleted": deleted,
    }
    item = parse_content(orjson.dumps(d))
    assert item.model_dump(include=set(d)) == d


# -- output builders --------------------------------------------------------------------------


def test_recommendation_builder() -> None:
    items = [{"item_id": "a", "score": 0.5, "reason": "trending now"}]
    out = recommendation(
        user_id="u", items=items, trigger="e1", source_ts=10, generated_at=20, model_version="m1"
    )
    assert out == {
        "schema_version": SCHEMA_VERSION,
        "user_id": "u",
        "items": items,
        "trigger": "e1",
        "source_ts": 10,
        "generated_at": 20,
        "model_version": "m1",
    }
    assert "request_id" not in out  # only answers to a request carry one
    with_req = recommendation(
        user_id="u",
        items=[],
        trigger=None,
        source_ts=None,
        generated_at=1,
        model_version="m",
        request_id="r1",
    )
    assert with_req["request_id"] == "r1"
    assert orjson.loads(dumps(with_req)) == with_req


@settings(max_examples=50, deadline=None)
@given(payload=st.none() | st.binary(max_size=300), key=st.none() | st.binary(max_size=40))
def test_dead_letter_builder_keeps_original_bytes(payload: bytes | None, key: bytes | None) -> None:
    out = dead_letter(
        source_topic="user-events",
        partition=3,
        offset=42,
        error="invalid user event: x",
        payload=payload,
        key=key,
        ts=99,
    )
    assert {
        "schema_version",
        "source_topic",
        "partition",
        "offset",
        "error",
        "payload",
        "key",
        "ts",
    } <= out.keys()
    assert (out["source_topic"], out["partition"], out["offset"], out["ts"]) == (
        "user-events",
        3,
        42,
        99,
    )
    wire = orjson.loads(dumps(out))
    decoded = None if wire["payload"] is None else base64.b64decode(wire["payload"])
    assert decoded == payload
    assert (None if wire["key"] is None else base64.b64decode(wire["key"])) == key


# -- dead letters always fit under the broker's limit -------------------------------------------

DL_BOUND = schemas.DEAD_LETTER_MAX_BYTES


def garbage(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def dead(
    payload: bytes | None, error: str = "invalid user event: x", key: bytes | None = b"u"
) -> dict[str, Any]:
    return dead_letter(
        source_topic="t.user-events",
        partition=2,
        offset=7,
        error=error,
        payload=payload,
        key=key,
        ts=99,
    )


def assert_cut_payload(out: dict[str, Any], original: bytes) -> bytes:
    wire = dumps(out)
    assert len(wire) <= DL_BOUND
    back = orjson.loads(wire)
    assert back["payload_truncated"] is True
    assert back["payload_size"] == len(original)
    assert back["payload_sha256"] == hashlib.sha256(original).hexdigest()
    kept = base64.b64decode(back["payload"])
    assert original.startswith(kept)
    assert len(kept) < len(original)
    return kept


@pytest.mark.parametrize("size", [1_000_000, 1_048_576, 5 * 1_048_576])
def test_dead_letter_of_a_huge_payload_is_cut_to_the_bound(size: int) -> None:
    original = garbage(size)
    out = dead(original)
    kept = assert_cut_payload(out, original)
    # most of the room goes to the payload (base64: 3 bytes in 4 characters)
    assert len(kept) > 0.74 * DL_BOUND
    assert (out["source_topic"], out["partition"], out["offset"], out["ts"]) == (
        "t.user-events",
        2,
        7,
        99,
    )
    assert out["error"] == "invalid user event: x" and "error_truncated" not in out
    assert base64.b64decode(out["key"]) == b"u" and "key_truncated" not in out


def test_dead_letter_of_a_huge_error_is_cut_to_the_bound() -> None:
    # control characters serialise as 6-byte \u escapes: the bound is on the bytes written
    error = "invalid user event: field 'type' is '" + "\x00é" * 1_500_000
    for payload in (None, b"{}", garbage(1_048_576)):
        out = dead(payload, error=error)
        wire = dumps(out)
        assert len(wire) <= DL_BOUND
        back = orjson.loads(wire)
        assert back["error_truncated"] is True
        head, _, tail = back["error"].partition("... ")
        assert error.startswith(head) and len(head) == schemas.DEAD_LETTER_MAX_ERROR_CHARS
        assert f"{len(error):,} characters" in tail
        if payload is not None and len(payload) < 1000:
            assert base64.b64decode(back["payload"]) == payload
            assert "payload_truncated" not in back


def test_dead_letter_key_is_bounded_in_the_record_and_as_the_kafka_key() -> None:
    key = garbage(300_000)
    out = dead(garbage(900_000), key=key, error="\x01" * schemas.DEAD_LETTER_MAX_ERROR_CHARS)
    assert len(dumps(out)) <= DL_BOUND  # the longest error kept, all escaped, and a cut key
    assert "error_truncated" not in out  # at the limit, not over it
    kept = base64.b64decode(out["key"])
    assert kept == schemas.dead_letter_key(key) == key[: schemas.DEAD_LETTER_MAX_KEY_BYTES]
    assert out["key_truncated"] is True and out["key_size"] == len(key)
    assert out["key_sha256"] == hashlib.sha256(key).hexdigest()
    assert_cut_payload(out, garbage(900_000))
    assert schemas.dead_letter_key(b"user-1") == b"user-1"
    assert schemas.dead_letter_key(None) is None


@settings(max_examples=40, deadline=None)
@given(size=st.integers(DL_BOUND * 3 // 4 - 400, DL_BOUND * 3 // 4 + 100))
def test_dead_letter_near_the_bound_is_exact_or_cut_never_over(size: int) -> None:
    original = garbage(size)
    out = dead(original)
    wire = dumps(out)
    assert len(wire) <= DL_BOUND
    if "payload_truncated" in out:
        assert_cut_payload(out, original)
        # cut only when the whole payload would not have fitted
        whole = {k: v for k, v in out.items() if not k.startswith("payload_")}
        whole["payload"] = base64.b64encode(original).decode()
        assert len(dumps(whole)) > DL_BOUND
    else:
        assert base64.b64decode(orjson.loads(wire)["payload"]) == original


def test_small_dead_letters_carry_no_truncation_fields() -> None:
    for payload in (None, b"", b"\xff\xfe", garbage(100_000)):
        out = dead(payload, key=garbage(schemas.DEAD_LETTER_MAX_KEY_BYTES))
        assert not [f for f in out if f.endswith(("_truncated", "_size", "_sha256"))]
        assert (None if payload is None else base64.b64decode(out["payload"])) == payload


def test_dead_letter_error_with_lone_surrogates_still_serialises() -> None:
    out = dead(b"x", error="cannot read file '\udcff'")
    assert orjson.loads(dumps(out))["error"] == "cannot read file '?'"


def test_rejections_quote_huge_values_short() -> None:
    for value in ("t" * 1_000_000, ["view"] * 100_000, {"a": "b" * 1_000_000}):
        msg = rejected(parse_event, raw({**EVENT, "type": value}))
        assert len(msg) < 300, msg[:400]
        assert msg.startswith("invalid user event: field 'type' is ")
        assert "characters" in msg and msg.endswith("allowed: " + ", ".join(EVENT_TYPES))
    assert "'tttt" in rejected(parse_event, raw({**EVENT, "type": "t" * 1_000_000}))
    msg = rejected(parse_event, raw({**EVENT, "type": "t" * 1_000_000}))
    assert "(1,000,000 characters)" in msg
    # other rejections of huge values name the field and the rule, not the value
    for obj, parse in [
        ({**EVENT, "user_id": "u" * 1_000_000}, parse_event),
        ({**EVENT, "ts": "9" * 1_000_000}, parse_event),
        ({"item_id": "i", "tags": "x" * 1_000_000}, parse_content),
        ({"user_id": "u", "k": "9" * 1_000_000}, parse_request),
    ]:
        assert len(rejected(parse, raw(obj))) < 200
