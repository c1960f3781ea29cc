"""The benchmark's catalog: synthetic item vectors written straight into the store.

Synthetic, and said so in every report: ``n`` unit text vectors (384-d) drawn around 64
topic centres (so interests and neighbours mean something), titles "synthetic item N",
published over the last 30 days, popularity on a Zipf curve. Built once per (n, seed) under
``~/.cache/recstream/bench/`` with the HNSW index (built with every core: no stream runs
yet), then copied for each run because the worker writes to it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recstream.ranking import store as stores
from recstream.ranking.store import NO_TREND, ItemRecord, trend_after
from recstream.ranking.store.edge import EdgeStore

TOPICS = 64
DIM = 384
COLLECTION = "bench_items"


def item_id(n: int) -> str:
    return f"item-{n:06d}"


def synthetic_records(n: int, seed: int, now_ms: int) -> list[ItemRecord]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((TOPICS, DIM)).astype(np.float32)
    topic = rng.integers(0, TOPICS, n)
    vecs = centres[topic] + 0.8 * rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    age = rng.integers(0, 30 * 86_400_000, n)
    return [
        ItemRecord(
            item_id=item_id(i),
            vectors={"text": vecs[i]},
            title=f"synthetic item {i}",
            tags=(f"topic-{topic[i]}",),
            published_at=int(now_ms - age[i]),
            kind="synthetic",
        )
        for i in range(n)
    ]


def zipf_weights(n: int, s: float = 1.0) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


async def _build(
    path: Path, n: int, seed: int, dims: dict[str, int], on_disk: Sequence[str]
) -> None:
    now = time.time_ns() // 1_000_000
    store = EdgeStore.open(str(path), COLLECTION, dims, build_threads=0, on_disk_vectors=on_disk)
    recs = synthetic_records(n, seed, now)
    for i in range(0, n, 2000):
        await store.upsert(recs[i : i + 2000])
    # popularity: the first 5% of ids get hits on a Zipf curve, the rest none yet
    hot = max(1, n // 20)
    w = zipf_weights(hot) * 10_000
    await store.set_trends(
        {item_id(i): trend_after(NO_TREND, float(w[i]), now, 24 * 3_600_000) for i in range(hot)}
    )
    t = time.monotonic()
    await store.build_index()
    print(f"  HNSW index of {n} items built in {time.monotonic() - t:.0f} s", flush=True)
    await store.close()


async def prepared_store(
    cache: Path,
    n: int,
    seed: int,
    dest: Path,
    dims: dict[str, int],
    backend: str = "edge",
    on_disk: Sequence[str] = (),
) -> Path:
    """A store folder at ``dest`` holding the catalog (built once into ``cache``), with the
    worker's storage settings (``on_disk``: memory-mapped vectors, as the worker's
    RECSTREAM_QDRANT_ON_DISK_VECTORS says)."""
    disk = "-disk-" + "-".join(sorted(on_disk)) if on_disk else ""
    src = cache / f"catalog-{backend}-{n}-{seed}{disk}"
    if not (src / "done").exists():
        shutil.rmtree(src, ignore_errors=True)
        print(f"building the synthetic catalog ({n} items) in {src} ...", flush=True)
        if backend == "edge":
            await _build(src, n, seed, dims, on_disk)
        else:
            await _build_client(src, n, seed, dims)
        (src / "done").write_text("ok")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    return dest


async def _build_client(path: Path, n: int, seed: int, dims: dict[str, int]) -> None:
    store = stores.connect(
        url=None, api_key=None, location=str(path), collection=COLLECTION, dims=dims,
        backend="client",
    )  # fmt: skip
    await store.ensure_collection()
    recs = synthetic_records(n, seed, time.time_ns() // 1_000_000)
    for i in range(0, n, 2000):
        await store.upsert(recs[i : i + 2000])
    await store.close()
