"""The load generator acting as an app, and the processes it drives (worker or bare relay).

Events go out at a fixed rate (a 2 ms ticker sends whatever is due, so the rate holds even
when a tick is late); each event's ``event_id`` is its sequence number, and the answer is
matched by ``trigger``. Latency = the time the answer is consumed minus the time the event was
handed to the producer, both on this process's monotonic clock.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from recstream.bench.catalog import item_id, zipf_weights
from recstream.streams.settings import Settings

TYPES = ["view", "click", "like", "share", "complete", "skip", "dislike"]
TYPE_P = [0.45, 0.2, 0.15, 0.03, 0.1, 0.05, 0.02]


@dataclass
class Procs:
    proc: asyncio.subprocess.Process
    env: dict[str, str] | None  # the worker's environment (None: the relay)


@dataclass
class LoadResult:
    rate: int
    seconds: float
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # each answer's part before it was made: its generated_at minus the event's ts (both this
    # machine's wall clock, ms): fetching, batching, the step; the rest is the producer, the
    # broker and this reader's fetch
    made_ms: list[float] = field(default_factory=list)
    last_answer_s: float = 0.0
    lag: list[tuple[float, int]] = field(default_factory=list)  # (s since start, unanswered)
    cpu: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    broker_cpu: list[float] = field(default_factory=list)  # the local broker's, if any
    during: dict[str, Any] = field(default_factory=dict)  # what ran beside the events

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        made = np.array(self.made_ms) if self.made_ms else np.array([np.nan])
        third = max(1, len(self.lag) // 3)
        in_window = [v for t, v in self.lag if t <= self.seconds]
        t3 = max(1, len(in_window) // 3)
        return {
            "sent": self.sent,
            "answered": len(self.latencies_ms),
            "unanswered": self.sent - len(self.latencies_ms),
            "achieved_rate": round(len(self.latencies_ms) / max(self.last_answer_s, 1e-9), 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": round(float(np.max(lat)), 2),
            "mean_ms": round(float(np.mean(lat)), 2),
            "made_p50_ms": round(float(np.percentile(made, 50)), 2),
            "made_p99_ms": round(float(np.percentile(made, 99)), 2),
            "lag": [[round(t, 1), v] for t, v in self.lag],
            "lag_first_third": float(np.mean(in_window[:t3])) if in_window else 0.0,
            "lag_last_third": float(np.mean(in_window[-t3:])) if in_window else 0.0,
            "lag_max": max((v for _, v in self.lag), default=0),
            "worker_cpu_percent": round(float(np.mean(self.cpu[1:third * 3])), 1)
            if len(self.cpu) > 1 else 0.0,
            "worker_peak_rss_mb": round(max(self.rss_mb, default=0.0), 1),
            "broker_cpu_percent": round(float(np.mean(self.broker_cpu[1:third * 3])), 1)
            if len(self.broker_cpu) > 1 else None,
            **self.during,
        }  # fmt: skip


async def start_worker(
    env: dict[str, str], log_path: Path, role: str = "all"
) -> asyncio.subprocess.Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")  # noqa: ASYNC230 - a local file, once per run
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recstream.streams.cli", "worker", "--role", role, env=env,
            stdout=log, stderr=log,
        )  # fmt: skip
    finally:
        log.close()  # the child holds its own descriptor


async def start_relay(
    bootstrap: str, events: str, recs: str, wait_ms: int
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recstream.bench.relay", bootstrap, events, recs, str(wait_ms)
    )


async def stop(proc: asyncio.subprocess.Process, timeout_s: float = 20.0) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _consumer(bootstrap: str, topic: str, proc: Any) -> AIOKafkaConsumer:
    deadline = time.monotonic() + 180
    while True:  # the worker creates its topics when it starts
        c = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
        )
        await c.start()
        if topic in await c.topics():
            return c
        await c.stop()
        if time.monotonic() > deadline or proc.returncode is not None:
            raise RuntimeError(f"{topic} never appeared (process exit code {proc.returncode})")
        await asyncio.sleep(0.5)


async def drive(
    settings: Settings,
    procs: Procs,
    events: str,
    recs: str,
    rate: int,
    args: argparse.Namespace,
    name: str,
    *,
    requests_topic: str | None = None,
    spy_svg: Path | None = None,
    during: Callable[[float], Coroutine[Any, Any, dict[str, Any]]] | None = None,
) -> LoadResult:
    """Events at ``rate`` for ``args.seconds`` once the process answers; ``during(seconds)``,
    if given, runs beside them from the first timed event, and its result joins the
    summary."""
    bootstrap = settings.kafka.bootstrap_servers
    rng = np.random.default_rng(args.seed + rate)
    consumer = await _consumer(bootstrap, recs, procs.proc)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    sent_at: dict[str, float] = {}
    res = LoadResult(rate=rate, seconds=args.seconds)
    answered: set[str] = set()

    async def read() -> None:
        async for m in consumer:
            got = time.perf_counter()
            rec = orjson.loads(m.value)
            trig = rec.get("trigger")
            t = sent_at.get(trig)
            if t is not None and trig not in answered:
                answered.add(trig)
                if not trig.startswith("warm"):
                    res.latencies_ms.append((got - t) * 1000)
                    made, source = rec.get("generated_at"), rec.get("source_ts")
                    if isinstance(made, int) and isinstance(source, int):
                        res.made_ms.append(made - source)
                    res.last_answer_s = got - t0

    replay = getattr(args, "replay", None)
    played = 0

    def event(seq: str, now_ms: int) -> tuple[bytes, bytes]:
        nonlocal played
        ev: dict[str, Any]
        if replay is not None:  # the next real interaction, in time order (then from the top)
            j = played % len(replay)
            played += 1
            user = f"ml-user-{replay.user_ids[replay.user[j]]}"
            item = f"ml-{replay.item_ids[replay.item[j]]}"
            ev = {"user_id": user, "item_id": item, "type": replay.etype[j], "ts": now_ms,
                  "event_id": seq}  # fmt: skip
            if not np.isnan(replay.value[j]):
                ev["value"] = float(replay.value[j])
            return user.encode(), orjson.dumps(ev)
        user = f"user-{int(rng.integers(args.users)):06d}"
        item = item_id(min(int(np.searchsorted(item_cdf, rng.random(), side="right")), n_items - 1))
        typ = TYPES[min(int(np.searchsorted(type_cdf, rng.random(), side="right")), len(TYPES) - 1)]
        ev = {"user_id": user, "item_id": item, "type": typ, "ts": now_ms, "event_id": seq}
        return user.encode(), orjson.dumps(ev)

    n_items = args.items
    # Inverse-CDF draws: rng.choice(n, p=...) rebuilds the CDF per call, ~0.8 ms at 100k items,
    # which capped this load generator at ~1,400 events/s and took a core from the others.
    item_cdf = np.cumsum(zipf_weights(n_items, 0.8))
    item_cdf /= item_cdf[-1]
    type_cdf = np.cumsum(TYPE_P) / np.sum(TYPE_P)
    t0 = time.perf_counter()
    reader = asyncio.create_task(read())
    side: asyncio.Task[dict[str, Any]] | None = None
    try:
        # Ready: a warm-up event answered (the worker may still be joining its group).
        deadline = time.monotonic() + 240
        n = 0
        while not any(a.startswith("warm") for a in answered):
            if time.monotonic() > deadline or procs.proc.returncode is not None:
                raise RuntimeError(f"{name} never answered (exit code {procs.proc.returncode})")
            key, val = event(f"warm-{n}", time.time_ns() // 1_000_000)
            sent_at[f"warm-{n}"] = time.perf_counter()
            await producer.send(events, val, key=key)
            n += 1
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        ps = psutil.Process(procs.proc.pid)
        ps.cpu_percent()
        pid = getattr(args, "broker_pid", None)
        broker = psutil.Process(pid) if pid else None
        if broker is not None:
            broker.cpu_percent()
        spy = None
        if spy_svg is not None and procs.env is not None:
            spy = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(ps.pid),
                "-o", str(spy_svg), "--duration", str(int(args.seconds)), "--nonblocking",
                *(["--format", "raw"] if spy_svg.suffix == ".txt" else []),
            )  # fmt: skip
        t0 = time.perf_counter()
        if during is not None:
            side = asyncio.create_task(during(args.seconds))
        next_sample = 1.0
        while True:
            el = time.perf_counter() - t0
            if el >= args.seconds:
                break
            due = int(el * rate) - res.sent
            for _ in range(due):
                seq = f"e{res.sent}"
                key, val = event(seq, time.time_ns() // 1_000_000)
                sent_at[seq] = time.perf_counter()
                await producer.send(events, val, key=key)
                res.sent += 1
            if el >= next_sample:
                _sample(res, ps, el, answered, broker)
                if int(el) % 5 == 0:
                    print(f"  {name} {el:4.0f}s sent {res.sent} answered "
                          f"{len(res.latencies_ms)} lag {res.lag[-1][1]} cpu {res.cpu[-1]:.0f}% "
                          f"rss {res.rss_mb[-1]:.0f}MB", flush=True)  # fmt: skip
                next_sample += 1.0
            await asyncio.sleep(0.002)
        drain_until = time.perf_counter() + 15
        while len(res.latencies_ms) < res.sent and time.perf_counter() < drain_until:
            await asyncio.sleep(0.1)
            if time.perf_counter() - t0 >= next_sample:
                _sample(res, ps, time.perf_counter() - t0, answered, broker)
                next_sample += 1.0
        if side is not None:
            res.during = await side
        if spy is not None:
            await spy.wait()
    finally:
        for task in (reader, side):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (reader, side) if t is not None), return_exceptions=True)
        await consumer.stop()
        await producer.stop()
    return res


async def publish_items(
    settings: Settings, proc: asyncio.subprocess.Process, prefix: str, data: Any
) -> None:
    """Publish a dataset's items (``recstream.ranking.evaluate.data.Interactions``: title, tags) to
    the worker's content topic and wait until every one is indexed: a catalog of real encoded
    items, built by the worker's own content path."""
    k = settings.kafka
    bootstrap = settings.kafka.bootstrap_servers
    consumer = await _consumer(bootstrap, prefix + k.indexed_topic, proc)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    t0 = time.perf_counter()
    try:
        want = set()
        for n, iid in enumerate(data.item_ids):
            item = {"item_id": f"ml-{iid}", "title": data.item_title[n] or iid,
                    "tags": list(data.item_tags[n])}  # fmt: skip
            want.add(item["item_id"])
            await producer.send(prefix + k.content_topic, orjson.dumps(item),
                                key=item["item_id"].encode())  # fmt: skip
        await producer.flush()
        deadline = time.monotonic() + 600
        while want:
            if time.monotonic() > deadline or proc.returncode is not None:
                raise RuntimeError(f"{len(want)} items never indexed (exit {proc.returncode})")
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                for m in msgs:
                    want.discard(orjson.loads(m.value).get("item_id"))
        print(f"  {len(data.item_ids)} items encoded and indexed by the worker in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    finally:
        await consumer.stop()
        await producer.stop()


def _sample(
    res: LoadResult,
    ps: psutil.Process,
    el: float,
    answered: set[str],
    broker: psutil.Process | None = None,
) -> None:
    try:
        res.cpu.append(ps.cpu_percent())
        res.rss_mb.append(ps.memory_info().rss / 2**20)
        if broker is not None:
            res.broker_cpu.append(broker.cpu_percent())
    except psutil.Error:
        pass
    res.lag.append((el, res.sent - len(res.latencies_ms)))
