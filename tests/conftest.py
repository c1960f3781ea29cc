"""Shared fixtures: the real local broker, the exported text model, and worker processes.

Integration tests act as an app would: they run `recstream worker` as a separate process
(so it can be killed with SIGKILL), produce JSON with aiokafka and read the output topics.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recstream.streams.settings import EncoderSettings
from recstream.testing import AppHarness, WorkerProcess, settings_for

__all__ = ["AppHarness", "Worker", "settings_for"]

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
    from recstream.encoders.model_cache import ensure_text_model

    path = EncoderSettings().model_dir
    ensure_text_model(path)
    return path


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A real Apache Kafka broker (KRaft, ephemeral) on free loopback ports, for the whole
    session. Java and Maven are the project's own requirements (`make test` installs them),
    so their absence fails the tests rather than skipping them."""
    from recstream.streams import broker as brokers

    try:
        cluster = brokers.LocalKafka(port=brokers.free_port_run(2)).start()
    except brokers.BrokerUnavailable as exc:
        pytest.fail(f"no local Apache Kafka broker: {exc}", pytrace=False)
    try:
        yield cluster.bootstrap_servers
    finally:
        cluster.stop()


Worker = WorkerProcess


@pytest.fixture(scope="session")
def recstream_broker(broker: str) -> str:
    """The app-facing plugin (recstream/testing.py) runs on this session's broker too."""
    return broker


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


@pytest.fixture
def catalog() -> list[dict[str, Any]]:
    from recstream.streams.demo import load_catalog

    return load_catalog()
