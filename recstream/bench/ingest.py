"""Content-ingestion run: N real texts through the worker's encoder into the store.

Items are built from the bundled catalog's texts (varied per copy so no two are identical),
published as fast as the producer goes; the worker encodes them in micro-batches and writes
them to the store. Measured: items/s (first publish to last item searchable) and, per item,
publish-to-searchable latency, read from the content-indexed topic (one record per item once it
is stored and searchable).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from recstream.bench.load import _consumer, start_worker, stop
from recstream.streams.demo import load_catalog
from recstream.streams.settings import Settings


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct 640x480 JPEGs (shapes and noise on a coloured ground) as file:// URIs:
    real decode + resize + model work per item, like a thumbnail or cover."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    uris = []
    for i in range(n):
        ground = tuple(int(x) for x in rng.integers(0, 256, 3))
        img = Image.new("RGB", (640, 480), ground)
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, 560)), int(rng.integers(0, 400))
            box = (x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200)))
            fill = tuple(int(x) for x in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        noise = rng.integers(-12, 13, (480, 640, 3))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        path = folder / f"img-{i}.jpg"
        Image.fromarray(arr).save(path, "JPEG", quality=85)
        uris.append(path.as_uri())
    return uris


async def read_indexed(
    consumer: Any,
    sent: dict[str, float],
    done: dict[str, float],
    n: int,
    each_poll: Callable[[], None] | None = None,
) -> None:
    """Until ``n`` of the items ``sent`` are indexed: each one's time in ``done``, when this
    process reads its content-indexed record."""
    while len(done) < n:
        batches = await consumer.getmany(timeout_ms=200)
        now = time.perf_counter()
        for msgs in batches.values():
            for m in msgs:
                i = orjson.loads(m.value).get("item_id")
                if i in sent and i not in done:
                    done[i] = now
        if each_poll is not None:
            each_poll()


async def ingest_run(
    settings: Settings,
    n: int,
    work: Path,
    env_for: Callable[..., dict[str, str]],
    *,
    rate: float = 0.0,
    media: str = "text",
) -> dict[str, Any]:
    """Publish ``n`` items (at ``rate`` items/s, or as fast as possible when 0) and time
    each from publish to its content-indexed record."""
    k = settings.kafka
    prefix = f"ing{uuid.uuid4().hex[:6]}."
    env = env_for(settings, prefix, work)
    images: list[str] = []
    if media == "image":
        images = write_images(work / "media", min(n, 256))
        env["RECSTREAM_MEDIA_FILE_ROOTS"] = orjson.dumps([str(work / "media")]).decode()
    proc = await start_worker(env, work / "worker.log")
    consumer = await _consumer(k.bootstrap_servers, prefix + k.indexed_topic, proc)
    producer = AIOKafkaProducer(bootstrap_servers=k.bootstrap_servers, linger_ms=5)
    await producer.start()
    base = load_catalog()
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    try:
        what = "texts + JPEGs" if images else "texts"
        pace = f"at {rate:g} items/s" if rate > 0 else "as fast as possible"
        print(f"== content ingestion: {n} real {what}, {pace}", flush=True)
        # warm-up item: the worker is ready once it is indexed
        await producer.send_and_wait(prefix + k.content_topic, orjson.dumps(
            {"item_id": "warm", "title": "warm up"}), key=b"warm")  # fmt: skip
        async for m in consumer:
            if orjson.loads(m.value).get("item_id") == "warm":
                break

        # concurrently: a record's time is when the app sees it
        reader = asyncio.create_task(read_indexed(consumer, sent, done, n))
        t0 = time.perf_counter()
        for i in range(n):
            if rate > 0:  # steady pace: item i leaves at t0 + i / rate
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            b = base[i % len(base)]
            it = {**b, "item_id": f"ing-{i}", "title": f"{b.get('title', '')} (part {i})"}
            if images:
                it["image_uri"] = images[i % len(images)]
            sent[it["item_id"]] = time.perf_counter()
            key = it["item_id"].encode()
            await producer.send(prefix + k.content_topic, orjson.dumps(it), key=key)
        await producer.flush()
        t_pub = time.perf_counter() - t0
        try:
            await asyncio.wait_for(reader, timeout=600)
        except TimeoutError:
            pass  # reported below as indexed < items
        total = max(done.values()) - t0 if done else float("nan")
        lat = np.array([(done[i] - sent[i]) * 1000 for i in done]) if done else np.array([np.nan])
        out = {
            "items": n,
            "media": media,
            "rate": rate,
            "indexed": len(done),
            "publish_s": round(t_pub, 2),
            "items_per_s": round(len(done) / total, 1),
            "searchable_p50_ms": round(float(np.percentile(lat, 50)), 1),
            "searchable_p99_ms": round(float(np.percentile(lat, 99)), 1),
            "searchable_max_ms": round(float(np.max(lat)), 1),
        }
        print(f"  {out}", flush=True)
        return out
    finally:
        await consumer.stop()
        await producer.stop()
        await stop(proc)


async def encoder_ready(settings: Settings, prefix: str, proc: Any) -> None:
    """Wait until the encoding worker of run ``prefix`` has indexed a warm-up item."""
    k = settings.kafka
    consumer = await _consumer(k.bootstrap_servers, prefix + k.indexed_topic, proc)
    producer = AIOKafkaProducer(bootstrap_servers=k.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(prefix + k.content_topic, orjson.dumps(
            {"item_id": "warm", "title": "warm up"}), key=b"warm")  # fmt: skip
        deadline = time.monotonic() + 300
        while True:
            if time.monotonic() > deadline or proc.returncode is not None:
                raise RuntimeError(f"the encoding worker never indexed (exit {proc.returncode})")
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                if any(orjson.loads(m.value).get("item_id") == "warm" for m in msgs):
                    return
    finally:
        await consumer.stop()
        await producer.stop()


async def content_beside(
    settings: Settings, prefix: str, proc: Any, rate: float, seconds: float
) -> dict[str, Any]:
    """Real texts published at ``rate`` items/s for ``seconds`` to run ``prefix``'s content
    topic, while its events flow: each item timed from publish to its content-indexed record
    (waiting up to 30 s after the last), and the encoding worker's peak RSS."""
    import psutil

    k = settings.kafka
    consumer = await _consumer(k.bootstrap_servers, prefix + k.indexed_topic, proc)
    producer = AIOKafkaProducer(bootstrap_servers=k.bootstrap_servers, linger_ms=5)
    await producer.start()
    ps = psutil.Process(proc.pid)
    rss: list[float] = []
    base = load_catalog()
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    n = int(rate * seconds)

    def sample_rss() -> None:
        with contextlib.suppress(psutil.Error):
            rss.append(ps.memory_info().rss / 2**20)

    reader = asyncio.create_task(read_indexed(consumer, sent, done, n, sample_rss))
    try:
        t0 = time.perf_counter()
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            b = base[i % len(base)]
            it = {**b, "item_id": f"new-{i}", "title": f"{b.get('title', '')} (part {i})"}
            sent[it["item_id"]] = time.perf_counter()
            await producer.send(prefix + k.content_topic, orjson.dumps(it),
                                key=it["item_id"].encode())  # fmt: skip
        await producer.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), timeout=30)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
    lat = np.array([(done[i] - sent[i]) * 1000 for i in done]) if done else np.array([np.nan])
    return {
        "content": {
            "items": n,
            "rate": rate,
            "indexed": len(done),
            "searchable_p50_ms": round(float(np.percentile(lat, 50)), 1),
            "searchable_p99_ms": round(float(np.percentile(lat, 99)), 1),
            "searchable_max_ms": round(float(np.max(lat)), 1),
            "encoder_peak_rss_mb": round(max(rss, default=0.0), 1),
        }
    }
