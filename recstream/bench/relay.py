"""The bare relay: the floor the broker sets. One aiokafka consumer and producer, no state, no
vector store: each event is answered at once with a trivial list, in recstream's wire format.

    python -m recstream.bench.relay BOOTSTRAP EVENTS_TOPIC RECOMMENDATIONS_TOPIC FETCH_MAX_WAIT_MS

recstream/bench/latency.py runs it as a subprocess on the same broker, driven by the same load
generator, so recstream's figures can be read against it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ITEMS = [{"item_id": f"relay-{n}", "score": 1.0 - n / 10, "reason": "relay"} for n in range(10)]


def answer(event: bytes) -> bytes:
    """The relays' answer to an event: the fixed list, in recstream's wire format."""
    ev = orjson.loads(event)
    out = {
        "schema_version": 1,
        "user_id": ev["user_id"],
        "items": ITEMS,
        "trigger": ev.get("event_id"),
        "source_ts": ev.get("ts"),
        "generated_at": time.time_ns() // 1_000_000,
    }
    return orjson.dumps(out)


async def relay(bootstrap: str, events: str, recommendations: str, fetch_max_wait_ms: int) -> None:
    consumer = AIOKafkaConsumer(
        events,
        bootstrap_servers=bootstrap,
        group_id=f"relay-{events}",
        auto_offset_reset="latest",
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("relay ready", flush=True)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            for msgs in batches.values():
                for m in msgs:
                    await producer.send(recommendations, answer(m.value), key=m.key)
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    bootstrap, events, recs, wait_ms = sys.argv[1:5]
    asyncio.run(relay(bootstrap, events, recs, int(wait_ms)))
