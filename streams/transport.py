"""Faust's aiokafka transport with a configurable consumer fetch wait.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. Real Kafka answers a
waiting fetch as soon as data arrives, so that costs nothing there; Tansu always waits the full
time, which would add ~1.5 s to every hop. This transport lets the worker set it.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
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

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport


class RecstreamApp(faust.App):
    """faust.App whose consumer uses :func:`transport_class`."""

    fetch_max_wait_ms: int | None = None

    def _new_transport(self) -> Any:
        cls = transport_class(self.fetch_max_wait_ms)
        return cls(self.conf.broker_consumer, self)
