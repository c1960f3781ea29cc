"""Wire formats of every topic (version 1). Apps depend on these: change them only compatibly.

Inputs are parsed strictly (``parse_*`` raise :class:`BadInput` with a sentence a person
understands); unknown extra fields are kept and ignored, so producers may add fields.
Outputs are built as plain dicts and serialised with orjson.
"""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

SCHEMA_VERSION = 1
EVENT_TYPES = ("view", "click", "like", "share", "complete", "skip", "dislike")
EventType = Literal["view", "click", "like", "share", "complete", "skip", "dislike"]

MAX_ID_CHARS = 256
# Largest epoch-ms accepted: exact as a JSON double and within the 64-bit ints that orjson and
# Qdrant store. orjson reads 1e29 as a whole float; unbounded, it would pass here and crash the
# worker later, when the user state or the item activity is serialised.
MAX_TS_MS = 2**53 - 1

# A dead-letter record, serialised, is at most this many bytes. A record the producer refuses
# (over Faust's producer_max_request_size, 1,000,000 bytes) or the broker refuses (over
# message.max.bytes, 1 MiB by default) would crash the worker on the message it is about, at
# every restart: one bad message would stop the partition for good. The original payload in
# base64 is a third larger than itself, so an input near the limit cannot be copied whole; half
# the limit leaves room for the record's key and framing and for a broker limit set lower.
DEAD_LETTER_MAX_BYTES = 512 * 1024
# Within that: the error sentence (characters) and the key (bytes; it is also the record's
# Kafka key) are cut to these, so the payload always keeps most of the room.
DEAD_LETTER_MAX_ERROR_CHARS = 4096
DEAD_LETTER_MAX_KEY_BYTES = 4096
# Longest quote of an input value in a rejection sentence: enough to recognise it.
QUOTE_CHARS = 64


class BadInput(ValueError):
    """A message that can never be processed: it goes to the dead-letter topic."""


Id = StrictStr


class _Wire(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class ContentItem(_Wire):
    """Value on the ``content`` topic (key: item_id)."""

    item_id: Id = Field(min_length=1, max_length=MAX_ID_CHARS)
    title: StrictStr | None = None
    description: StrictStr | None = None
    tags: list[StrictStr] | None = None
    image_uri: StrictStr | None = None
    video_uri: StrictStr | None = None
    audio_uri: StrictStr | None = None
    published_at: int | None = Field(default=None, ge=0, le=MAX_TS_MS)
    attributes: dict[str, Any] | None = None
    deleted: StrictBool = False

    def has_text(self) -> bool:
        return bool(self.title or self.description or self.tags)


class UserEvent(_Wire):
    """Value on the ``user-events`` topic (key: user_id)."""

    user_id: Id = Field(min_length=1, max_length=MAX_ID_CHARS)
    item_id: Id = Field(min_length=1, max_length=MAX_ID_CHARS)
    type: EventType
    ts: int = Field(ge=0, le=MAX_TS_MS)
    event_id: StrictStr | None = Field(default=None, max_length=MAX_ID_CHARS)
    value: float | None = None


class RecommendationRequest(_Wire):
    """Value on the ``recommendation-requests`` topic (key: user_id)."""

    user_id: Id = Field(min_length=1, max_length=MAX_ID_CHARS)
    request_id: StrictStr | None = Field(default=None, max_length=MAX_ID_CHARS)
    k: int | None = Field(default=None, ge=1)
    ts: int | None = Field(default=None, ge=0, le=MAX_TS_MS)


def clip(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters in all)"


def _quote(value: Any) -> str:
    """``value`` as a Python literal; a long string by its start and length."""
    if isinstance(value, str) and len(value) > QUOTE_CHARS:
        return f"{value[:QUOTE_CHARS]!r}... ({len(value):,} characters)"
    return clip(repr(value), QUOTE_CHARS)


def _describe(exc: ValidationError, what: str) -> str:
    # Inputs are quoted short: a value can be up to max_message_bytes long, and the sentence
    # goes to the log and the dead-letter topic.
    parts = []
    for err in exc.errors()[:3]:
        loc = clip(".".join(str(p) for p in err["loc"]) or "(value)", QUOTE_CHARS)
        msg = clip(err["msg"], 4 * QUOTE_CHARS)
        if err["type"] == "missing":
            parts.append(f"required field '{loc}' is missing")
        elif err["type"] == "literal_error":
            allowed = ", ".join(EVENT_TYPES)
            parts.append(f"field '{loc}' is {_quote(err.get('input'))}; allowed: {allowed}")
        else:
            parts.append(f"field '{loc}': {msg[0].lower()}{msg[1:]}")
    more = f" (and {exc.error_count() - 3} more problems)" if exc.error_count() > 3 else ""
    return f"invalid {what}: " + "; ".join(parts) + more


def _load_object(raw: bytes | None, what: str, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise BadInput(f"invalid {what}: the message has no value (null/tombstone)")
    if len(raw) > max_bytes:
        raise BadInput(
            f"invalid {what}: the value is {len(raw):,} bytes, over the {max_bytes:,}-byte limit"
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"invalid {what}: the value is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise BadInput(f"invalid {what}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _parse(model: type[_Wire], raw: bytes | None, what: str, max_bytes: int) -> Any:
    obj = _load_object(raw, what, max_bytes)
    # JSON numbers like 1.7e12 or 5.0 are fine for integer fields when whole.
    for field in ("ts", "published_at", "k"):
        v = obj.get(field)
        if isinstance(v, float) and v.is_integer():
            obj[field] = int(v)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise BadInput(_describe(exc, what)) from None


def parse_content(raw: bytes | None, max_bytes: int = 1_048_576) -> ContentItem:
    return _parse(ContentItem, raw, "content item", max_bytes)


def parse_event(raw: bytes | None, max_bytes: int = 1_048_576) -> UserEvent:
    event: UserEvent = _parse(UserEvent, raw, "user event", max_bytes)
    if event.value is not None and not math.isfinite(event.value):
        raise BadInput("invalid user event: field 'value' must be a finite number")
    return event


def parse_request(raw: bytes | None, max_bytes: int = 1_048_576) -> RecommendationRequest:
    return _parse(RecommendationRequest, raw, "recommendation request", max_bytes)


def recommendation(
    *,
    user_id: str,
    items: list[dict[str, Any]],
    trigger: str | None,
    source_ts: int | None,
    generated_at: int,
    model_version: str,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Value on the ``recommendations`` topic (key: user_id)."""
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "user_id": user_id,
        "items": items,
        "trigger": trigger,
        "source_ts": source_ts,
        "generated_at": generated_at,
        "model_version": model_version,
    }
    if request_id is not None:
        out["request_id"] = request_id
    return out


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _cut(name: str, raw: bytes) -> dict[str, Any]:
    """What a dead letter says of a key or payload it holds only the first bytes of."""
    return {
        f"{name}_truncated": True,
        f"{name}_size": len(raw),
        f"{name}_sha256": hashlib.sha256(raw).hexdigest(),
    }


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The Kafka key of a dead letter: the original key, cut as in its ``key`` field."""
    return None if key is None else key[:DEAD_LETTER_MAX_KEY_BYTES]


def dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    error: str,
    payload: bytes | None,
    key: bytes | None,
    ts: int,
    part: str | None = None,
) -> dict[str, Any]:
    """Value on the ``dead-letters`` topic (key: the original key, :func:`dead_letter_key`).

    ``part`` names the failed field of a message that was otherwise processed (e.g.
    ``image_uri`` of a content item indexed by its other modalities); None when the whole
    message was rejected.

    Serialised with :func:`dumps`, the record is at most DEAD_LETTER_MAX_BYTES, whatever the
    input: an error over DEAD_LETTER_MAX_ERROR_CHARS keeps its start and adds
    ``error_truncated: true``; a key over DEAD_LETTER_MAX_KEY_BYTES, and a payload that does not
    fit in the room left, keep their first bytes and add ``<key|payload>_truncated: true``,
    ``<key|payload>_size`` (the original's bytes) and ``<key|payload>_sha256`` (hex digest of
    the original). These fields are present only when something was cut: a record without
    them holds the original error, key and payload exactly."""
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "error": error,
        "payload": None,
        "key": None if key is None else _b64(key[:DEAD_LETTER_MAX_KEY_BYTES]),
        "ts": ts,
        "part": part,
    }
    if len(error) > DEAD_LETTER_MAX_ERROR_CHARS:
        out["error"] = clip(error, DEAD_LETTER_MAX_ERROR_CHARS)
        out["error_truncated"] = True
    # orjson refuses lone surrogates (an exception text can hold them): they become "?".
    out["error"] = out["error"].encode("utf-8", "replace").decode("utf-8")
    if key is not None and len(key) > DEAD_LETTER_MAX_KEY_BYTES:
        out.update(_cut("key", key))
    if payload is None:
        return out
    out["payload"] = ""
    b64_len = 4 * ((len(payload) + 2) // 3)
    if len(dumps(out)) + b64_len > DEAD_LETTER_MAX_BYTES:
        out.update(_cut("payload", payload))
        room = max(DEAD_LETTER_MAX_BYTES - len(dumps(out)), 0)
        payload = payload[: room // 4 * 3]  # whole base64 quads: no padding inside the room
    out["payload"] = _b64(payload)
    return out


def indexed(
    *,
    item_id: str,
    modalities: list[str],
    failed: list[str],
    deleted: bool,
    indexed_at: int,
    published_at: int | None = None,
) -> dict[str, Any]:
    """Value on the ``content-indexed`` topic (key: the content message's key): the item is
    stored and searchable with these named vectors (or deleted). ``failed`` lists the media
    fields that could not be used; the dead-letter topic has the reasons."""
    return {
        "schema_version": SCHEMA_VERSION,
        "item_id": item_id,
        "modalities": modalities,
        "failed": failed,
        "deleted": deleted,
        "indexed_at": indexed_at,
        "published_at": published_at,
    }


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
