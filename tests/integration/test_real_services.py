"""The same app-level scenario against real Apache Kafka and a Qdrant server (testcontainers).

Needs a Docker engine; skipped with the reason where none answers (as in CI here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.conftest import AppHarness, docker_available, settings_for
from tests.integration.test_end_to_end import personal_lists_scenario

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_available(), reason="no Docker engine answers here"),
]


@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer("confluentinc/cp-kafka:7.6.1") as k:
        yield k.get_bootstrap_server()


@pytest.fixture(scope="module")
def qdrant() -> Iterator[str]:
    from testcontainers.qdrant import QdrantContainer

    with QdrantContainer("qdrant/qdrant:v1.13.4") as q:
        yield f"http://{q.rest_host_address}"


def test_real_kafka_and_qdrant_server(make_worker, worker_env, kafka, qdrant, catalog) -> None:
    env = {"RECSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka, "RECSTREAM_QDRANT_URL": qdrant}
    worker = make_worker(**env)
    settings = settings_for({**worker_env, **env})

    async def scenario() -> None:
        async with AppHarness(settings, worker) as app:
            await personal_lists_scenario(app, catalog)

    asyncio.run(scenario())
