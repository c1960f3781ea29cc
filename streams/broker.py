"""The local Apache Kafka broker (`recstream broker`): KRaft mode, jars from Maven Central.

One node is a combined broker + controller on 127.0.0.1:9092 (controller on 9093); ``nodes=3``
runs three of them on consecutive ports (brokers on port..port+2, controllers on the next
three) with replication factor 3 and ``min.insync.replicas`` 2, for replication and failover.
The jars of the pinned Kafka version (``data/kafka/pom.xml``) are resolved once with Maven
into ``~/.cache/recstream/kafka/<version>/libs`` (``RECSTREAM_KAFKA_LOCAL_CACHE_DIR``); each
node is what Kafka's own ``bin/kafka-storage.sh format`` and ``bin/kafka-server-start.sh`` run.
Data lives in a folder that survives restarts (``--ephemeral``: a temporary one); each node
logs to ``<folder>/node-<id>/logs/server.log``.

Also here: readiness checks and topic creation for any broker the worker talks to.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import ctypes
import fcntl
import importlib.resources
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)
T = TypeVar("T")

KAFKA_VERSION = "4.1.1"  # the version data/kafka/pom.xml pins
MIN_JAVA = 17  # Kafka 4.x brokers need Java 17+
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


class BrokerUnavailable(RuntimeError):
    """The local broker cannot run here; the message says what to install or configure."""


# -- addresses --------------------------------------------------------------------------------
def split_host_port(server: str) -> tuple[str, int]:
    host, _, port = server.split(",")[0].strip().rpartition(":")
    return host or "127.0.0.1", int(port or 9092)


def is_listening(server: str, timeout_s: float = 0.3) -> bool:
    host, port = split_host_port(server)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(n: int, attempts: int = 50) -> int:
    """The first of ``n`` consecutive free loopback ports (for a test cluster)."""
    for _ in range(attempts):
        base = free_port()
        if base + n > 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no {n} consecutive free ports on 127.0.0.1")


# -- Java and the jars ------------------------------------------------------------------------
def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerUnavailable(
            f"the local Kafka broker needs Java {MIN_JAVA} or newer and none was found: install "
            "a JDK or JRE (Debian: apt-get install openjdk-17-jre-headless), or set "
            "RECSTREAM_KAFKA_BOOTSTRAP_SERVERS to a running Kafka"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(m.group(1)) if m else 0
    if major == 1 and m and m.group(2):  # "1.8.0_392" is Java 8
        major = int(m.group(2))
    if major < MIN_JAVA:
        raise BrokerUnavailable(
            f"the local Kafka broker needs Java {MIN_JAVA} or newer; {java} is Java {major}: "
            "install a newer one (Debian: apt-get install openjdk-17-jre-headless) and put it "
            "first on PATH or in JAVA_HOME"
        )
    return java


def default_cache_dir() -> Path:
    env = os.environ.get("RECSTREAM_KAFKA_LOCAL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "recstream" / "kafka"


def kafka_libs(cache_dir: Path | None = None) -> Path:
    """The folder of Kafka's jars, resolved with Maven on first use (once per version; a lock
    keeps two processes from resolving at the same time)."""
    root = (cache_dir or default_cache_dir()) / KAFKA_VERSION
    libs = root / "libs"
    if (root / "complete").exists():
        return libs
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "complete").exists():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerUnavailable(
                f"the local Kafka broker's jars (Apache Kafka {KAFKA_VERSION}) are resolved "
                "from Maven Central with Maven, which was not found: install it (Debian: "
                "apt-get install maven), or set RECSTREAM_KAFKA_BOOTSTRAP_SERVERS to a running "
                "Kafka"
            )
        pom = root / "pom.xml"
        pom.write_bytes(
            importlib.resources.files("recstream.streams")
            .joinpath("data/kafka/pom.xml")
            .read_bytes()
        )
        staging = root / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(libs, ignore_errors=True)
        log.info("resolving Apache Kafka %s's jars with Maven into %s", KAFKA_VERSION, libs)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            tail = (done.stdout + done.stderr).strip()[-2000:]
            raise BrokerUnavailable(
                f"Maven could not resolve Apache Kafka {KAFKA_VERSION}'s jars "
                f"(exit {done.returncode}); is Maven Central reachable? {tail}"
            )
        staging.rename(libs)
        (root / "complete").write_text(KAFKA_VERSION + "\n")
    return libs


def check_requirements(cache_dir: Path | None = None) -> Path:
    """Raise :class:`BrokerUnavailable` with what to install, else return the jars' folder."""
    _java()
    return kafka_libs(cache_dir)


# -- the cluster ------------------------------------------------------------------------------
LOG4J2 = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the broker gets SIGTERM when the process that started it dies (a worker or a
    test killed with -9 leaves no JVM behind)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalKafka:
    """A local Apache Kafka cluster in KRaft mode: ``nodes`` combined broker + controller
    processes on 127.0.0.1, brokers on ``port`` .. ``port + nodes - 1`` and controllers on the
    next ``nodes`` ports. ``data_dir`` None: a temporary folder, removed by :meth:`stop`."""

    nodes: int = 1
    port: int = 9092
    data_dir: Path | None = None
    heap_mb: int = 512
    cache_dir: Path | None = None
    # Extra broker properties (name -> value), applied to every node after the defaults.
    overrides: Mapping[str, str] = field(default_factory=dict)
    _nodes: list[Node] = field(default_factory=list, init=False, repr=False)
    _ephemeral: bool = field(default=False, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{self.port + i}" for i in range(self.nodes))

    @property
    def folder(self) -> Path:
        assert self.data_dir is not None, "start() first"
        return self.data_dir

    def node(self, node_id: int) -> Node:
        return self._nodes[node_id - 1]

    def properties(self, node_id: int) -> dict[str, str]:
        n = self.nodes
        rf = min(3, n)
        voters = ",".join(f"{i + 1}@127.0.0.1:{self.port + n + i}" for i in range(n))
        port, cport = self.port + node_id - 1, self.port + n + node_id - 1
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.folder / f"node-{node_id}" / "data"),
            # Topics an app auto-creates by producing before the worker ran get recstream's
            # default partition count (RECSTREAM_KAFKA_PARTITIONS).
            "num.partitions": "4",
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(min(2, n)),
            "offsets.topic.replication.factor": str(rf),
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(min(2, n)),
            # Kafka's 50 partitions each are sized for a production cluster; 10 start faster
            # on a laptop (the first consumer group and the first transaction create them).
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            # A replica that stops fetching leaves the ISR after 10 s (Kafka's default 30 s):
            # acks=all producers wait that long after a broker dies.
            "replica.lag.time.max.ms": "10000",
        }
        props.update(self.overrides)
        return props

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, ready_timeout_s: float = 90.0) -> LocalKafka:
        java = _java()
        libs = kafka_libs(self.cache_dir)
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="recstream-kafka-"))
            self._ephemeral = True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        busy = [
            p
            for p in range(self.port, self.port + 2 * self.nodes)
            if is_listening(f"127.0.0.1:{p}")
        ]
        if busy:
            raise BrokerUnavailable(
                f"cannot start the local Kafka broker: port(s) {busy} on 127.0.0.1 are in use "
                "(another broker running? `recstream broker --port N` picks others)"
            )
        cluster_id = self._cluster_id()
        self._nodes = [
            Node(
                i + 1,
                self.port + i,
                self.port + self.nodes + i,
                self.folder / f"node-{i + 1}",
            )
            for i in range(self.nodes)
        ]
        for node in self._nodes:
            self._format(java, libs, node, cluster_id)
        for node in self._nodes:
            self._spawn(java, libs, node)
        try:
            self.wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info(
            "local Apache Kafka %s (%d node%s) on %s, data in %s",
            KAFKA_VERSION,
            self.nodes,
            "" if self.nodes == 1 else "s",
            self.bootstrap_servers,
            self.data_dir,
        )
        return self

    def _cluster_id(self) -> str:
        path = self.folder / "cluster.id"
        if path.exists():
            return path.read_text().strip()
        cid = "-"
        while cid.startswith("-"):  # the storage tool would read "-..." as an option (as
            # Kafka's own Uuid.randomUuid, never start an id with "-")
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        path.write_text(cid + "\n")
        return cid

    def _config_file(self, node: Node) -> Path:
        node.folder.mkdir(parents=True, exist_ok=True)
        path = node.folder / "server.properties"
        text = "".join(f"{k}={v}\n" for k, v in self.properties(node.node_id).items())
        path.write_text(text)
        (node.folder / "log4j2.properties").write_text(LOG4J2)
        return path

    def _format(self, java: str, libs: Path, node: Node, cluster_id: str) -> None:
        config = self._config_file(node)
        if (node.folder / "data" / "meta.properties").exists():
            return
        done = subprocess.run(
            [
                java,
                "-Xmx256m",
                *self._log_flags(node),
                "-cp",
                f"{libs}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(config),
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BrokerUnavailable(
                f"formatting Kafka storage in {node.folder} failed (exit {done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-1500:]}"
            )

    def _log_flags(self, node: Node) -> list[str]:
        return [
            f"-Dlog4j2.configurationFile={node.folder / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={node.folder / 'logs'}",
        ]

    def _spawn(self, java: str, libs: Path, node: Node) -> None:
        config = self._config_file(node)
        (node.folder / "logs").mkdir(parents=True, exist_ok=True)
        out = open(node.folder / "logs" / "stdout.log", "ab")  # noqa: SIM115 - the child's
        try:
            node.process = subprocess.Popen(
                [
                    java,
                    f"-Xms{self.heap_mb}m",
                    f"-Xmx{self.heap_mb}m",
                    "-XX:+UseG1GC",
                    "-XX:MaxGCPauseMillis=20",
                    "-XX:+ExitOnOutOfMemoryError",
                    "-Djava.awt.headless=true",
                    *self._log_flags(node),
                    "-cp",
                    f"{libs}/*",
                    "kafka.Kafka",
                    str(config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the parent is handled by it, in order
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, no locks taken
            )
        finally:
            out.close()

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Until every running node listens and the cluster's metadata names them all."""
        deadline = time.monotonic() + timeout_s
        running = [n for n in self._nodes if n.process is not None]
        while True:
            for n in running:
                if not n.alive():
                    raise BrokerUnavailable(
                        f"Kafka node {n.node_id} exited with code {n.process.returncode} "  # type: ignore[union-attr]
                        f"while starting; its log: {n.folder / 'logs' / 'server.log'}\n"
                        f"{_tail(n.folder / 'logs' / 'server.log')}"
                    )
            if all(is_listening(n.address) for n in running):
                try:
                    got = _run_async(_broker_ids(",".join(n.address for n in running)))
                except Exception:  # noqa: BLE001 - not answering yet
                    got = set()
                if {n.node_id for n in running} <= got:
                    return
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"the local Kafka broker did not answer on {self.bootstrap_servers} within "
                    f"{timeout_s:.0f} s; its log: {running[0].folder / 'logs' / 'server.log'}"
                )
            time.sleep(0.2)

    def stop_node(self, node_id: int, *, kill: bool = False, timeout_s: float = 60.0) -> None:
        """SIGTERM (a clean, controlled shutdown) or, with ``kill``, SIGKILL one node."""
        node = self.node(node_id)
        p, node.process = node.process, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("Kafka node %d did not stop in %.0f s: killing it", node_id, timeout_s)
            p.kill()
            p.wait()

    def start_node(self, node_id: int, ready_timeout_s: float = 90.0) -> None:
        """Start a stopped node again on its data (after :meth:`stop_node`)."""
        node = self.node(node_id)
        if node.alive():
            return
        self._spawn(_java(), kafka_libs(self.cache_dir), node)
        self.wait_ready(ready_timeout_s)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop every node (SIGTERM to all, then wait), and remove an ephemeral folder."""
        live = [n for n in self._nodes if n.alive()]
        for n in live:
            n.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        for n in live:
            assert n.process is not None
            try:
                n.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.process.kill()
                n.process.wait()
            n.process = None
        if self._ephemeral and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def alive(self) -> bool:
        return any(n.alive() for n in self._nodes)

    def log_path(self, node_id: int = 1) -> Path:
        return self.folder / f"node-{node_id}" / "logs" / "server.log"

    def __enter__(self) -> LocalKafka:
        return self.start() if not self.alive() else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop is running in
    this thread (the demo's): then in a helper thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _broker_ids(bootstrap_servers: str) -> set[int]:
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=3000)
    try:
        await client.bootstrap()
        return {b.nodeId for b in client.cluster.brokers()}
    finally:
        await client.close()


@dataclass(frozen=True)
class TopicSpec:
    """A topic as recstream creates it: ``config`` holds topic configs such as
    ``cleanup.policy``."""

    name: str
    partitions: int
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


async def ensure_topic_specs(
    bootstrap_servers: str,
    specs: Iterable[TopicSpec],
    *,
    admin_kwargs: Mapping[str, Any] | None = None,
    timeout_s: float = 60.0,
) -> list[str]:
    """Create the topics that do not exist yet, then wait until the cluster's metadata shows
    every one of them with all its partitions led (a consumer that subscribes sooner may see
    a new topic with no partitions: Faust then refuses its tables). Returns the names created.
    A broker may auto-create topics with other partition counts, so recstream creates its own
    before anything produces to them."""
    specs = list({s.name: s for s in specs}.values())
    admin = AIOKafkaAdminClient(**{"bootstrap_servers": bootstrap_servers, **(admin_kwargs or {})})
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [s for s in specs if s.name not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            s.name,
                            s.partitions,
                            s.replication_factor,
                            topic_configs=dict(s.config),
                        )
                        for s in wanted
                    ]
                )
        deadline = time.monotonic() + timeout_s
        names = [s.name for s in specs]
        while True:
            described = await admin.describe_topics(names)
            ready = {
                d["topic"]
                for d in described
                if not d.get("error_code")
                and d.get("partitions")
                and all(p.get("leader", -1) >= 0 for p in d["partitions"])
            }
            if ready >= set(names):
                return [s.name for s in wanted]
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"topics {sorted(set(names) - ready)} have no leaders after {timeout_s:.0f} s"
                )
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    admin_kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """:func:`ensure_topic_specs` for plain topics of one size."""
    return await ensure_topic_specs(
        bootstrap_servers,
        [TopicSpec(t, partitions, replication_factor) for t in topics],
        admin_kwargs=admin_kwargs,
    )


def run_forever(
    *,
    port: int = 9092,
    nodes: int = 1,
    data_dir: Path | None = None,
    heap_mb: int = 512,
) -> int:
    """`recstream broker`: run the local cluster in the foreground until Ctrl-C / SIGTERM
    (each node then shuts down cleanly). ``data_dir`` None: ephemeral."""
    t0 = time.monotonic()
    try:
        cluster = LocalKafka(nodes=nodes, port=port, data_dir=data_dir, heap_mb=heap_mb).start()
    except BrokerUnavailable as exc:
        print(f"recstream broker: {exc}", flush=True)
        return 1
    where = f"data in {cluster.folder}" if data_dir is not None else "ephemeral"
    print(
        f"recstream: Apache Kafka {KAFKA_VERSION} ({nodes} node{'s' if nodes > 1 else ''}, "
        f"KRaft) on {cluster.bootstrap_servers}, ready in {time.monotonic() - t0:.1f} s; "
        f"{where}; logs in {cluster.folder}/node-*/logs; Ctrl-C stops it",
        flush=True,
    )
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set() and cluster.alive():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    try:
        asyncio.run(wait())
    finally:
        cluster.stop()
    return 0 if stop.is_set() else 1
