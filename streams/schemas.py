"""Wire formats of every topic (version 1). Apps depend on these: change them only compatibly.

Inputs are parsed strictly (``parse_*`` raise :class:`BadInput` with a sentence a person
understands); unknown extra fields are kept and ignored, so producers may add fields.
Outputs are built as plain dicts and serialised with orjson.
"""

from __future__ import annotations

import base64
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


def _describe(exc: ValidationError, what: str) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "(value)"
        msg = err["msg"]
        if err["type"] == "missing":
            parts.append(f"required field '{loc}' is missing")
        elif err["type"] == "literal_error":
            allowed = ", ".join(EVENT_TYPES)
            parts.append(f"field '{loc}' is {err.get('input')!r}; allowed: {allowed}")
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
    """Value on the ``dead-letters`` topic (key: the original key).

    ``part`` names the failed field of a message that was otherwise processed (e.g.
    ``image_uri`` of a content item indexed by its other modalities); None when the whole
    message was rejected."""
    return {
        "schema_version": SCHEMA_VERSION,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "error": error,
        "payload": base64.b64encode(payload).decode() if payload is not None else None,
        "key": base64.b64encode(key).decode() if key is not None else None,
        "ts": ts,
        "part": part,
    }


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
