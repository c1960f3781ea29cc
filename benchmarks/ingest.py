"""Content-ingestion run: N real texts through the worker's encoder into the store.

Items are built from the bundled catalog's texts (varied per copy so no two are identical),
published as fast as the producer goes; the worker encodes them in micro-batches and writes
them to the store. Measured: items/s (first publish to last item searchable) and, per item,
publish-to-searchable latency, read from the content-indexed topic (one record per item once it
is stored and searchable).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from benchmarks.load import _consumer, start_worker, stop
from streams import broker as brokers
from streams.demo import load_catalog
from streams.settings import Settings


async def ingest_run(
    settings: Settings, n: int, work: Path, env_for: Callable[..., dict[str, str]]
) -> dict[str, Any]:
    k = settings.kafka
    prefix = f"ing{uuid.uuid4().hex[:6]}."
    env = env_for(settings, prefix, work)
    flavor = await brokers.detect_flavor(k.bootstrap_servers)
    proc = await start_worker(env, work / "worker.log")
    consumer = await _consumer(k.bootstrap_servers, prefix + k.indexed_topic, flavor, proc)
    producer = AIOKafkaProducer(bootstrap_servers=k.bootstrap_servers, linger_ms=5)
    await producer.start()
    base = load_catalog()
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    try:
        print(f"== content ingestion: {n} real texts", flush=True)
        # warm-up item: the worker is ready once it is indexed
        await producer.send_and_wait(prefix + k.content_topic, orjson.dumps(
            {"item_id": "warm", "title": "warm up"}), key=b"warm")  # fmt: skip
        async for m in consumer:
            if orjson.loads(m.value).get("item_id") == "warm":
                break
        t0 = time.perf_counter()
        for i in range(n):
            b = base[i % len(base)]
            it = {**b, "item_id": f"ing-{i}", "title": f"{b.get('title', '')} (part {i})"}
            sent[it["item_id"]] = time.perf_counter()
            key = it["item_id"].encode()
            await producer.send(prefix + k.content_topic, orjson.dumps(it), key=key)
        await producer.flush()
        t_pub = time.perf_counter() - t0
        deadline = time.perf_counter() + 600
        while len(done) < n and time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            now = time.perf_counter()
            for msgs in batches.values():
                for m in msgs:
                    i = orjson.loads(m.value).get("item_id")
                    if i in sent and i not in done:
                        done[i] = now
        total = max(done.values()) - t0 if done else float("nan")
        lat = np.array([(done[i] - sent[i]) * 1000 for i in done]) if done else np.array([np.nan])
        out = {
            "items": n,
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
