"""Issue 3 end to end: items with text, image, video and audio go through the real worker.

An app publishes content whose media live under the configured file root: an item with every
part becomes recommendable with all its named vectors stored; an item with a corrupt image is
indexed by its other modalities and a dead-letter record explains the image.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from recstream.streams.settings import Settings
from recstream.streams.worker import open_store
from tests.conftest import AppHarness, settings_for
from tests.unit.media_samples import encode_image_file, photo, read_audio, speech, write_video

pytestmark = pytest.mark.integration


def _media(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "rocket.jpg").write_bytes(encode_image_file(photo("rocket")))
    talk = speech(root, "Ten, nine, eight. Ignition. We have lift off.")
    write_video(root / "launch.mp4", photo("astronaut"), read_audio(talk), seconds=2.0)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a whole JPEG file")
    return {
        "image": (root / "rocket.jpg").as_uri(),
        "video": (root / "launch.mp4").as_uri(),
        "audio": talk.as_uri(),
        "corrupt": (root / "corrupt.jpg").as_uri(),
    }


async def _scenario(h: AppHarness, media: dict[str, str]) -> dict[str, Any]:
    await h.wait_ready()
    full = {
        "item_id": "launch-day",
        "title": "Launch day",
        "description": "A rocket on the pad, the countdown, and lift off.",
        "tags": ["space"],
        "image_uri": media["image"],
        "video_uri": media["video"],
        "audio_uri": media["audio"],
        "published_at": 1_795_000_000_000,
    }
    broken = {
        "item_id": "broken-cover",
        "title": "Countdown podcast",
        "tags": ["space"],
        "image_uri": media["corrupt"],
        "audio_uri": media["audio"],
    }
    filler = [
        {"item_id": f"filler-{i}", "title": t, "tags": ["misc"]}
        for i, t in enumerate(["Knitting a scarf", "Weeknight pasta", "Tax return tips"])
    ]
    await h.publish_catalog([full, broken, *filler])

    indexed = {i: h.indexed_record(i) for i in ("launch-day", "broken-cover")}
    assert indexed["launch-day"] is not None and indexed["broken-cover"] is not None
    assert indexed["launch-day"]["modalities"] == ["audio", "image", "text"]
    assert indexed["launch-day"]["failed"] == []
    assert indexed["broken-cover"]["modalities"] == ["audio", "text"]
    assert indexed["broken-cover"]["failed"] == ["image_uri"]

    # The dead letter names the part and why, and carries the original message.
    await h.wait(lambda: any(d.get("part") == "image_uri" for d in h.dead), 30, "dead letter")
    dl = next(d for d in h.dead if d.get("part") == "image_uri")
    assert "broken-cover" in dl["error"] and "image_uri" in dl["error"]
    assert "audio, text" in dl["error"]  # what the item was indexed with
    assert orjson.loads(base64.b64decode(dl["payload"]))["item_id"] == "broken-cover"

    # Recommendable: a cold user sees both; a user who liked the launch gets the podcast
    # (same topic, same speech) ahead of the unrelated filler.
    cold = {i["item_id"] for i in (await h.ask("cold-user", k=10))["items"]}
    assert {"launch-day", "broken-cover"} <= cold
    await h.client.send_event(
        {
            "user_id": "fan",
            "item_id": "launch-day",
            "type": "like",
            "ts": 1_795_000_001_000,
            "event_id": "fan-1",
        }
    )
    await h.client.flush()
    await h.wait(lambda: h.rec_for("fan-1") is not None, 60, "recommendation after a like")
    rec = h.rec_for("fan-1")
    assert rec is not None
    assert rec["items"][0]["item_id"] == "broken-cover", rec["items"]
    return full


def test_item_with_every_modality_and_item_with_corrupt_image(
    make_worker: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    media = _media(tmp_path / "media")
    roots = orjson.dumps([str(tmp_path / "media")]).decode()
    worker = make_worker(RECSTREAM_MEDIA_FILE_ROOTS=roots)
    settings = settings_for(worker_env)

    async def run() -> None:
        async with AppHarness(settings, worker) as h:
            await _scenario(h, media)

    asyncio.run(run())
    worker.stop()

    # Every named vector is in the store, unit length, for the item that had every part.
    async def stored() -> dict[str, Any]:
        s = Settings()
        s.qdrant.path = worker_env["RECSTREAM_QDRANT_PATH"]
        store = open_store(s, {})
        try:
            await store.ensure_collection()
            return await store.get(["launch-day", "broken-cover"])
        finally:
            await store.close()

    items = asyncio.run(stored())
    full, broken = items["launch-day"], items["broken-cover"]
    assert set(full.vectors) >= {"text", "image", "audio"}
    for name, dim in (("text", 384), ("image", 1280), ("audio", 512)):
        v = full.vectors[name]
        assert v.shape == (dim,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-4
    assert "image" not in broken.vectors and {"text", "audio"} <= set(broken.vectors)
