"""Faust's aiokafka transport with a configurable consumer fetch wait, and a side producer.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. Real Kafka answers a
waiting fetch as soon as data arrives, so that costs nothing there; Tansu always waits the full
time, which would add ~1.5 s to every hop. This transport lets the worker set it.

On Tansu, Faust's producer sends one record per batch (the changelog workaround, see
streams/app.py); aiokafka then lets one record per partition wait for the previous one's
round trip, which capped a worker at ~45 events/s. Topics no table is recovered from
(recommendations, item activity, dead letters) go through a ``SideProducer`` with normal
batching instead; Faust's commit flushes it first (``Producer.flush`` below), so at-least-once
holds as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka
import faust
from aiokafka import AIOKafkaProducer
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: int | None = None

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        if self.fetch_max_wait_ms is not None:
            # Read by AIOKafkaConsumer.start() when it builds its Fetcher (not started yet).
            consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


def transport_class(fetch_max_wait_ms: int | None) -> type[faust_aiokafka.Transport]:
    thread_cls = type(
        "ConsumerThread", (_ConsumerThread,), {"fetch_max_wait_ms": fetch_max_wait_ms}
    )

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return thread_cls(self, loop=self.loop, beacon=self.beacon)

    class Producer(faust_aiokafka.Producer):
        async def flush(self) -> None:
            await super().flush()
            side = getattr(self.app, "side_producer", None)
            if side is not None:  # before Faust commits the input offsets
                await side.flush()

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    Transport.Producer = Producer
    return Transport


class SideProducer:
    """A plain aiokafka producer (normal batching), started on first use."""

    def __init__(self, bootstrap_servers: str):
        self.bootstrap_servers = bootstrap_servers
        self._producer: AIOKafkaProducer | None = None  # needs the running loop
        self._started: asyncio.Future[None] | None = None

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self._started is None:
            self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, linger_ms=0)
            self._started = asyncio.ensure_future(self._producer.start())
        await self._started
        assert self._producer is not None
        await self._producer.send(topic, value, key=key)  # enqueued; delivery is flush's job

    async def flush(self) -> None:
        if self._started is not None and self._producer is not None:
            await self._started
            await self._producer.flush()

    async def stop(self) -> None:
        if self._started is not None and self._producer is not None:
            await self._producer.stop()


class SideSink:
    """A topic written through the side producer (the ``Sink`` protocol of streams.agents)."""

    def __init__(self, producer: SideProducer, topic: str):
        self.producer = producer
        self.topic = topic

    async def send(self, *, key: bytes | None, value: bytes) -> None:
        await self.producer.send(self.topic, key, value)


class RecstreamApp(faust.App):
    """faust.App whose consumer uses :func:`transport_class`."""

    fetch_max_wait_ms: int | None = None
    side_producer: SideProducer | None = None

    def _new_transport(self) -> Any:
        cls = transport_class(self.fetch_max_wait_ms)
        return cls(self.conf.broker_consumer, self)
