"""Crash loops: the worker killed with SIGKILL again and again while events flow.

    python -m recstream.bench.crash_loop --runs 20 [--guarantee at_least_once|exactly_once]
        [--workers 1|2] [--kills 4] [--events 3000] [--rate 100] [--users 20]
        --report OUT.json

Each run: fresh topics and consumer group on one broker (the local Apache Kafka unless
RECSTREAM_KAFKA_BOOTSTRAP_SERVERS is set), ``--workers`` worker processes, a 40-item catalog,
then ``--events`` events at ``--rate``/s for ``--users`` users, during which a worker is
killed ``--kills`` times (evenly spread over the stream) and started again at once. Then it
waits until every event is answered, asks each user for a list of the whole catalog, and
reads the users table's changelog. Per run it reports:

- ``lost``: events never answered;
- ``duplicate_answers``: answers beyond the first per event (at-least-once allows them;
  exactly-once must have none);
- ``miscounted_users``: users whose state counts another number of events than were sent
  (an event lost or applied twice);
- ``seen_in_final_list``: items a user interacted with that their final list still holds
  (a state rolled back to an older version shows them again).

The test suite runs a small version of this (tests/integration/test_crash_loop.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from recstream.streams import broker as brokers
from recstream.streams.demo import load_catalog
from recstream.streams.settings import EncoderSettings

TYPES = ["view", "click", "like", "share", "complete", "skip"]


@dataclass
class LoopConfig:
    events: int = 3000
    rate: float = 100.0
    users: int = 20
    items: int = 40
    kills: int = 4
    workers: int = 1
    guarantee: str = "at_least_once"
    timeout_s: float = 600.0


@dataclass
class RunResult:
    seed: int
    sent: int
    answers: int
    lost: int
    duplicate_answers: int
    miscounted_users: int
    seen_in_final_list: int
    dead_letters: int
    # times a restarted worker found records Faust skipped and re-read them (SkipGuard)
    skipped_rereads: int
    kills: int
    # per kill: seconds from the kill to the restarted worker's first answer
    recovery_s: list[float]
    seconds: float
    detail: str = ""


class WorkerProc:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:  # noqa: ASYNC230 - once per start
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "recstream.streams.cli", "worker", env=self.env,
                stdout=log, stderr=log,
            )  # fmt: skip

    async def kill9(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                await self.kill9()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def worker_envs(
    bootstrap: str, work: Path, cfg: LoopConfig, tag: str, base: dict[str, str] | None = None
) -> list[dict[str, str]]:
    env = {
        **(base or os.environ),
        "RECSTREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "RECSTREAM_KAFKA_TOPIC_PREFIX": f"cl{tag}.",
        "RECSTREAM_APP_ID": f"crash-loop-{tag}",
        "RECSTREAM_KAFKA_PROCESSING_GUARANTEE": cfg.guarantee,
        "RECSTREAM_ENCODER_MODEL_DIR": str(EncoderSettings().model_dir),
        "RECSTREAM_ENCODER_MODALITIES": '["text"]',
        "RECSTREAM_RANKING_MAX_K": str(max(100, cfg.items)),
        "RECSTREAM_LOG_LEVEL": "INFO",
    }
    return [
        {
            **env,
            "RECSTREAM_DATA_DIR": str(work / f"worker-{i}" / "data"),
            "RECSTREAM_QDRANT_PATH": str(work / f"worker-{i}" / "qdrant"),
        }
        for i in range(cfg.workers)
    ]


async def run_once(
    bootstrap: str, work: Path, cfg: LoopConfig, seed: int, base_env: dict[str, str] | None = None
) -> RunResult:
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    envs = worker_envs(bootstrap, work, cfg, tag, base_env)
    prefix = envs[0]["RECSTREAM_KAFKA_TOPIC_PREFIX"]
    app_id = envs[0]["RECSTREAM_APP_ID"]
    work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per run
    workers = [WorkerProc(e, work / f"worker-{i}.log") for i, e in enumerate(envs)]
    for w in workers:
        await w.start()
    items = load_catalog()[: cfg.items]
    users = [f"user-{i}" for i in range(cfg.users)]
    events = [
        {
            "user_id": rng.choice(users),
            "item_id": rng.choice(items)["item_id"],
            "type": rng.choice(TYPES),
            "ts": 1_790_000_000_000 + i * 1000,
            "event_id": f"ev-{i}",
        }
        for i in range(cfg.events)
    ]
    t0 = time.monotonic()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    app = _App(bootstrap, prefix, cfg.guarantee == "exactly_once")
    kills = 0
    killed_at: list[float] = []
    try:
        await app.start()
        await app.wait_answer(producer, "probe", 240, workers)
        for it in items:
            await producer.send(prefix + "content", orjson.dumps(it), key=it["item_id"].encode())
        await producer.flush()
        ids = {it["item_id"] for it in items}
        await app.wait(lambda: ids <= app.indexed, 120, "the catalog indexed", workers)
        send = asyncio.create_task(_send(producer, prefix + "user-events", events, cfg.rate))
        span, t_send = cfg.events / cfg.rate, time.monotonic()
        for i in range(cfg.kills):
            await asyncio.sleep(max(0.0, t_kill(i, cfg.kills, span) - (time.monotonic() - t_send)))
            victim = workers[rng.randrange(len(workers))]
            await victim.kill9()
            killed_at.append(time.monotonic())
            kills += 1
            await victim.start()
        await send
        want = {e["event_id"] for e in events}
        await app.wait(lambda: want <= app.answered(), cfg.timeout_s, "every event answered",
                       workers, required=False)  # fmt: skip
        lost = len(want - app.answered())
        # Final lists: the whole catalog for each user; what they interacted with must be gone.
        took: dict[str, set[str]] = {}
        for e in events:
            took.setdefault(e["user_id"], set()).add(e["item_id"])
        seen_in_final = 0
        for u in users:
            rec = await app.wait_answer(producer, u, 120, workers, k=cfg.items)
            if rec is not None:
                seen_in_final += len(took.get(u, set()) & {r["item_id"] for r in rec["items"]})
        counts = Counter(r for r in app.triggers if r.startswith("ev-"))
        for w in workers:
            await w.stop()
        states = await read_users(bootstrap, f"{app_id}-users-changelog", cfg.guarantee)
        expected = Counter(e["user_id"] for e in events)
        miscounted = {u: (states.get(u), n) for u, n in expected.items() if states.get(u) != n}
        return RunResult(
            seed=seed,
            sent=len(events),
            answers=sum(counts.values()),
            lost=lost,
            duplicate_answers=sum(n - 1 for n in counts.values()),
            miscounted_users=len(miscounted),
            seen_in_final_list=seen_in_final,
            dead_letters=len(app.dead),
            skipped_rereads=sum(
                w.log_path.read_text(errors="replace").count("skipped record(s) before it")
                for w in workers
            ),
            kills=kills,
            recovery_s=[round(app.first_answer_after(t + 0.5) - t, 1) for t in killed_at],
            seconds=round(time.monotonic() - t0, 1),
            detail=(f"state n_events vs sent: {miscounted}" if miscounted else "")
            + (f"; dead letters: {app.dead[:3]}" if app.dead else ""),
        )
    finally:
        for w in workers:
            await w.stop()
        await app.stop()
        await producer.stop()


def t_kill(i: int, kills: int, span_s: float) -> float:
    """When the i-th kill lands: evenly spread inside the stream, not at its ends."""
    return span_s * (i + 1) / (kills + 1)


async def _send(producer: AIOKafkaProducer, topic: str, events: list[dict], rate: float) -> None:
    t0 = time.monotonic()
    for i, ev in enumerate(events):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        await producer.send(topic, orjson.dumps(ev), key=ev["user_id"].encode())
    await producer.flush()


class _App:
    """Reads recommendations (read_committed under exactly-once: what such an app sees),
    dead letters and content-indexed records."""

    def __init__(self, bootstrap: str, prefix: str, committed: bool) -> None:
        self.bootstrap, self.prefix = bootstrap, prefix
        self.committed = committed
        self.triggers: list[str] = []
        self.answer_times: list[float] = []  # monotonic arrival of each answer
        self.recs: dict[str, dict[str, Any]] = {}
        self.indexed: set[str] = set()
        self.dead: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        topics = [self.prefix + t for t in ("recommendations", "dead-letters", "content-indexed")]
        await brokers.ensure_topics(self.bootstrap, topics, partitions=4)
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed" if self.committed else "read_uncommitted",
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        async for m in self._consumer:
            v = orjson.loads(m.value)
            if m.topic.endswith("recommendations"):
                trig = v.get("trigger") or ""
                self.triggers.append(trig)
                self.answer_times.append(time.monotonic())
                self.recs[trig] = v
            elif m.topic.endswith("content-indexed"):
                self.indexed.add(v["item_id"])
            else:
                self.dead.append(v.get("error", "")[:200])

    def first_answer_after(self, t: float) -> float:
        """Arrival time of the first answer after ``t`` (nan: none)."""
        return next((a for a in self.answer_times if a > t), float("nan"))

    def answered(self) -> set[str]:
        return set(self.recs)

    async def wait(
        self,
        pred: Any,
        timeout_s: float,
        what: str,
        workers: list[WorkerProc],
        required: bool = True,
    ) -> bool:
        deadline = time.monotonic() + timeout_s
        while not pred():
            dead = [w for w in workers if not w.alive()]
            if time.monotonic() > deadline or (dead and required):
                if required:
                    raise RuntimeError(f"timed out or a worker died waiting for {what}")
                return False
            await asyncio.sleep(0.1)
        return True

    async def wait_answer(
        self,
        producer: AIOKafkaProducer,
        user: str,
        timeout_s: float,
        workers: list[WorkerProc],
        k: int = 10,
    ) -> dict[str, Any] | None:
        """Ask (again every 5 s, the worker may still be joining) until answered."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rid = uuid.uuid4().hex
            req = {"user_id": user, "request_id": rid, "k": k}
            await producer.send_and_wait(
                self.prefix + "recommendation-requests", orjson.dumps(req), key=user.encode()
            )
            if await self.wait(lambda rid=rid: rid in self.recs, 5, "an answer", workers,
                               required=False):  # fmt: skip
                return self.recs[rid]
        return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        if self._consumer is not None:
            await self._consumer.stop()


async def read_users(bootstrap: str, changelog: str, guarantee: str) -> dict[str, int]:
    """Each user's event count in the users table's changelog (latest record per user)."""
    from recstream.ranking.user_state import UserState

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (desc,) = await admin.describe_topics([changelog])
    finally:
        await admin.close()
    tps = [TopicPartition(changelog, p["partition"]) for p in desc["partitions"]]
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed" if guarantee == "exactly_once" else "read_uncommitted",
    )
    await c.start()
    try:
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while any([await c.position(tp) < end[tp] for tp in tps]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {changelog} to its end")
            for msgs in (await c.getmany(timeout_ms=200)).values():
                for m in msgs:
                    if m.value is not None:
                        out[orjson.loads(m.key)] = UserState.from_bytes(m.value).n_events
        return out
    finally:
        await c.stop()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recstream.bench.crash_loop", description=__doc__)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--guarantee", choices=["at_least_once", "exactly_once"],
                   default="at_least_once")  # fmt: skip
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--kills", type=int, default=4)
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=Path("reports/crash-loop"))
    p.add_argument("--report", type=Path, required=True)
    return p


async def _main(args: argparse.Namespace) -> int:
    cfg = LoopConfig(
        events=args.events,
        rate=args.rate,
        users=args.users,
        kills=args.kills,
        workers=args.workers,
        guarantee=args.guarantee,
    )
    bootstrap = os.environ.get("RECSTREAM_KAFKA_BOOTSTRAP_SERVERS")
    local = None
    if not bootstrap:
        local = brokers.LocalKafka(port=brokers.free_port_run(2))
        await asyncio.to_thread(local.start)
        bootstrap = local.bootstrap_servers
    results: list[RunResult] = []
    try:
        for i in range(args.runs):
            r = await run_once(bootstrap, args.workdir / f"run-{i}", cfg, args.seed + i)
            results.append(r)
            print(
                f"run {i + 1:2d}/{args.runs}: lost {r.lost}, duplicate answers "
                f"{r.duplicate_answers}, miscounted users {r.miscounted_users}, seen items in "
                f"final lists {r.seen_in_final_list}, dead letters {r.dead_letters}, "
                f"skipped records re-read {r.skipped_rereads}, recovery s {r.recovery_s}, "
                f"{r.kills} kills, {r.seconds:.0f} s {r.detail}",
                flush=True,
            )
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_bytes(
                orjson.dumps(
                    {"config": asdict(cfg), "runs": [asdict(x) for x in results]},
                    option=orjson.OPT_INDENT_2,
                )
            )
    finally:
        if local is not None:
            await asyncio.to_thread(local.stop)
    bad = [r for r in results if r.lost or r.miscounted_users or r.seen_in_final_list]
    print(f"{len(results) - len(bad)} of {len(results)} runs exact; report in {args.report}")
    return 0 if not bad else 1


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
