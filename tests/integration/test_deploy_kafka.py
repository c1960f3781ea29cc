"""The Kafka settings of deploy/'s compose files and of `recstream demo --docker`, checked by
Kafka itself (no Docker engine needed).

The apache/kafka image turns each ``KAFKA_*`` variable into a broker property (``KAFKA_A_B``
-> ``a.b``, ``__`` -> ``_``, ``___`` -> ``-``). Kafka's storage tool, run on those properties
from the same release's jars the local broker uses, builds the broker's configuration before
it formats a folder: a listener, quorum or value mistake fails here as it would at start.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from recstream.streams import broker as brokers
from recstream.streams import containers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = [ROOT / "deploy" / "docker-compose.yml", ROOT / "deploy" / "docker-compose.cluster.yml"]
# What the image's configureDefaults fills in when unset: every one is set explicitly, so no
# default (such as advertised localhost:29092) slips into a node.
IMAGE_DEFAULTS = {
    "CLUSTER_ID",
    "KAFKA_NODE_ID",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
    "KAFKA_LISTENERS",
    "KAFKA_ADVERTISED_LISTENERS",
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    "KAFKA_PROCESS_ROLES",
    "KAFKA_CONTROLLER_QUORUM_VOTERS",
    "KAFKA_INTER_BROKER_LISTENER_NAME",
    "KAFKA_CONTROLLER_LISTENER_NAMES",
    "KAFKA_LOG_DIRS",
}


def property_name(variable: str) -> str:
    """The image's conversion of a variable name (without ``KAFKA_``) to a property."""
    dotted = re.sub(r"[^_]_[^_]", lambda m: m.group(0).replace("_", "."), variable)
    return dotted.replace("___", "-").replace("__", "_").lower()


def nodes() -> dict[str, dict[str, str]]:
    """Every Kafka node's environment, by ``file:service``."""
    out = {}
    for path in COMPOSE:
        compose: dict[str, Any] = yaml.safe_load(path.read_text())
        for name, service in compose["services"].items():
            if str(service.get("image", "")).startswith("apache/kafka:"):
                out[f"{path.name}:{name}"] = {
                    k: str(v).lower() if isinstance(v, bool) else str(v)
                    for k, v in service["environment"].items()
                }
    out["streams/containers.py"] = {
        **containers.kafka_environment(),
        "KAFKA_ADVERTISED_LISTENERS": containers.kafka_advertised("localhost:32768"),
    }
    return out


@pytest.fixture(scope="module")
def kafka_tools() -> tuple[str, Path]:
    try:
        return brokers._java(), brokers.kafka_libs()
    except brokers.BrokerUnavailable as exc:  # the project's own requirement, as in conftest
        pytest.fail(f"no Apache Kafka tools: {exc}", pytrace=False)


def format_storage(
    tools: tuple[str, Path], env: dict[str, str], folder: Path
) -> subprocess.CompletedProcess[str]:
    java, libs = tools
    props = {
        property_name(k.removeprefix("KAFKA_")): v for k, v in env.items() if k.startswith("KAFKA_")
    }
    props["log.dirs"] = str(folder / "data")
    config = folder / "server.properties"
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    # A short-lived JVM: the quick compiler and the serial collector start it fastest.
    cmd = [java, "-Xmx128m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-cp", f"{libs}/*"]
    cmd += ["kafka.tools.StorageTool", "format"]
    cmd += ["-t", env["CLUSTER_ID"], "-c", str(config), "--ignore-formatted"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_property_names_follow_the_image() -> None:
    assert property_name("MIN_INSYNC_REPLICAS") == "min.insync.replicas"
    assert property_name("LISTENER_NAME_INTERNAL_SASL__MECH") == "listener.name.internal.sasl_mech"
    assert property_name("SOME___DASHED") == "some-dashed"


@pytest.mark.parametrize("node", sorted(nodes()))
def test_kafka_accepts_the_node_settings(
    node: str, kafka_tools: tuple[str, Path], tmp_path: Path
) -> None:
    env = nodes()[node]
    assert not IMAGE_DEFAULTS - set(env), f"{node} leaves {IMAGE_DEFAULTS - set(env)} to the image"
    done = format_storage(kafka_tools, env, tmp_path)
    assert done.returncode == 0, f"{node}:\n{(done.stdout + done.stderr)[-3000:]}"
    assert "Formatting metadata directory" in done.stdout


def test_a_broken_node_is_refused(kafka_tools: tuple[str, Path], tmp_path: Path) -> None:
    """The check can fail: a node that is not among the voters is what Kafka refuses."""
    env = dict(nodes()["docker-compose.cluster.yml:kafka-1"])
    env["KAFKA_NODE_ID"] = "4"
    done = format_storage(kafka_tools, env, tmp_path)
    assert done.returncode != 0
    assert "must be included in the set of voters" in done.stderr
