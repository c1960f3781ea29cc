"""Test an app against recstream the way it is tested against Kafka: a pytest plugin.

Installed with recstream (entry point ``pytest11``), so an app's test suite gets two fixtures:

- ``recstream_broker`` (session): the bootstrap address of a running Kafka. In order:
  ``RECSTREAM_TEST_BOOTSTRAP_SERVERS`` (a Kafka you run), the local Apache Kafka
  (streams/broker.py; needs Java 17+ and Maven), Apache Kafka in Docker (testcontainers; needs
  an engine); the test is skipped with the reason where none of them can run.
- ``recstream``: a :class:`Recstream`, a ``recstream worker`` process on that broker with its
  own uuid-named topics, consumer group and embedded store, and what an app does against it:

      def test_a_like_shapes_the_next_list(recstream):
          recstream.publish([{"item_id": "bread", "title": "Sourdough at home"},
                             {"item_id": "rye", "title": "Baking rye bread"},
                             {"item_id": "jazz", "title": "Modal jazz piano"}])
          rec = recstream.send_event({"user_id": "u1", "item_id": "bread", "type": "like"})
          assert [i["item_id"] for i in rec["items"]][0] == "rye"

  The app under test may produce with its own client to ``recstream.topics.events`` etc. at
  ``recstream.bootstrap_servers`` and await the answer with
  :meth:`Recstream.recommendation_for`. Worker settings come from the environment
  (``RECSTREAM_*``), and ``recstream_factory(**env)`` starts one with more.

recstream's own integration tests use the same classes (:class:`WorkerProcess`,
:class:`AppHarness`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import UnknownTopicOrPartitionError

from recstream.clock import now_ms
from recstream.streams.client import RecstreamClient
from recstream.streams.settings import Settings

T = TypeVar("T")


# -- the worker process -------------------------------------------------------------------------
class WorkerProcess:
    """A `recstream worker` process (``python -m recstream.streams.cli worker``) with its own
    environment; its output goes to ``log_path``. Killable with SIGKILL, as a crash would."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cwd = self.log_path.parent / "cwd"  # whatever a worker leaves in its cwd stays here
        cwd.mkdir(exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child holds its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "recstream.streams.cli", "worker"],
                env=self.env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
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
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def diagnosis(self, n: int = 3000) -> str:
        """The log's warnings, errors and group/recovery milestones, then its tail."""
        keys = ("WARNING", "ERROR", "CRITICAL", "Traceback", "Revoking", "Elected",
                "Recovery complete", "Worker ready", "Heartbeat", "crash")  # fmt: skip
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        notable = [ln[:240] for ln in lines if any(k in ln for k in keys)][-40:]
        return "notable log lines:\n" + "\n".join(notable) + "\n--- log tail:\n" + self.log_tail(n)


def worker_environment(
    bootstrap_servers: str, folder: Path, base: dict[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """A worker's environment with uuid-named topics, app id (consumer group) and folders."""
    tag = uuid.uuid4().hex[:8]
    return {
        **(os.environ if base is None else base),
        "RECSTREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "RECSTREAM_KAFKA_TOPIC_PREFIX": f"t{tag}.",
        "RECSTREAM_APP_ID": f"recstream-test-{tag}",
        "RECSTREAM_DATA_DIR": str(folder / "data"),
        "RECSTREAM_QDRANT_PATH": str(folder / "qdrant"),
        **extra,
    }


def settings_for(env: dict[str, str]) -> Settings:
    """The app side's settings for a worker environment (its broker, prefix and app id)."""
    s = Settings()
    s.kafka.bootstrap_servers = env["RECSTREAM_KAFKA_BOOTSTRAP_SERVERS"]
    s.kafka.topic_prefix = env["RECSTREAM_KAFKA_TOPIC_PREFIX"]
    s.app_id = env["RECSTREAM_APP_ID"]
    return s


# -- the app side (async) ----------------------------------------------------------------------
class AppHarness:
    """What an app does: produce content, events and requests; read recommendations, dead
    letters and content-indexed records (every record, in arrival order)."""

    def __init__(self, settings: Settings, worker: WorkerProcess, **producer_kwargs: Any):
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
            try:
                # all three topics known to the broker the consumer asks (with several
                # brokers, a topic reaches each one's metadata a moment apart)
                await consumer.start()
                if {self.recs_topic, self.dl_topic, self.indexed_topic} <= await consumer.topics():
                    break
            except UnknownTopicOrPartitionError:
                pass
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


# -- the sync facade apps use --------------------------------------------------------------------
class Recstream:
    """A running worker and the app-side calls a test makes against it, synchronous (an event
    loop runs in a thread of its own), so app tests need no async plugin."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env = env
        self.settings = settings_for(env)
        k = self.settings.kafka
        self.bootstrap_servers = k.bootstrap_servers
        self.topics = _Topics(self.settings)
        self.worker = WorkerProcess(env, folder / "worker.log")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._app: AppHarness | None = None

    def _call(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        fut = asyncio.run_coroutine_threadsafe(_as_coro(coro), self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    def start(self, ready_timeout_s: float = 180) -> Recstream:
        self._thread.start()
        self.worker.start()

        async def enter() -> AppHarness:  # aiokafka's clients are made inside their loop
            return await AppHarness(self.settings, self.worker).__aenter__()

        self._app = self._call(enter())
        self._call(self._app.wait_ready(ready_timeout_s))
        return self

    def stop(self) -> None:
        if self._app is not None:
            self._call(self._app.__aexit__(None, None, None))
            self._app = None
        self.worker.stop()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    @property
    def app(self) -> AppHarness:
        assert self._app is not None, "start() first"
        return self._app

    # -- what a test does ----------------------------------------------------------------------
    def publish(self, items: list[dict[str, Any]], timeout: float = 120) -> None:
        """Publish content items and return once every one is searchable (content-indexed)."""
        self._call(self.app.publish_catalog(items), timeout)

    def send_event(self, event: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """Send a user event (``ts`` and ``event_id`` filled in when absent) and return the
        recommendation it triggered."""
        event = {"ts": now_ms(), "event_id": uuid.uuid4().hex, **event}

        async def go() -> None:
            await self.app.client.send_event(event)
            await self.app.client.flush()

        self._call(go())
        return self.recommendation_for(event["event_id"], timeout)

    def recommendation_for(self, trigger: str, timeout: float = 60) -> dict[str, Any]:
        """The recommendation whose ``trigger`` is an event's ``event_id`` (or a request's
        ``request_id``): for events the app under test produced itself."""
        self._call(self.app.wait(lambda: self.app.rec_for(trigger) is not None, timeout, trigger))
        rec = self.app.rec_for(trigger)
        assert rec is not None
        return rec

    def ask(self, user_id: str, k: int | None = None, timeout: float = 60) -> dict[str, Any]:
        """Request a list for ``user_id`` and return the answer (the state is not changed)."""
        return self._call(self.app.ask(user_id, k, timeout))

    @property
    def recommendations(self) -> list[dict[str, Any]]:
        return list(self.app.recs)

    @property
    def dead_letters(self) -> list[dict[str, Any]]:
        return list(self.app.dead)

    def wait_for(self, pred: Callable[[], bool], timeout: float = 60, what: str = "it") -> None:
        """Until ``pred()`` holds (e.g. a dead letter for a message the app sent)."""
        self._call(self.app.wait(pred, timeout, what))


async def _as_coro(aw: Awaitable[T]) -> T:
    return await aw


class _Topics:
    """The worker's topic names (with its uuid prefix)."""

    def __init__(self, s: Settings) -> None:
        k = s.kafka
        self.content = k.topic(k.content_topic)
        self.events = k.topic(k.events_topic)
        self.requests = k.topic(k.requests_topic)
        self.recommendations = k.topic(k.recommendations_topic)
        self.dead_letters = k.topic(k.dead_letters_topic)
        self.indexed = k.topic(k.indexed_topic)


# -- the broker --------------------------------------------------------------------------------
def start_test_broker() -> tuple[str, Callable[[], None]]:
    """(bootstrap servers, stop) of a Kafka for tests: RECSTREAM_TEST_BOOTSTRAP_SERVERS, else
    the local Apache Kafka (ephemeral), else Apache Kafka in Docker. Raises RuntimeError with
    every reason when none can run."""
    given = os.environ.get("RECSTREAM_TEST_BOOTSTRAP_SERVERS")
    if given:
        return given, lambda: None
    from recstream.streams import broker as brokers

    try:
        local = brokers.LocalKafka(port=brokers.free_port_run(2)).start()
        return local.bootstrap_servers, local.stop
    except brokers.BrokerUnavailable as exc:
        local_problem = str(exc)
    from recstream.streams import containers

    problem = containers.docker_problem()
    if problem is None:
        container, address = containers.start_kafka()
        return address, container.stop
    raise RuntimeError(f"no Kafka for the tests: {local_problem}; and {problem}")


@pytest.fixture(scope="session")
def recstream_broker() -> Iterator[str]:
    """The bootstrap address of a Kafka for the whole test session (see the module doc)."""
    try:
        bootstrap, stop = start_test_broker()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield bootstrap
    finally:
        stop()


@pytest.fixture
def recstream_factory(recstream_broker: str) -> Iterator[Callable[..., Recstream]]:
    """``recstream_factory(**env)``: a started :class:`Recstream` with extra ``RECSTREAM_*``
    settings; stopped at the end of the test."""
    made: list[Recstream] = []
    folders: list[Path] = []

    def make(**env: str) -> Recstream:
        folder = Path(tempfile.mkdtemp(prefix="recstream-test-"))
        folders.append(folder)
        r = Recstream(worker_environment(recstream_broker, folder, None, **env), folder)
        made.append(r)
        return r.start()

    yield make
    for r in made:
        r.stop()
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)


@pytest.fixture
def recstream(recstream_factory: Callable[..., Recstream]) -> Recstream:
    """A running worker with its own uuid-named topics (see :class:`Recstream`)."""
    return recstream_factory()
