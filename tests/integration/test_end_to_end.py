"""The worker on a real Kafka-protocol broker, driven as an app would drive it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from recstream.clock import now_ms
from tests.conftest import AppHarness, settings_for

pytestmark = pytest.mark.integration


def pick(catalog: list[dict[str, Any]], tag: str, n: int) -> list[dict[str, Any]]:
    return [it for it in catalog if tag in it["tags"]][:n]


async def personal_lists_scenario(app: AppHarness, catalog: list[dict[str, Any]]) -> None:
    """What an app sees: cold-start lists, personal lists after events, requests, deletion."""
    baking = pick(catalog, "cooking", 6)
    jazz = pick(catalog, "jazz", 6)
    space = pick(catalog, "basketball", 6)
    items = baking + jazz + space
    assert len(items) == 18
    await app.wait_ready()
    # A cold user gets a sensible non-empty list as soon as there is a catalog.
    await app.publish_catalog(items)
    cold = await app.ask("nobody")
    assert len(cold["items"]) == 10
    assert all(r["reason"] for r in cold["items"])

    # A baker likes two baking items and dislikes a jazz one.
    sent = []
    for it, kind in [(baking[0], "like"), (jazz[0], "dislike"), (baking[1], "complete")]:
        ev = {
            "user_id": "baker",
            "item_id": it["item_id"],
            "type": kind,
            "ts": now_ms(),
            "event_id": uuid.uuid4().hex,
        }
        sent.append(ev)
        await app.client.send_event(ev)
        await app.client.flush()
        await app.wait(
            lambda ev=ev: app.rec_for(ev["event_id"]) is not None,
            what=f"recommendation for {ev['event_id']}",
        )
    for ev in sent:
        rec = app.rec_for(ev["event_id"])
        assert rec is not None
        assert rec["user_id"] == "baker" and rec["source_ts"] == ev["ts"]
        assert rec["generated_at"] >= ev["ts"] and rec["model_version"]
        assert len(rec["items"]) == 10
        scores = [r["score"] for r in rec["items"]]
        assert scores == sorted(scores, reverse=True)
    last = app.rec_for(sent[-1]["event_id"])
    assert last is not None
    ids = [r["item_id"] for r in last["items"]]
    interacted = {baking[0]["item_id"], jazz[0]["item_id"], baking[1]["item_id"]}
    assert not interacted & set(ids), "lists never repeat what the user interacted with"
    # Personal: the rest of the baking items lead the list, explained by what was liked.
    assert set(ids[:4]) <= {it["item_id"] for it in baking[2:]}, ids
    assert last["items"][0]["reason"].startswith("because you liked")

    # Cold start: a brand-new item close to the baker's tastes enters their top 10 as soon
    # as it is searchable (its content-indexed record), with no event on it yet.
    new = {
        "item_id": "article-new-sourdough-loaf",
        "title": "Your First Sourdough Loaf",
        "description": "Feeding a starter, folding the dough through the bulk rise, shaping a "
        "boule and baking it in a covered pot for a crackling crust.",
        "tags": ["cooking", "baking", "bread"],
        "published_at": now_ms(),
    }
    await app.client.publish_content(new)
    await app.client.flush()
    await app.wait(lambda: app.indexed_record(new["item_id"]) is not None, 120, "new item indexed")
    fresh = await app.ask("baker")
    assert new["item_id"] in [r["item_id"] for r in fresh["items"]], fresh["items"]
    await app.client.publish_content({"item_id": new["item_id"], "deleted": True})
    await app.client.flush()
    await app.wait_catalog_size(len(items))

    # A request answers from the same state without changing it.
    a = await app.ask("baker")
    b = await app.ask("baker")
    assert [r["item_id"] for r in a["items"]] == [r["item_id"] for r in b["items"]] == ids
    assert a["trigger"] == a["request_id"]

    # Deleting an item removes it from every later list.
    gone = baking[2]["item_id"]
    await app.client.publish_content({"item_id": gone, "deleted": True})
    await app.client.flush()
    await app.wait_catalog_size(len(items) - 1)
    after = await app.ask("baker")
    assert gone not in [r["item_id"] for r in after["items"]]
    assert app.dead == []


def test_events_bring_fresh_personal_lists(make_worker, worker_env, catalog) -> None:
    worker = make_worker()

    async def scenario() -> None:
        async with AppHarness(settings_for(worker_env), worker) as app:
            await personal_lists_scenario(app, catalog)

    asyncio.run(scenario())


BAD_EVENTS: list[tuple[bytes, str]] = [
    (b'{"user_id": "u", "item_id": ', "not valid JSON"),
    (b'["user_id", "u"]', "expected a JSON object, got list"),
    (b'"just a string"', "expected a JSON object, got str"),
    (b'{"user_id": "u", "type": "like", "ts": 1}', "required field 'item_id' is missing"),
    (b'{"user_id": "u", "item_id": "x", "type": "like", "ts": "yesterday"}', "field 'ts'"),
    (b'{"user_id": 7, "item_id": "x", "type": "like", "ts": 1}', "field 'user_id'"),
    (b'{"user_id": "u", "item_id": "x", "type": "teleport", "ts": 1}', "'teleport'; allowed"),
]


def test_bad_input_goes_to_dead_letters_and_work_goes_on(make_worker, worker_env, catalog) -> None:
    items = catalog[:5]
    worker = make_worker(RECSTREAM_MAX_MESSAGE_BYTES="2048")
    s = settings_for(worker_env)
    k = s.kafka

    async def scenario() -> None:
        async with AppHarness(s, worker) as app:
            await app.wait_ready()
            await app.publish_catalog(items)
            sent: list[tuple[str, bytes, str]] = [
                (k.events_topic, raw, why) for raw, why in BAD_EVENTS
            ]
            sent.append(
                (
                    k.events_topic,
                    b'{"user_id": "u", "item_id": "no-such-item", "type": "like", "ts": 1}',
                    "unknown item",
                )
            )
            big = (
                b'{"user_id": "u", "item_id": "x", "type": "like", "ts": 1, "pad": "'
                + b"x" * 4000
                + b'"}'
            )
            sent.append((k.events_topic, big, "over the 2,048-byte limit"))
            sent.append((k.content_topic, b'{"title": "no id"}', "required field 'item_id'"))
            sent.append((k.content_topic, b'{"item_id": "c", "tags": "jazz"}', "field 'tags'"))
            sent.append((k.content_topic, b"\xff\xfe", "not valid JSON"))
            sent.append((k.requests_topic, b'{"k": 3}', "required field 'user_id'"))
            for topic, raw, _ in sent:
                await app.client._send(topic, "u", raw)
            # ... and a good event after all of them still gets its recommendation.
            ok = {
                "user_id": "u",
                "item_id": items[0]["item_id"],
                "type": "like",
                "ts": now_ms(),
                "event_id": "good",
            }
            await app.client.send_event(ok)
            await app.client.flush()
            await app.wait(lambda: app.rec_for("good") is not None, what="the good event")
            await app.wait(lambda: len(app.dead) >= len(sent), what="all dead letters")

            import base64

            assert len(app.dead) == len(sent)
            by_payload = {base64.b64decode(d["payload"]): d for d in app.dead}
            for topic, raw, why in sent:
                d = by_payload[raw]  # the original bytes, intact
                assert d["source_topic"] == k.topic(topic)
                assert why in d["error"], (why, d["error"])
                assert isinstance(d["partition"], int) and isinstance(d["offset"], int)
                assert d["ts"] > 0
            assert len(app.rec_for("good")["items"]) == 4  # 5 items, 1 seen

    asyncio.run(scenario())
