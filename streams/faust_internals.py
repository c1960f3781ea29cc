"""Every private faust-streaming and aiokafka internal recstream touches, in one module.

Neither library exposes these, and each is checked against the versions below when this
module is imported: another version fails at once with a sentence saying what to pin, instead
of misbehaving later. What the worker needs:

1. The worker consumer's fetch wait: Faust hard-codes ``fetch_max_wait_ms=1500`` for it
   (``AIOKafkaConsumerThread._create_worker_consumer``); :class:`RecstreamApp` applies
   RECSTREAM_KAFKA_FETCH_MAX_WAIT_MS (aiokafka reads ``_fetch_max_wait_ms`` when it starts).
2. The event a table write is attributed to (``faust.streams._current_event``): a Table sends
   each change to the changelog partition of the current event, and a handler of a
   ``take_events`` batch runs outside the stream's own iteration (:func:`set_current_event`).
3. The offset Faust seeked a partition to when it was assigned (``Consumer._committed_offset``),
   where SkipGuard (streams/skip_guard.py) expects its stream to resume.
"""

from __future__ import annotations

import importlib.metadata
import weakref
from typing import Any

import aiokafka
import faust
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as faust_aiokafka

# distribution -> the versions these internals were read in (exact, or a "0.14." prefix)
CHECKED = {"faust-streaming": ("0.15.3",), "aiokafka": ("0.14.",)}


def _check_versions() -> None:
    for dist, ok in CHECKED.items():
        have = importlib.metadata.version(dist)
        if not any(have == v or (v.endswith(".") and have.startswith(v)) for v in ok):
            raise ImportError(
                f"recstream uses private internals of {dist} that were checked in "
                f"{' / '.join(v + ('x' if v.endswith('.') else '') for v in ok)}, and "
                f"{have} is installed: install the checked version (pip install "
                f"'{dist}=={ok[0].rstrip('.')}{'.*' if ok[0].endswith('.') else ''}') or "
                "re-check streams/faust_internals.py against the new one"
            )


_check_versions()


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: int | None = None

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        if self.fetch_max_wait_ms is not None:
            # Read by AIOKafkaConsumer.start() when it builds its Fetcher (not started yet).
            consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


def _transport_class(fetch_max_wait_ms: int | None) -> type[faust_aiokafka.Transport]:
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
    """faust.App whose worker consumer waits ``fetch_max_wait_ms`` for a fetch (None: Faust's
    1500)."""

    fetch_max_wait_ms: int | None = None

    def _new_transport(self) -> Any:
        cls = _transport_class(self.fetch_max_wait_ms)
        return cls(self.conf.broker_consumer, self)


def set_current_event(event: Any) -> None:
    """Make ``event`` Faust's current event: the next table write goes to its changelog
    partition."""
    _current_event.set(weakref.ref(event))


def committed_offset(app: faust.App, tp: Any) -> int | None:
    """The offset Faust's consumer seeked ``tp`` to when it was assigned (its committed
    offset; None before any)."""
    return getattr(app.consumer, "_committed_offset", {}).get(tp)
