"""`recstream worker`: resolve the broker, prepare topics, models and Qdrant, run Faust."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from encoders.base import Encoder
from encoders.text import TextEncoder
from ranking.store import ItemStore
from streams import broker as brokers
from streams.app import TopicNames, build_app
from streams.settings import DEFAULT_BOOTSTRAP, Settings

log = logging.getLogger(__name__)


def resolve_broker(settings: Settings) -> brokers.LocalBroker | None:
    """Start the bundled Tansu broker when no broker was configured and none listens at the
    default address. Returns the broker we started (the caller stops it), else None."""
    k = settings.kafka
    explicit = "bootstrap_servers" in k.model_fields_set
    if explicit or not k.start_local_broker or brokers.is_listening(k.bootstrap_servers):
        return None
    _, port = brokers.split_host_port(DEFAULT_BOOTSTRAP)
    log.info("no broker at %s: starting the local Tansu broker", k.bootstrap_servers)
    return brokers.LocalBroker(port=port).start()


def load_encoders(settings: Settings) -> dict[str, Encoder[Any]]:
    e = settings.encoder
    text = TextEncoder(
        e.model_dir, device=e.device, intra_op_threads=e.intra_op_threads, max_tokens=e.max_tokens
    )
    return {"text": text}


async def prepare(settings: Settings, encoders: dict[str, Encoder[Any]]) -> tuple[str, ItemStore]:
    k = settings.kafka
    flavor = k.flavor if k.flavor != "auto" else await brokers.detect_flavor(k.bootstrap_servers)
    created = await brokers.ensure_topics(
        k.bootstrap_servers,
        TopicNames.from_settings(settings).all(),
        partitions=k.partitions,
        replication_factor=k.replication_factor,
    )
    if created:
        log.info("created topics: %s", ", ".join(created))
    return flavor, open_store(settings, {m: enc.dim for m, enc in encoders.items()})


def open_store(settings: Settings, dims: dict[str, int]) -> ItemStore:
    q = settings.qdrant
    if not q.url and settings.qdrant_location() != ":memory:":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return ItemStore.connect(
        url=q.url,
        api_key=q.api_key,
        location=settings.qdrant_location(),
        collection=q.collection,
        dims=dims,
        timeout_s=q.timeout_s,
    )


def run_worker(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    local = resolve_broker(settings)
    if local is not None:
        settings.kafka.bootstrap_servers = local.bootstrap_servers
    try:
        encoders = load_encoders(settings)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        flavor, store = loop.run_until_complete(prepare(settings, encoders))
        loop.run_until_complete(store.ensure_collection())
        log.info(
            "broker %s (%s), qdrant %s, encoders %s",
            settings.kafka.bootstrap_servers,
            flavor,
            settings.qdrant.url or settings.qdrant_location(),
            {m: f"{type(e).__name__}[{e.dim}]" for m, e in encoders.items()},
        )
        app, handlers = build_app(settings, flavor=flavor, store=store, encoders=encoders)
        worker = faust.Worker(
            app, loop=loop, loglevel=settings.log_level, quiet=True, override_logging=False
        )
        try:
            worker.execute_from_commandline()
        finally:
            handlers.close()
    finally:
        if local is not None:
            local.stop()
