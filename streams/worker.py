"""`recstream worker [--role all|rank|encode]`: resolve the broker, create the topics, run.

- ``rank``: the Faust app of user events, requests and the item side (streams/app.py), over
  the catalog it reads whole (streams/catalog_reader.py); workers with one RECSTREAM_APP_ID
  form one consumer group and share the users' and items' partitions.
- ``encode``: the encoding stage alone (streams/encode_stage.py: content -> encoders ->
  Qdrant and the items topic), in its own consumer group; scales apart from ranking.
- ``all`` (the default): both in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from typing import TYPE_CHECKING

import faust

from recstream.clock import now_ms
from recstream.ranking.catalog import Catalog, CatalogParams
from recstream.ranking.params import model_params
from recstream.ranking.step import OnlineModel
from recstream.ranking.warm import warm_up
from recstream.streams import broker as brokers
from recstream.streams.app import TopicNames, build_app, topic_specs
from recstream.streams.catalog_reader import CatalogReader
from recstream.streams.settings import DEFAULT_BOOTSTRAP, Settings

if TYPE_CHECKING:  # imported where used: a ranking-only worker loads no encoder, store or
    # their dependencies (onnxruntime, tokenizers, Pillow, PyAV, qdrant-client)
    from recstream.ranking.store import ItemStore
    from recstream.streams.encode_stage import EncodeStage

log = logging.getLogger(__name__)


def resolve_broker(settings: Settings) -> brokers.LocalKafka | None:
    """Start the local Apache Kafka broker (its data under RECSTREAM_DATA_DIR/kafka) when no
    broker was configured and none listens at the default address. Returns the broker we
    started (the caller stops it), else None."""
    k = settings.kafka
    explicit = "bootstrap_servers" in k.model_fields_set
    if explicit or not k.start_local_broker or brokers.is_listening(k.bootstrap_servers):
        return None
    _, port = brokers.split_host_port(DEFAULT_BOOTSTRAP)
    log.info("no broker at %s: starting the local Apache Kafka broker", k.bootstrap_servers)
    return brokers.LocalKafka(
        port=port, data_dir=settings.data_dir / "kafka", heap_mb=k.local_heap_mb
    ).start()


def open_store(settings: Settings, dims: dict[str, int]) -> ItemStore:
    """The item store the settings name: a Qdrant server (RECSTREAM_QDRANT_URL), else the
    embedded engine (RECSTREAM_QDRANT_BACKEND). Every modality's vector exists from the start
    (an item may lack any), plus RECSTREAM_QDRANT_EXTRA_VECTORS."""
    from recstream.ranking import store as stores
    from recstream.ranking.store import MODALITY_DIMS

    q = settings.qdrant
    if not q.url and settings.qdrant_location() != ":memory:":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return stores.connect(
        url=q.url,
        api_key=q.api_key,
        location=settings.qdrant_location(),
        collection=q.collection,
        dims={**MODALITY_DIMS, **dims, **q.extra_vectors},
        timeout_s=q.timeout_s,
        backend=q.backend,
        **q.edge_options(),
    )


def new_catalog(settings: Settings) -> Catalog:
    r = settings.ranking
    return Catalog(
        settings.encoder.dims(),
        model_params(r).cooc,
        CatalogParams(
            seen_bits=r.seen_filter_bits,
            content_k=r.content_neighbours,
            dense_limit=r.full_scan_items,
        ),
    )


def encode_stage(settings: Settings, names: TopicNames) -> EncodeStage:
    """The encoding stage: every enabled modality's encoder (exported on first use), the
    media fetcher and the item store."""
    from recstream.encoders.pipeline import ContentEncoder
    from recstream.streams.encode_stage import EncodeStage

    encoder = ContentEncoder.from_settings(settings.encoder, settings.media)
    store = open_store(settings, dict(encoder.dims))
    e = settings.encoder
    return EncodeStage(
        kafka_kwargs=settings.kafka.client_kwargs(),
        group_id=f"{settings.app_id}-encode",
        content_topic=names.content,
        items_topic=names.items,
        indexed_topic=names.indexed,
        dead_letters_topic=names.dead_letters,
        encoder=encoder,
        store=store,
        batch_size=e.batch_size,
        batch_ms=e.batch_ms,
        max_message_bytes=settings.max_message_bytes,
        neighbours=settings.ranking.content_neighbours,
    )


def run_worker(settings: Settings, role: str = "all") -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    local = resolve_broker(settings)
    if local is not None:
        settings.kafka.bootstrap_servers = local.bootstrap_servers
    try:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        k = settings.kafka
        created = loop.run_until_complete(
            brokers.ensure_topic_specs(
                k.bootstrap_servers, topic_specs(settings), admin_kwargs=k.client_kwargs()
            )
        )
        if created:
            log.info("created topics: %s", ", ".join(created))
        names = TopicNames.from_settings(settings)
        stage = encode_stage(settings, names) if role in ("all", "encode") else None
        if stage is not None:
            loop.run_until_complete(stage.store.ensure_collection())
        log.info(
            "role %s, broker %s, qdrant %s", role, k.bootstrap_servers,
            settings.qdrant.url or settings.qdrant_location(),
        )  # fmt: skip
        if role == "encode":
            assert stage is not None
            loop.run_until_complete(_encode_only(stage))
            return
        catalog = new_catalog(settings)
        model = OnlineModel(catalog, model_params(settings.ranking))
        # numba's compiling (seconds on a fresh machine) before the catalog and the group
        log.info("online model's kernels ready in %.1f s", warm_up(model, now_ms()))
        reader = CatalogReader(catalog, k.client_kwargs(), names.items, names.item_stats)
        # The whole catalog before the worker joins its consumer group: partitions are only
        # taken by a worker that can serve them (and none sits idle in the group meanwhile).
        loop.run_until_complete(reader.start())
        loop.run_until_complete(reader.catch_up())
        app, _ = build_app(settings, model=model, reader=reader, encode_stage=stage)
        # What exists now (modules, the encoders' and store's Python side, the app) lives as
        # long as the process: move it out of the cyclic collector's reach, or every full
        # collection walks all of it (measured: 0.1-0.5 s pauses mid-stream, the p99).
        gc.collect()
        gc.freeze()
        worker = faust.Worker(
            app, loop=loop, loglevel=settings.log_level, quiet=True, override_logging=False
        )
        try:
            worker.execute_from_commandline()
        finally:
            if stage is not None:
                stage.encoder.close()
    finally:
        if local is not None:
            local.stop()


async def _encode_only(stage: EncodeStage) -> None:
    """The encoding stage until SIGTERM / SIGINT."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: task.cancel() if task else None)
    await stage.start()
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await stage.run()
    finally:
        await stage.stop()
        stage.encoder.close()
