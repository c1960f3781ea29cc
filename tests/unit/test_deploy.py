"""deploy/: the compose files agree with the code they run (no Docker engine needed).

Every RECSTREAM_* variable a compose file sets must be a setting the worker reads (a typo is
silently ignored by pydantic-settings), with a value it accepts; the images are the versions
the code pins; the cluster's replication settings tolerate one broker down. Also:
``recstream demo --docker`` where no engine answers.
"""

from __future__ import annotations

import base64
import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from recstream.streams import containers
from recstream.streams.broker import KAFKA_VERSION
from recstream.streams.cli import main
from recstream.streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SINGLE = ROOT / "deploy" / "docker-compose.yml"
CLUSTER = ROOT / "deploy" / "docker-compose.cluster.yml"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "NAME=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def setting_names() -> set[str]:
    """RECSTREAM_* names pydantic-settings reads: each section class has its own prefix."""
    names: set[str] = set()
    top = Settings.model_config["env_prefix"]
    for field, info in Settings.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseSettings):
            prefix = section.model_config["env_prefix"]
            names |= {f"{prefix}{f}".upper() for f in section.model_fields}
        else:
            names.add(f"{top}{field}".upper())
    return names


def kafka_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in compose["services"].items()
        if str(s.get("image", "")).startswith("apache/kafka:")
    }


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)}."""
    out = {}
    for part in value.split(","):
        name, _, address = part.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def worker_settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os

    for name in list(os.environ):
        if name.startswith("RECSTREAM_"):
            monkeypatch.delenv(name)
    for name, value in env_of(compose["services"]["worker"]).items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.mark.parametrize("path", [SINGLE, CLUSTER], ids=lambda p: p.name)
def test_worker_variables_are_settings_with_valid_values(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compose = load(path)
    valid = setting_names()
    assert "RECSTREAM_KAFKA_BOOTSTRAP_SERVERS" in valid and "RECSTREAM_QDRANT_URL" in valid
    for name, service in compose["services"].items():
        unknown = {v for v in env_of(service) if v.startswith("RECSTREAM_")} - valid
        assert not unknown, f"{path.name}: {name} sets {sorted(unknown)}, which nothing reads"
    s = worker_settings(compose, monkeypatch)  # pydantic refuses a value of the wrong type
    assert s.qdrant.url == "http://qdrant:6333"
    assert not s.kafka.start_local_broker
    assert "bootstrap_servers" in s.kafka.model_fields_set


@pytest.mark.parametrize("path", [SINGLE, CLUSTER], ids=lambda p: p.name)
def test_images_are_the_pinned_versions(path: Path) -> None:
    compose = load(path)
    kafka = kafka_services(compose)
    assert kafka
    for name, service in kafka.items():
        assert service["image"] == f"apache/kafka:{KAFKA_VERSION}", name
        assert service["image"] == containers.KAFKA_IMAGE
    assert compose["services"]["qdrant"]["image"] == containers.QDRANT_IMAGE


def check_kafka_nodes(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What a KRaft cluster of combined nodes needs, and what the worker is told about it."""
    nodes = kafka_services(compose)
    envs = {name: env_of(s) for name, s in nodes.items()}
    ids = {name: int(e["KAFKA_NODE_ID"]) for name, e in envs.items()}
    assert len(set(ids.values())) == len(nodes), "node ids are unique"
    cluster_ids = {e["CLUSTER_ID"] for e in envs.values()}
    assert len(cluster_ids) == 1, "one cluster"
    (cluster_id,) = cluster_ids
    assert len(cluster_id) == 22 and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    s = worker_settings(compose, monkeypatch)
    bootstrap = set(s.kafka.bootstrap_servers.split(","))
    for name, env in envs.items():
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        voters = dict(v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert {int(i) for i in voters} == set(ids.values()), f"{name}: every node votes"
        inverse = {n: i for i, n in ids.items()}
        for i, address in voters.items():
            voter_host, voter_port = address.split(":")
            assert voter_host == nodes[inverse[int(i)]]["hostname"]
            assert listeners(env["KAFKA_LISTENERS"])["CONTROLLER"][1] == int(voter_port)
        bound = listeners(env["KAFKA_LISTENERS"])
        advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        protocols = dict(
            p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
        )
        assert set(bound) == set(protocols)
        assert set(advertised) == set(bound) - {"CONTROLLER"}
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
        # Containers reach the node on its INTERNAL address; the worker bootstraps from them.
        internal_host, internal_port = advertised["INTERNAL"]
        assert internal_host == nodes[name]["hostname"]
        assert internal_port == bound["INTERNAL"][1]
        assert f"{internal_host}:{internal_port}" in bootstrap
        # The host reaches it on the published port it is advertised with.
        external_host, external_port = advertised["EXTERNAL"]
        assert external_host == "localhost"
        assert f"{external_port}:{bound['EXTERNAL'][1]}" in nodes[name]["ports"]
        # Every replication factor fits the cluster and tolerates len - min ISR brokers down.
        rf = int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"])
        assert rf == int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == len(nodes)
        assert rf == int(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"])
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == int(
            env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]
        )
        assert int(env["KAFKA_NUM_PARTITIONS"]) == s.kafka.partitions
    assert len(bootstrap) == len(nodes)
    assert s.kafka.replication_factor == len(nodes)
    return s


def test_single_node_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = load(SINGLE)
    check_kafka_nodes(compose, monkeypatch)
    (env,) = (env_of(s) for s in kafka_services(compose).values())
    assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "1"


def test_cluster_survives_one_broker_down(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = load(CLUSTER)
    check_kafka_nodes(compose, monkeypatch)
    nodes = kafka_services(compose)
    assert len(nodes) == 3
    for env in map(env_of, nodes.values()):
        assert len(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == 3
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
    worker = compose["services"]["worker"]
    assert set(worker["depends_on"]) == {*nodes, "qdrant"}
    # Host ports of the two files are the same: they are run one at a time, never together.
    single = load(SINGLE)["services"]
    assert compose["services"]["qdrant"]["ports"] == single["qdrant"]["ports"]


def test_the_image_build_context_holds_every_package() -> None:
    """deploy/Dockerfile runs `pip install .` on the build context that .dockerignore
    filters: a package folder (or the README pyproject names) left out fails the build."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = [*project["tool"]["setuptools"]["packages"], project["project"]["readme"]]
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in needed:
        hits = [p for p in patterns if fnmatch.fnmatch(path, p.rstrip("/"))]
        assert not hits, f".dockerignore drops {path} ({hits}): the image build would fail"


def test_demo_docker_without_an_engine_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A socket nobody listens on: the same answer as a machine without Docker, wherever run.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    assert main(["demo", "--docker", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(r"recstream demo --docker: no Docker engine answers at .+\.", lines[0])
    assert str(tmp_path / "docker.sock") in lines[0]
