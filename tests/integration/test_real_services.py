"""The same app-level scenario against Apache Kafka and a Qdrant server in Docker containers
(streams/containers.py: the images `recstream demo --docker` and deploy/ use).

Needs a Docker engine; skipped with the reason where none answers (as in CI here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from recstream.streams import containers
from tests.conftest import AppHarness, settings_for
from tests.integration.test_end_to_end import personal_lists_scenario

NO_DOCKER = containers.docker_problem()

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(NO_DOCKER is not None, reason=NO_DOCKER or ""),
]


@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    container, address = containers.start_kafka()
    try:
        yield address
    finally:
        container.stop()


@pytest.fixture(scope="module")
def qdrant() -> Iterator[str]:
    container, url = containers.start_qdrant()
    try:
        yield url
    finally:
        container.stop()


def test_real_kafka_and_qdrant_server(make_worker, worker_env, kafka, qdrant, catalog) -> None:
    env = {"RECSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka, "RECSTREAM_QDRANT_URL": qdrant}
    worker = make_worker(**env)
    settings = settings_for({**worker_env, **env})

    async def scenario() -> None:
        async with AppHarness(settings, worker) as app:
            await personal_lists_scenario(app, catalog)

    asyncio.run(scenario())
