"""The benchmark's catalog: synthetic encoded items, published straight to the items topic.

Synthetic, and said so in every report: ``n`` unit text vectors (384-d) drawn around 64
topic centres (so interests and neighbours mean something), titles "synthetic item N",
published over the last 30 days, popularity on a Zipf curve over the first 5% of ids. Each
item's content neighbours (what the encoding stage would ask Qdrant for) are its nearest items
by cosine within its topic, where its nearest items are (two items of one topic have cosine
~0.6, of two topics ~0); built once per (n, seed) under ``~/.cache/recstream/bench/``.

The bench writes the items to ``<app_id>-items`` and the hot items' popularity to the
item-stats Table's changelog (streams/internal.py) before the worker starts: the worker's
catalog reader loads them as it would a catalog encoded earlier. With content flowing beside
the events (``recstream bench --content-rate``), the same items are written into the encoding
stage's store first, so a new item's neighbours are searched among all of them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer

from recstream.ranking.item_side import NO_TREND, ItemRow, trend_after
from recstream.ranking.scoring import ScoreParams
from recstream.ranking.store import ItemRecord, ItemStore
from recstream.ranking.user_state import item_hash
from recstream.streams.internal import ItemMessage, hash_key, key_partition

TOPICS = 64
DIM = 384
NEIGHBOURS = 20


def item_id(n: int) -> str:
    return f"item-{n:06d}"


def zipf_weights(n: int, s: float = 1.0) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def synthetic(cache: Path, n: int, seed: int) -> dict[str, np.ndarray]:
    """vectors float32[n, 384], topic int[n], age_ms int[n], nb int32[n, K], nb_sim float32"""
    path = cache / f"synthetic-{n}-{seed}.npz"
    if path.exists():
        return dict(np.load(path))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((TOPICS, DIM)).astype(np.float32)
    topic = rng.integers(0, TOPICS, n)
    vecs = centres[topic] + 0.8 * rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    age = rng.integers(0, 30 * 86_400_000, n)
    k = min(NEIGHBOURS, max(n - 1, 0))
    nb = np.full((n, k), -1, np.int32)
    sim = np.zeros((n, k), np.float32)
    for t in range(TOPICS):
        members = np.flatnonzero(topic == t)
        if len(members) < 2:
            continue
        s = vecs[members] @ vecs[members].T
        np.fill_diagonal(s, -np.inf)
        kk = min(k, len(members) - 1)
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
        top = np.take_along_axis(top, order, 1)
        nb[members, :kk] = members[top]
        sim[members, :kk] = np.take_along_axis(s, top, 1)
    out = {"vectors": vecs, "topic": topic, "age": age, "nb": nb, "sim": sim}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)  # type: ignore[arg-type]
    return out


def hot_sides(n: int, now: int, params: ScoreParams) -> list[tuple[str, ItemRow]]:
    """The item sides of the first 5% of ids: Zipf popularity at ``now``, in both trends (the
    half-lives the worker reads them with)."""
    hot = max(1, n // 20)
    w = zipf_weights(hot) * 10_000
    return [
        (item_id(i), ItemRow(
            trend=trend_after(NO_TREND, float(w[i]), now, params.trending_half_life_ms),
            hot=trend_after(NO_TREND, float(w[i]), now, params.hot_half_life_ms),
        ))
        for i in range(hot)
    ]  # fmt: skip


async def publish(
    bootstrap: str, items_topic: str, stats_topic: str, partitions: int, cache: Path, n: int,
    seed: int, params: ScoreParams,
) -> float:  # fmt: skip
    """Write the catalog to the items topic and the hot items' sides (``hot_sides``) to the
    item-stats changelog; returns the seconds it took."""
    t0 = time.monotonic()
    data = synthetic(cache, n, seed)
    now = time.time_ns() // 1_000_000
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks="all",
        max_request_size=8 << 20,
    )  # fmt: skip
    await producer.start()
    try:
        for i in range(n):
            nbs = [
                (item_id(int(j)), float(s))
                for j, s in zip(data["nb"][i], data["sim"][i], strict=True)
                if j >= 0
            ]
            msg = ItemMessage(
                item_id=item_id(i), vectors={"text": data["vectors"][i]},
                title=f"synthetic item {i}", tags=(f"topic-{data['topic'][i]}",),
                published_at=int(now - data["age"][i]), kind="synthetic", neighbours=nbs,
            )  # fmt: skip
            await producer.send(items_topic, msg.to_bytes(), key=msg.item_id.encode())
        for iid, row in hot_sides(n, now, params):
            key = hash_key(item_hash(iid))
            await producer.send(
                stats_topic, row.to_bytes(), key=key, partition=key_partition(key, partitions)
            )
        await producer.flush()
    finally:
        await producer.stop()
    return time.monotonic() - t0


async def fill_store(store: ItemStore, cache: Path, n: int, seed: int) -> float:
    """Write the catalog into an item store (what the encoding stage searches for a new item's
    content neighbours); returns the seconds it took."""
    t0 = time.monotonic()
    data = synthetic(cache, n, seed)
    await store.ensure_collection()
    for at in range(0, n, 1000):
        await store.upsert([
            ItemRecord(
                item_id=item_id(i), vectors={"text": data["vectors"][i]},
                title=f"synthetic item {i}", tags=(f"topic-{data['topic'][i]}",),
                kind="synthetic",
            )
            for i in range(at, min(n, at + 1000))
        ])  # fmt: skip
    return time.monotonic() - t0
