"""The Faust relay: the floor Faust itself sets. A Faust app configured like the worker
(streams/app.py's faust_config: the same broker, consumer and producer settings, events taken
in batches as RECSTREAM_EVENTS_BATCH_SIZE/_MS say), whose one agent answers each event with the
bare relay's trivial list: no state, no table, no vector store.

    python -m recstream.bench.relay_faust EVENTS_TOPIC RECOMMENDATIONS_TOPIC

Settings come from the environment (RECSTREAM_KAFKA_BOOTSTRAP_SERVERS, RECSTREAM_APP_ID,
RECSTREAM_DATA_DIR, ...), as for the worker. recstream/bench/latency.py runs it beside the bare
aiokafka relay and the worker: recstream's latency minus this one's is recstream's own cost,
this one's minus the bare relay's is Faust's.
"""

from __future__ import annotations

import asyncio
import sys

import faust

from recstream.bench.relay import answer
from recstream.streams.app import faust_config
from recstream.streams.faust_internals import RecstreamApp
from recstream.streams.settings import Settings


def build(settings: Settings, events: str, recommendations: str) -> faust.App:
    k = settings.kafka
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = RecstreamApp(settings.app_id, **faust_config(settings))
    app.fetch_max_wait_ms = k.fetch_max_wait_ms

    def raw(name: str) -> faust.TopicT:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=k.partitions)  # fmt: skip

    source, sink = raw(events), raw(recommendations)

    async def send(msg: faust.types.Message) -> None:
        if msg.value is None:  # a tombstone: no event to answer (orjson.loads(None) raised too)
            raise TypeError(f"no event in {msg.topic}[{msg.partition}]@{msg.offset}: no value")
        await sink.send(key=msg.key, value=answer(msg.value))

    size, wait_ms = settings.events_batch_size, settings.events_batch_ms

    @app.agent(source, name="relay")
    async def relay(stream: faust.StreamT) -> None:
        if size > 1:
            # faust's StreamT declares no take_events (faust.Stream, the runtime type, has it)
            async for evs in stream.take_events(  # type: ignore[attr-defined]
                size, within=wait_ms / 1000
            ):
                for e in evs:
                    await send(e.message)
        else:
            async for e in stream.events():
                await send(e.message)

    return app


def main(argv: list[str]) -> None:
    events, recommendations = argv
    settings = Settings()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = build(settings, events, recommendations)
    worker = faust.Worker(app, loop=loop, loglevel="WARNING", quiet=True, override_logging=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
