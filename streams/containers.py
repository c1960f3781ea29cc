"""Apache Kafka and a Qdrant server in Docker containers (testcontainers), for
``recstream demo --docker`` and the tests against real services.

Kafka is the official ``apache/kafka`` image at the version the local broker runs
(:data:`streams.broker.KAFKA_VERSION`): one combined broker + controller node in KRaft mode.
testcontainers' own ``KafkaContainer`` drives Confluent's image only (its start script calls
``/etc/confluent/docker/*`` and its KRaft mode wants a Confluent tag >= 7.0), so this module
starts the Apache image the way its ``/etc/kafka/docker/run`` expects: configuration in
``KAFKA_*`` variables, the advertised address written once Docker has mapped the port.

Needs a Docker engine and the ``testcontainers`` package (``pip install 'recstream[docker]'``);
:func:`docker_problem` says in one sentence why not, where either is missing.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from recstream.streams import broker as brokers

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

KAFKA_IMAGE = f"apache/kafka:{brokers.KAFKA_VERSION}"
# qdrant-client warns when the server's minor version is more than one away from its own;
# 1.19 is within one of the client (>=1.20) pyproject pins.
QDRANT_IMAGE = "qdrant/qdrant:v1.19.1"

KAFKA_PORT = 9092  # the listener clients outside the container use (mapped to a host port)
_STARTER = "/tmp/recstream-start.sh"
_DEFAULT_SOCKET = "unix:///var/run/docker.sock"


class ContainersUnavailable(RuntimeError):
    """A container could not be started; the message says which and why."""


def docker_problem() -> str | None:
    """None where testcontainers is installed and a Docker engine answers; otherwise one
    sentence saying what is missing."""
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError:
        return (
            "the Python package testcontainers is not installed (pip install 'recstream[docker]')"
        )
    try:
        DockerClient(timeout=5).client.ping()
    except Exception:  # noqa: BLE001 - whatever the failure, no engine answers
        return (
            f"no Docker engine answers at {_docker_host()}: start Docker, or point DOCKER_HOST "
            "at a running engine"
        )
    return None


def _docker_host() -> str:
    """Where testcontainers looks for the engine (its properties file, DOCKER_HOST, the
    current Docker context), else Docker's default socket."""
    try:
        from testcontainers.core.docker_client import get_docker_host
    except ImportError:  # a testcontainers without it reads DOCKER_HOST only
        return os.environ.get("DOCKER_HOST") or _DEFAULT_SOCKET
    return get_docker_host() or _DEFAULT_SOCKET


def kafka_environment(partitions: int = 4) -> dict[str, str]:
    """The broker's settings as the image's ``KAFKA_*`` variables (``KAFKA_A_B`` is the
    property ``a.b``). The advertised listeners are missing: they need the mapped port."""
    return {
        "CLUSTER_ID": "cmVjc3RyZWFtLWRvY2tlcg",
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        # PLAINTEXT: clients through the mapped port; BROKER: the node's own inter-broker
        # traffic, which must not go out through an address only the host can reach.
        "KAFKA_LISTENERS": (
            f"PLAINTEXT://0.0.0.0:{KAFKA_PORT},BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094"
        ),
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
            "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
        "KAFKA_LOG_DIRS": "/var/lib/kafka/data",
        # One node: every internal topic has one replica.
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_DEFAULT_REPLICATION_FACTOR": "1",
        "KAFKA_MIN_INSYNC_REPLICAS": "1",
        # 50 partitions each are sized for production; 10 are created much faster.
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "10",
        "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "10",
        # Topics an app auto-creates before the worker ran get recstream's partition count.
        "KAFKA_NUM_PARTITIONS": str(partitions),
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }


def kafka_advertised(address: str) -> str:
    """``KAFKA_ADVERTISED_LISTENERS`` for clients at ``address`` (host:mapped port)."""
    return f"PLAINTEXT://{address},BROKER://localhost:9093"


def _put_file(container: DockerContainer, path: str, text: str) -> None:
    data = text.encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size = len(data)
        info.mode = 0o644
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    if not container.get_wrapped_container().put_archive("/", archive.getvalue()):
        raise ContainersUnavailable(f"could not write {path} into the Kafka container")


def _logs_tail(container: DockerContainer, n: int = 2000) -> str:
    try:
        out, err = container.get_logs()
    except Exception:  # noqa: BLE001 - the container may be gone already
        return "(no logs)"
    return (out + err).decode(errors="replace")[-n:]


def _exited(container: DockerContainer) -> bool:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    return wrapped.status in ("exited", "dead")


def start_kafka(
    image: str = KAFKA_IMAGE, *, partitions: int = 4, timeout_s: float = 180.0
) -> tuple[DockerContainer, str]:
    """Start Apache Kafka (KRaft, one node) and wait until it answers metadata requests on
    the mapped port. Returns the container (``.stop()`` removes it) and its bootstrap
    address as seen from this machine."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(image)
    container.with_exposed_ports(KAFKA_PORT)
    for name, value in kafka_environment(partitions).items():
        container.with_env(name, value)
    # The advertised address needs the host port Docker picks at start, so the container
    # waits for a starter script that this function writes once the port is known.
    container.with_command(
        ["sh", "-c", f"while [ ! -f {_STARTER} ]; do sleep 0.1; done; exec sh {_STARTER}"]
    )
    try:
        container.start()
        host = container.get_container_host_ip()
        address = f"{host}:{container.get_exposed_port(KAFKA_PORT)}"
        _put_file(
            container,
            _STARTER,
            f"export KAFKA_ADVERTISED_LISTENERS={kafka_advertised(address)}\n"
            "exec /etc/kafka/docker/run\n",
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if _exited(container):
                raise ContainersUnavailable(
                    f"the Kafka container ({image}) exited while starting:\n"
                    + _logs_tail(container)
                )
            try:
                if 1 in brokers._run_async(brokers._broker_ids(address)):
                    return container, address
            except Exception:  # noqa: BLE001 - not answering yet
                pass
            if time.monotonic() > deadline:
                raise ContainersUnavailable(
                    f"the Kafka container ({image}) did not answer on {address} within "
                    f"{timeout_s:.0f} s:\n" + _logs_tail(container)
                )
            time.sleep(0.5)
    except BaseException:
        container.stop()
        raise


def start_qdrant(
    image: str = QDRANT_IMAGE, *, timeout_s: float = 120.0
) -> tuple[DockerContainer, str]:
    """Start a Qdrant server and wait until its ``/readyz`` answers. Returns the container
    (``.stop()`` removes it) and its REST URL as seen from this machine."""
    try:
        from testcontainers.community.qdrant import QdrantContainer
    except ImportError:  # testcontainers before the community namespace
        from testcontainers.qdrant import QdrantContainer

    container = QdrantContainer(image)
    try:
        container.start()
        url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(6333)}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return container, url
            except (urllib.error.URLError, OSError):
                pass
            if _exited(container) or time.monotonic() > deadline:
                raise ContainersUnavailable(
                    f"the Qdrant container ({image}) did not get ready at {url}:\n"
                    + _logs_tail(container)
                )
            time.sleep(0.5)
    except BaseException:
        container.stop()
        raise
