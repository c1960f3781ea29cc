"""Shared fixtures: the real local broker, the exported text model, and worker processes.

Integration tests act as an app would: they run `recstream worker` as a separate process
(so it can be killed with SIGKILL), produce JSON with aiokafka and read the output topics.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from streams.client import RecstreamClient, now_ms
from streams.settings import EncoderSettings, Settings

ROOT = Path(__file__).resolve().parents[1]


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The exported text model (exported on first use, in a subprocess, into the cache)."""
    from encoders.cache import ensure_text_model

    path = EncoderSettings().model_dir
    ensure_text_model(path)
    return path


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A real Apache Kafka broker (KRaft, ephemeral) on free loopback ports, for the whole
    session. Java and Maven are the project's own requirements (`make test` installs them),
    so their absence fails the tests rather than skipping them."""
    from streams import broker as brokers

    try:
        cluster = brokers.LocalKafka(port=brokers.free_port_run(2)).start()
    except brokers.BrokerUnavailable as exc:
        pytest.fail(f"no local Apache Kafka broker: {exc}", pytrace=False)
    try:
        yield cluster.bootstrap_servers
    finally:
        cluster.stop()


class Worker:
    """A `recstream worker` process with its own topics, consumer group and Qdrant folder."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        cwd = self.log_path.parent / "cwd"  # whatever a worker leaves in its cwd stays here
        cwd.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=self.env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def diagnosis(self, n: int = 3000) -> str:
        """The log's warnings, errors and group/recovery milestones (short lines), then its tail."""
        keys = (
            "WARNING",
            "ERROR",
            "CRITICAL",
            "Traceback",
            "Revoking",
            "Elected",
            "Recovery complete",
            "Worker ready",
            "Heartbeat",
            "crash",
        )
        lines = self.log_path.read_text(errors="replace").splitlines()
        notable = [ln[:240] for ln in lines if any(k in ln for k in keys)][-40:]
        return "notable log lines:\n" + "\n".join(notable) + "\n--- log tail:\n" + self.log_tail(n)


@pytest.fixture
def worker_env(broker: str, model_dir: Path, tmp_path: Path) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        **os.environ,
        "RECSTREAM_KAFKA_BOOTSTRAP_SERVERS": broker,
        "RECSTREAM_KAFKA_TOPIC_PREFIX": f"t{tag}.",
        "RECSTREAM_APP_ID": f"recstream-test-{tag}",
        "RECSTREAM_DATA_DIR": str(tmp_path / "data"),
        "RECSTREAM_QDRANT_PATH": str(tmp_path / "qdrant"),
        "RECSTREAM_ENCODER_MODEL_DIR": str(model_dir),
        "RECSTREAM_LOG_LEVEL": "INFO",
        # child processes run this tree's code whatever their working directory
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


@pytest.fixture
def make_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    workers: list[Worker] = []

    def make(**overrides: str) -> Worker:
        w = Worker({**worker_env, **overrides}, tmp_path / "worker.log").start()
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop()


def settings_for(env: dict[str, str]) -> Settings:
    s = Settings()
    s.kafka.bootstrap_servers = env["RECSTREAM_KAFKA_BOOTSTRAP_SERVERS"]
    s.kafka.topic_prefix = env["RECSTREAM_KAFKA_TOPIC_PREFIX"]
    s.app_id = env["RECSTREAM_APP_ID"]
    return s


class AppHarness:
    """What an app does: produce content/events/requests, read recommendations/dead-letters."""

    def __init__(self, settings: Settings, worker: Worker, **producer_kwargs: Any):
        self.settings = settings
        self.worker = worker
        self.client = RecstreamClient(settings, **producer_kwargs)
        k = settings.kafka
        self.recs_topic = k.topic(k.recommendations_topic)
        self.dl_topic = k.topic(k.dead_letters_topic)
        self.indexed_topic = k.topic(k.indexed_topic)
        self.recs: list[dict[str, Any]] = []
        self.dead: list[dict[str, Any]] = []
        self.indexed: list[dict[str, Any]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AppHarness:
        await self.client.__aenter__()
        deadline = time.monotonic() + 120
        while True:  # the worker creates the topics when it starts
            consumer = AIOKafkaConsumer(
                self.recs_topic,
                self.dl_topic,
                self.indexed_topic,
                bootstrap_servers=self.settings.kafka.bootstrap_servers,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                fetch_max_wait_ms=10,
            )
            await consumer.start()
            if self.recs_topic in (await consumer.topics()):
                break
            await consumer.stop()
            if time.monotonic() > deadline or not self.worker.alive():
                raise AssertionError("worker never created its topics:\n" + self.worker.log_tail())
            await asyncio.sleep(0.5)
        self._consumer = consumer
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._consumer is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self._consumer.stop()
        await self.client.__aexit__(*exc)

    async def _read(self) -> None:
        assert self._consumer is not None
        async for m in self._consumer:
            v = orjson.loads(m.value)
            v["_received_at"] = now_ms()
            if m.topic == self.recs_topic:
                self.recs.append(v)
            elif m.topic == self.indexed_topic:
                self.indexed.append(v)
            else:
                self.dead.append(v)

    async def wait(
        self, pred: Any, timeout: float = 60, what: str = "a message", detail: Any = None
    ) -> None:
        """Wait until ``pred()``; on failure say why first (``detail()`` adds the test's own
        account, e.g. what is missing), then the worker's warnings and the end of its log."""
        deadline = time.monotonic() + timeout
        while not pred():
            why = None
            if not self.worker.alive():
                why = f"worker died waiting for {what}"
            elif self._task is not None and self._task.done():
                exc = None if self._task.cancelled() else self._task.exception()
                why = f"the app's reader stopped ({exc!r}) waiting for {what}"
            elif time.monotonic() > deadline:
                why = f"timed out after {timeout} s waiting for {what}"
            if why is not None:
                extra = ""
                if detail is not None:
                    got = detail()
                    extra = "; " + str(await got if asyncio.iscoroutine(got) else got)
                raise AssertionError(f"{why}{extra}\n{self.worker.diagnosis()}")
            await asyncio.sleep(0.05)

    def rec_for(self, trigger: str) -> dict[str, Any] | None:
        return next((r for r in self.recs if r.get("trigger") == trigger), None)

    async def ask(self, user_id: str, k: int | None = None, timeout: float = 60) -> dict[str, Any]:
        rid = uuid.uuid4().hex
        await self.client.request(user_id, request_id=rid, k=k)
        await self.client.flush()
        await self.wait(lambda: self.rec_for(rid) is not None, timeout, f"answer to {rid}")
        rec = self.rec_for(rid)
        assert rec is not None
        return rec

    async def wait_ready(self, timeout: float = 180) -> None:
        """The worker is consuming once it answers a request."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.ask("probe", timeout=5)
                return
            except AssertionError:
                if time.monotonic() > deadline or not self.worker.alive():
                    raise

    def indexed_record(self, item_id: str) -> dict[str, Any] | None:
        return next((r for r in reversed(self.indexed) if r["item_id"] == item_id), None)

    async def publish_catalog(self, items: list[dict[str, Any]]) -> None:
        """Publish, wait for every item's content-indexed record, then check a cold user
        really sees them all."""
        for it in items:
            await self.client.publish_content(it)
        await self.client.flush()
        ids = {it["item_id"] for it in items}
        await self.wait(
            lambda: ids <= {r["item_id"] for r in self.indexed}, 120, "content-indexed records"
        )
        await self.wait_catalog_size(len(items))

    async def wait_catalog_size(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len((await self.ask("catalog-probe", k=max(n, 1)))["items"]) != n:
            assert time.monotonic() < deadline, f"catalog never reached size {n}"
            await asyncio.sleep(0.2)


@pytest.fixture
def catalog() -> list[dict[str, Any]]:
    from streams.demo import load_catalog

    return load_catalog()
