"""The broker fails mid-stream; the worker carries on by itself, and nothing accepted is lost.

- One broker stopped (SIGTERM, a clean shutdown) and, in another test, killed (SIGKILL), then
  started again on the same data: every event is applied once and answered, and the worker
  process is never restarted by hand.
- Three brokers, replication factor 3, min.insync.replicas 2, producers with acks=all: one
  broker killed (SIGKILL) for good. The stream goes on after leader election with the two
  left, every event is answered and applied once.

Events flow steadily (the app's producer retries what the broker refused while it was away),
and the outage lands when about a third of them have been answered.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaError

from recstream.streams import broker as brokers
from tests.conftest import AppHarness, Worker, settings_for
from tests.integration.test_restart import missing, read_changelog

pytestmark = pytest.mark.integration

N_USERS = 10
N_EVENTS = 400
RATE = 40.0  # events/s: a ten-second stream


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[[int], brokers.LocalKafka]]:
    made: list[brokers.LocalKafka] = []

    def make(nodes: int) -> brokers.LocalKafka:
        c = brokers.LocalKafka(
            nodes=nodes,
            port=brokers.free_port_run(2 * nodes),
            data_dir=tmp_path / f"kafka-{len(made)}",
            heap_mb=384,
        )
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.stop()


def make_events(items: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    users = [f"user-{i}" for i in range(N_USERS)]
    kinds = ["view", "click", "like", "complete", "skip"]
    return [
        {
            "user_id": rng.choice(users),
            "item_id": rng.choice(items)["item_id"],
            "type": rng.choice(kinds),
            "ts": 1_790_000_000_000 + i * 1000,
            "event_id": f"ev-{i}",
        }
        for i in range(N_EVENTS)
    ]


async def send_steadily(app: AppHarness, events: list[dict[str, Any]]) -> None:
    """Send at RATE/s; a send the broker refused (it is away) is retried until accepted."""
    t0 = time.monotonic()
    for i, ev in enumerate(events):
        await asyncio.sleep(max(0.0, t0 + i / RATE - time.monotonic()))
        while True:
            try:
                k = app.settings.kafka
                sent = await app.client.producer.send(
                    k.topic(k.events_topic), orjson.dumps(ev), key=ev["user_id"].encode()
                )
                await sent
                break
            except KafkaError:
                await asyncio.sleep(0.5)


def answered(app: AppHarness) -> set[str]:
    return {r["trigger"] for r in app.recs if (r.get("trigger") or "").startswith("ev-")}


async def outage_scenario(
    env: dict[str, str],
    worker: Worker,
    catalog: list[dict[str, Any]],
    outage: Callable[[], Awaitable[None]],
    seed: int,
) -> None:
    s = settings_for(env)
    items = catalog[:30]
    events = make_events(items, seed)
    expected = Counter(e["user_id"] for e in events)
    async with AppHarness(s, worker, acks="all") as app:
        await app.wait_ready()
        await app.publish_catalog(items)
        sender = asyncio.create_task(send_steadily(app, events))
        await app.wait(lambda: len(answered(app)) >= N_EVENTS // 3, what="a third answered")
        t_out = time.monotonic()
        await outage()
        await app.wait(
            lambda: answered(app) >= {e["event_id"] for e in events},
            timeout=240,
            what="every event answered after the outage",
            detail=lambda: missing(app.recs, events),
        )
        recovered_s = time.monotonic() - t_out
        await sender
        assert worker.alive(), "the worker must carry on by itself"
        dup = Counter(r["trigger"] for r in app.recs if (r.get("trigger") or "").startswith("ev-"))
        print(
            f"outage to all answered: {recovered_s:.1f} s; answers repeated "
            f"{sum(n - 1 for n in dup.values())} times"
        )
    # Every event applied exactly once: the users table's changelog (latest value per user).
    changelog = f"{s.app_id}-users-changelog"
    deadline = time.monotonic() + 60
    while True:
        states = await read_changelog(s.kafka.bootstrap_servers, changelog)
        got = {u: st.n_events for u, st in states.items()}
        if got == dict(expected):
            break
        assert time.monotonic() < deadline, (got, dict(expected))
        await asyncio.sleep(0.5)


def _env(worker_env: dict[str, str], cluster: brokers.LocalKafka, **extra: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        **worker_env,
        "RECSTREAM_KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers,
        "RECSTREAM_KAFKA_TOPIC_PREFIX": f"b{tag}.",
        "RECSTREAM_APP_ID": f"recstream-bf-{tag}",
        **extra,
    }


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_single_broker_restart_mid_stream(
    make_worker, worker_env, cluster_factory, catalog, kill: bool
) -> None:
    cluster = cluster_factory(1)
    env = _env(worker_env, cluster)
    worker = make_worker(**env)

    async def restart() -> None:
        cluster.stop_node(1, kill=kill)
        await asyncio.sleep(3)
        await asyncio.to_thread(cluster.start_node, 1)

    asyncio.run(outage_scenario(env, worker, catalog, restart, seed=1 + kill))


def test_three_brokers_lose_one_without_losing_an_event(
    make_worker, worker_env, cluster_factory, catalog
) -> None:
    cluster = cluster_factory(3)
    env = _env(worker_env, cluster, RECSTREAM_KAFKA_REPLICATION_FACTOR="3")
    worker = make_worker(**env)

    async def kill_one() -> None:
        cluster.stop_node(1, kill=True)  # the first bootstrap address, for good

    asyncio.run(outage_scenario(env, worker, catalog, kill_one, seed=3))
