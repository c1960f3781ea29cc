"""`recstream demo`: the whole system on one machine with no configuration.

Starts the local broker (unless one is configured or already listening), runs a real worker
process on an embedded Qdrant (``--docker``: Apache Kafka and a Qdrant server in Docker
containers instead, removed at the end), publishes the bundled sample catalog, then acts as an
app: sends events from simulated users with known tastes and prints each recommendation as it
arrives, with its latency from the event. Ends with throughput, latency percentiles and how
well the lists came to match each user's tastes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

from recstream.clock import now_ms
from recstream.streams import broker as brokers
from recstream.streams.client import RecstreamClient
from recstream.streams.settings import DEFAULT_BOOTSTRAP, Settings

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

POSITIVE = ("view", "click", "like", "share", "complete")


def load_catalog() -> list[dict[str, Any]]:
    text = (importlib.resources.files("recstream.streams") / "data" / "catalog.jsonl").read_text()
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def load_personas() -> dict[str, dict[str, list[str]]]:
    return orjson.loads(
        (importlib.resources.files("recstream.streams") / "data" / "personas.json").read_bytes()
    )


@dataclass
class SimUser:
    user_id: str
    persona: str
    likes: set[str]
    dislikes: set[str]
    seen: set[str] = field(default_factory=set)


def next_event(user: SimUser, catalog: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """A plausible event: mostly items matching the user's tastes, sometimes anything."""
    fresh = [it for it in catalog if it["item_id"] not in user.seen] or catalog
    liked = [it for it in fresh if user.likes & set(it.get("tags", []))]
    item = rng.choice(liked) if liked and rng.random() < 0.7 else rng.choice(fresh)
    tags = set(item.get("tags", []))
    if tags & user.likes:
        etype = rng.choices(["like", "complete", "share", "view"], [4, 3, 1, 2])[0]
    elif tags & user.dislikes:
        etype = rng.choice(["skip", "dislike"])
    else:
        etype = rng.choices(["view", "skip"], [1, 2])[0]
    user.seen.add(item["item_id"])
    ev: dict[str, Any] = {
        "user_id": user.user_id,
        "item_id": item["item_id"],
        "type": etype,
        "ts": now_ms(),
        "event_id": uuid.uuid4().hex,
    }
    if etype in ("view", "complete"):
        ev["value"] = round(rng.uniform(0.3, 1.0), 2)
    return ev


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def run_demo(
    settings: Settings,
    *,
    users: int,
    events: int,
    rate: float,
    quiet: bool,
    docker: bool = False,
) -> int:
    return asyncio.run(
        _demo(settings, n_users=users, n_events=events, rate=rate, quiet=quiet, docker=docker)
    )


def _start_containers(settings: Settings) -> list[DockerContainer]:
    """Kafka and Qdrant in Docker; the settings then point at them. When either cannot
    start, the error goes up and nothing is left running."""
    from recstream.streams import containers

    started: list[DockerContainer] = []
    try:
        print(f"docker   starting {containers.KAFKA_IMAGE} and {containers.QDRANT_IMAGE}")
        kafka, settings.kafka.bootstrap_servers = containers.start_kafka(
            partitions=settings.kafka.partitions
        )
        started.append(kafka)
        print(
            f"broker   Apache Kafka {brokers.KAFKA_VERSION} (Docker, KRaft, one node) on "
            f"{settings.kafka.bootstrap_servers}"
        )
        qdrant, settings.qdrant.url = containers.start_qdrant()
        started.append(qdrant)
        print(f"qdrant   Qdrant server (Docker) on {settings.qdrant.url}")
    except BaseException:
        _stop_containers(started)
        raise
    return started


def _stop_containers(started: list[DockerContainer]) -> None:
    for c in reversed(started):
        with contextlib.suppress(Exception):
            c.stop()


async def _demo(
    settings: Settings,
    *,
    n_users: int,
    n_events: int,
    rate: float,
    quiet: bool,
    docker: bool = False,
) -> int:
    say = (lambda *a: None) if quiet else print  # noqa: E731
    k = settings.kafka
    local: brokers.LocalKafka | None = None
    started: list[DockerContainer] = []
    explicit = "bootstrap_servers" in k.model_fields_set
    if docker:
        from recstream.streams.containers import docker_problem

        problem = docker_problem()
        if problem is not None:
            print(f"recstream demo --docker: {problem}.", file=sys.stderr)
            return 2
        try:
            started = _start_containers(settings)
        except Exception as exc:  # noqa: BLE001 - an image pull or a start failed: say which
            print(f"recstream demo --docker: {exc}", file=sys.stderr)
            return 1
    elif not explicit and not brokers.is_listening(k.bootstrap_servers):
        port = brokers.split_host_port(DEFAULT_BOOTSTRAP)[1]
        if brokers.is_listening(f"127.0.0.1:{port}"):
            port = brokers.free_port_run(2)
        if brokers.is_listening(f"127.0.0.1:{port + 1}"):
            port = brokers.free_port_run(2)
        try:
            local = brokers.LocalKafka(port=port, heap_mb=k.local_heap_mb).start()
        except brokers.BrokerUnavailable as exc:
            print(f"recstream demo: {exc}")
            return 1
        k.bootstrap_servers = local.bootstrap_servers
        print(
            f"broker   Apache Kafka {brokers.KAFKA_VERSION} (local, KRaft, temporary folder) "
            f"on {k.bootstrap_servers}"
        )
    else:
        # Someone else's broker: keep this run's topics apart.
        k.topic_prefix = k.topic_prefix or f"demo-{uuid.uuid4().hex[:6]}."
        print(f"broker   {k.bootstrap_servers} (topic prefix {k.topic_prefix!r})")

    work = Path(tempfile.mkdtemp(prefix="recstream-demo-"))
    catalog = load_catalog()
    personas = load_personas()
    worker: subprocess.Popen[bytes] | None = None
    try:
        from recstream.encoders.model_cache import ensure_model

        e = settings.encoder
        names = [("text-use" if e.text_model == "use" else "text") if m == "text" else m
                 for m in e.modalities]  # fmt: skip
        print(f"models   {', '.join(names)} (ONNX; exported on first run, ~1 min)")
        for name in names:
            ensure_model(name, e.model_dir)

        env = {
            **os.environ,
            "RECSTREAM_KAFKA_BOOTSTRAP_SERVERS": k.bootstrap_servers,
            "RECSTREAM_KAFKA_TOPIC_PREFIX": k.topic_prefix,
            "RECSTREAM_APP_ID": f"recstream-demo-{uuid.uuid4().hex[:6]}",
            "RECSTREAM_DATA_DIR": str(work),
            "RECSTREAM_RANKING_MAX_K": str(max(len(catalog), settings.ranking.max_k)),
        }
        if not settings.qdrant.url:
            # The demo's broker keeps nothing either: an in-memory catalog matches it.
            env["RECSTREAM_QDRANT_PATH"] = ":memory:"
            print("store    embedded Qdrant engine (qdrant-edge), temporary folder")
        else:
            env["RECSTREAM_QDRANT_URL"] = settings.qdrant.url
            env["RECSTREAM_QDRANT_COLLECTION"] = f"demo_{uuid.uuid4().hex[:6]}"
            if not started:
                print(f"qdrant   {settings.qdrant.url}")
        log_path = work / "worker.log"
        with open(log_path, "wb") as log_file:
            worker = subprocess.Popen(
                [sys.executable, "-m", "recstream.streams.cli", "worker"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        print(f"worker   pid {worker.pid}, log {log_path}")
        return await _drive(
            settings,
            catalog,
            personas,
            worker,
            log_path,
            n_users=n_users,
            n_events=n_events,
            rate=rate,
            say=say,
        )
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        if local is not None:
            local.stop()
        _stop_containers(started)
        shutil.rmtree(work, ignore_errors=True)


async def _drive(
    settings: Settings,
    catalog: list[dict[str, Any]],
    personas: dict[str, dict[str, list[str]]],
    worker: subprocess.Popen[bytes],
    log_path: Path,
    *,
    n_users: int,
    n_events: int,
    rate: float,
    say: Any,
) -> int:
    k = settings.kafka
    titles = {it["item_id"]: it.get("title", it["item_id"]) for it in catalog}
    tags = {it["item_id"]: set(it.get("tags", [])) for it in catalog}
    rng = random.Random(7)
    names = sorted(personas)
    sim = [
        SimUser(
            f"user-{i + 1:02d}",
            names[i % len(names)],
            set(personas[names[i % len(names)]]["likes"]),
            set(personas[names[i % len(names)]].get("dislikes", [])),
        )
        for i in range(n_users)
    ]
    by_id = {u.user_id: u for u in sim}

    consumer = AIOKafkaConsumer(
        k.topic(k.recommendations_topic),
        k.topic(k.dead_letters_topic),
        bootstrap_servers=k.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    async with RecstreamClient(settings) as app:
        # The topics exist once the worker created them; wait for that, then subscribe.
        t0 = time.monotonic()
        inbox: asyncio.Queue[tuple[str, dict[str, Any], int]] = asyncio.Queue()

        async def reader() -> None:
            async for m in consumer:
                inbox.put_nowait((m.topic, orjson.loads(m.value), now_ms()))

        async def wait_for(pred: Any, timeout: float, what: str) -> dict[str, Any]:
            deadline = time.monotonic() + timeout
            while True:
                if worker.poll() is not None:
                    raise RuntimeError(
                        f"worker exited ({worker.returncode}); see {log_path}:\n"
                        + log_path.read_text()[-3000:]
                    )
                try:
                    topic, v, _ = await asyncio.wait_for(inbox.get(), 0.5)
                except TimeoutError:
                    topic, v = "", {}
                if topic and pred(topic, v):
                    return v
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out waiting for {what}; see {log_path}")

        while worker.poll() is None and time.monotonic() - t0 < 120:
            try:
                await consumer.start()
                break
            except Exception:  # noqa: BLE001 - broker not ready or topics not created yet
                await asyncio.sleep(0.5)
        read_task = asyncio.create_task(reader())
        try:
            # 1. Worker up: a request for a probe user gets an answer (empty catalog: no items).
            probe_k = len(catalog)
            answered = False
            t_ready = time.monotonic()
            while not answered:
                await app.request("demo-probe", request_id="ready", k=probe_k)
                with contextlib.suppress(RuntimeError):
                    await wait_for(lambda t, v: v.get("request_id") == "ready", 3, "the worker")
                    answered = True
                if time.monotonic() - t_ready > 180:
                    raise RuntimeError(f"worker did not answer within 180 s; see {log_path}")
            print(f"ready    worker answering after {time.monotonic() - t0:.1f} s")

            # 2. Catalog: publish, then wait until every item is recommendable.
            t_pub = time.monotonic()
            for item in catalog:
                await app.publish_content(item)
            await app.flush()
            n_indexed = 0
            while n_indexed < len(catalog):
                rid = uuid.uuid4().hex
                await app.request("demo-probe", request_id=rid, k=probe_k)
                v = await wait_for(lambda t, v, rid=rid: v.get("request_id") == rid, 30, "indexing")
                n_indexed = len(v["items"])
            print(
                f"catalog  {len(catalog)} items encoded and searchable in "
                f"{time.monotonic() - t_pub:.2f} s"
            )

            # 3. Bad input goes to dead-letters, the worker goes on.
            await app._send(k.events_topic, "bad", b"{not json")
            await app.send_event(
                {"user_id": "bad", "item_id": catalog[0]["item_id"], "type": "teleport"}
            )

            # 4. Users act; each event brings a fresh list.
            print(f"events   {n_events} events from {n_users} users at {rate:g}/s\n")
            pending: dict[str, dict[str, Any]] = {}
            lat: list[float] = []
            # per list: (share of its items matching the user's tastes, same for a random pick)
            shares: list[tuple[float, float]] = []
            dead: list[dict[str, Any]] = []
            interval = 1.0 / rate
            t_send = time.monotonic()

            async def collect(until_n: int, timeout: float) -> None:
                deadline = time.monotonic() + timeout
                while len(lat) < until_n and time.monotonic() < deadline:
                    try:
                        topic, v, at = await asyncio.wait_for(inbox.get(), 0.2)
                    except TimeoutError:
                        continue
                    if topic == k.topic(k.dead_letters_topic):
                        dead.append(v)
                        continue
                    ev = pending.pop(v.get("trigger") or "", None)
                    if ev is None:
                        continue
                    lat.append(at - ev["ts"])
                    u = by_id[v["user_id"]]
                    top = v["items"]
                    hits = sum(1 for r in top if tags.get(r["item_id"], set()) & u.likes)
                    shares.append((hits / max(len(top), 1), ev["_random_match"]))
                    say(
                        f"[{lat[-1]:6.1f} ms] {u.user_id} ({u.persona:<14}) {ev['type']:<8} "
                        f"{titles.get(ev['item_id'], '?')[:34]:<34} -> "
                        + " | ".join(
                            f"{titles.get(r['item_id'], r['item_id'])[:26]}" for r in top[:3]
                        )
                        + (f"  ({top[0]['reason']})" if top else "")
                    )

            for i in range(n_events):
                user = sim[i % n_users]
                # What a random pick among the items this user has not seen would match.
                unseen = [j for j in tags if j not in user.seen]
                random_match = sum(1 for j in unseen if tags[j] & user.likes) / max(len(unseen), 1)
                ev = next_event(user, catalog, rng)
                await app.send_event(ev)
                pending[ev["event_id"]] = {**ev, "_random_match": random_match}
                target = t_send + (i + 1) * interval
                await collect(0, 0)
                delay = target - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            send_s = time.monotonic() - t_send
            await collect(n_events, 60)
            total_s = time.monotonic() - t_send
            # Every fifth of the run, in order: do lists keep matching the users' tastes better
            # than a random pick of what each user has not seen yet?
            fifth = max(1, len(shares) // 5)
            stages = [shares[at : at + fifth] for at in range(0, fifth * 5, fifth)]

            def two_dead_letters(t: str, v: dict[str, Any]) -> bool:
                if t != k.topic(k.dead_letters_topic):
                    return False
                dead.append(v)
                return len(dead) >= 2

            with contextlib.suppress(RuntimeError):
                await wait_for(two_dead_letters, 3, "dead letters")
            print()
            for d in dead[:2]:
                where = f"{d['source_topic']}[{d['partition']}]@{d['offset']}"
                print(f"dead-letter  {where}: {d['error']}")
            print(
                f"\nrecommendations  {len(lat)}/{n_events} received; sent at "
                f"{n_events / send_s:.0f} events/s, all answered within {total_s:.1f} s"
            )
            if lat:
                print(
                    f"latency  event -> recommendation: p50 {_pct(lat, 50):.1f} ms, "
                    f"p95 {_pct(lat, 95):.1f} ms, p99 {_pct(lat, 99):.1f} ms, max {max(lat):.1f} ms"
                )
            for n, part in enumerate(stages):
                if part:
                    got, rnd = np.mean([p[0] for p in part]), np.mean([p[1] for p in part])
                    print(
                        f"tastes   lists {n * fifth + 1}-{n * fifth + len(part)}: {got:.0%} of "
                        f"recommended items match the user's tastes (a random pick of the "
                        f"items each user has not seen: {rnd:.0%})"
                    )
            return 0 if len(lat) == n_events else 1
        finally:
            read_task.cancel()
            with contextlib.suppress(BaseException):
                await read_task
            await consumer.stop()
