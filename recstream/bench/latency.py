"""`recstream bench`: event -> recommendation latency and throughput, seen from outside.

    recstream bench --rate 200 1000 3000 --seconds 60 [--items 100000] [--users 100000]
                    --report OUT.json [--plot OUT.png] [--ingest 2000]

For each rate, the same load generator (this process: an aiokafka producer at a fixed rate and
a consumer of the recommendations topic; latency = consumed minus produced, same clock) drives
first the bare relay (recstream/bench/relay.py) and then a `recstream worker` subprocess, on the
same broker. Reported: p50/p95/p99/max, achieved rate (answers per second), lag over time (events
produced but not yet answered, each second), the worker's CPU and peak RSS (psutil). The
catalog is synthetic (recstream/bench/catalog.py, said so in the report); users are drawn uniformly
from --users ids, items on a Zipf curve. ``--ingest N`` adds a content-ingestion run: N real
texts through the encoder, items/s and publish-to-searchable (the content-indexed topic).

Local Tansu broker and the embedded store by default; RECSTREAM_KAFKA_BOOTSTRAP_SERVERS and
RECSTREAM_QDRANT_URL / _BACKEND select others. Report format (stable): the top level holds the
last rate's figures (``rate``, ``achieved_rate``, ``p50_ms``, ``p95_ms``, ``p99_ms``,
``max_ms``, ``worker_peak_rss_mb``, ``relay``: the same latency keys), ``runs`` every rate's.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import platform
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson

from recstream.bench import catalog
from recstream.bench.ingest import content_beside, encoder_ready
from recstream.bench.load import (
    LoadResult,
    Procs,
    drive,
    publish_items,
    start_relay,
    start_worker,
    stop,
)
from recstream.ranking.params import model_params
from recstream.streams import broker as brokers
from recstream.streams.app import TopicNames, topic_specs
from recstream.streams.settings import EncoderSettings, Settings
from recstream.streams.worker import open_store


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recstream bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--rate",
        type=int,
        nargs="+",
        help="events/s (several: each); default 200, none when only --ingest is asked for",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="per rate and system")
    p.add_argument("--items", type=int, default=100_000, help="synthetic catalog size")
    p.add_argument("--users", type=int, default=100_000, help="user ids drawn uniformly")
    p.add_argument("--report", type=Path, required=True, help="JSON report")
    p.add_argument("--plot", type=Path, help="PNG of latency percentiles vs rate (default: "
                   "next to the report)")  # fmt: skip
    p.add_argument("--ingest", type=int, default=0, help="content-ingestion run of N items")
    p.add_argument(
        "--ingest-rate",
        type=float,
        default=0.0,
        help="items/s published in the ingestion run (0: as fast as possible)",
    )
    p.add_argument(
        "--ingest-media",
        choices=["text", "image"],
        default="text",
        help="ingestion items: text only, or text + a JPEG each (file://)",
    )
    p.add_argument(
        "--catalog",
        choices=["synthetic", "ml-100k"],
        default="synthetic",
        help="synthetic: --items random vectors written into the store; ml-100k: MovieLens-100k's "
        "1,682 films published to the content topic and encoded by the worker (real MiniLM "
        "vectors), and its 100,000 ratings replayed in time order as the events",
    )
    p.add_argument(
        "--content-rate",
        type=float,
        default=0.0,
        help="text items/s published to the content topic during each worker run (encoded by "
        "a separate `--role encode` worker whose store holds the synthetic catalog); reported: "
        "publish -> content-indexed p50/p99 while the events flow",
    )
    p.add_argument("--no-relay", action="store_true", help="skip the two relays' runs")
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="run the relays only (for comparing Kafka and Faust settings: RECSTREAM_KAFKA_*)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="run folder, kept afterwards (default: a temporary one, removed as the runs end: "
        "each rate's copy of the 100k catalog is ~1 GB)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy record the worker (.svg flame graph, .txt collapsed stacks)",
    )
    return p


def machine() -> dict[str, Any]:
    import psutil

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.rate is None:
        args.rate = [] if args.ingest else [200]
    if args.content_rate > 0 and args.catalog != "synthetic":
        _parser().error("--content-rate runs beside the synthetic catalog only")
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    settings = Settings()
    k = settings.kafka
    local = None
    if "bootstrap_servers" not in k.model_fields_set:
        local = brokers.LocalKafka(port=brokers.free_port_run(2), heap_mb=k.local_heap_mb)
        local.start()
        k.bootstrap_servers = local.bootstrap_servers
        node = local.node(1).process
        args.broker_pid = node.pid if node is not None else None
    work = args.workdir or Path(tempfile.mkdtemp(prefix="recstream-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = settings.data_dir.parent / "bench"
    backend = "client" if settings.qdrant.backend == "client" else "edge"
    runs: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "machine": machine(),
        "broker": (
            f"local Apache Kafka {brokers.KAFKA_VERSION} at {k.bootstrap_servers}"
            if local is not None
            else k.bootstrap_servers
        ),
        "store": settings.qdrant.url or f"embedded ({backend})",
        "catalog": f"{args.items} synthetic items (random 384-d text vectors around 64 topics)",
        "users": args.users,
        "events": f"users uniform over {args.users}, items Zipf(0.8), types mixed",
        "seconds": args.seconds,
    }
    args.replay = None
    if args.catalog == "ml-100k" and args.rate:
        from recstream.ranking.evaluate.data import load_ml100k

        args.replay = load_ml100k()
        report["catalog"] = (
            f"MovieLens-100k: {args.replay.n_items} films (title, year, genres) published to the "
            "content topic and encoded by the worker (real text vectors)"
        )
        report["users"] = args.replay.n_users
        report["events"] = "MovieLens-100k ratings replayed in time order (view, value = rating/5)"
    try:
        for rate in args.rate:
            print(f"== {rate} events/s for {args.seconds:.0f} s", flush=True)
            run: dict[str, Any] = {"rate": rate}
            tag = uuid.uuid4().hex[:6]
            if not args.no_relay:
                for key, faust in (("relay", False), ("faust_relay", True)):
                    run[key] = await _relay_run(settings, rate, args, tag, work,
                                                faust=faust)  # fmt: skip
            if not args.no_worker:
                run.update(await _worker_run(settings, rate, args, tag, work, cache, backend))
            runs.append(run)
            _print_run(run)
            _write(args, report, runs)
        if runs:
            print(table(runs), flush=True)
        if args.ingest:
            report["ingest"] = await _ingest_run(settings, args, work)
            _write(args, report, runs)
    finally:
        if local is not None:
            local.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _env(settings: Settings, prefix: str, work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RECSTREAM_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "RECSTREAM_KAFKA_TOPIC_PREFIX": prefix,
        "RECSTREAM_APP_ID": f"bench-{prefix.rstrip('.')}",
        "RECSTREAM_DATA_DIR": str(work / "data"),
        "RECSTREAM_QDRANT_PATH": str(work / "store"),
        "RECSTREAM_ENCODER_MODEL_DIR": str(EncoderSettings().model_dir),
        "RECSTREAM_LOG_LEVEL": os.environ.get("RECSTREAM_LOG_LEVEL", "WARNING"),
    }


async def _relay_run(
    settings: Settings,
    rate: int,
    args: argparse.Namespace,
    tag: str,
    work: Path,
    *,
    faust: bool,
) -> dict[str, Any]:
    """The bare relay (recstream/bench/relay.py) or, ``faust``, the Faust relay
    (recstream/bench/relay_faust.py: Faust configured as the worker), driven like the worker."""
    k = settings.kafka
    prefix = f"{'frelay' if faust else 'relay'}{tag}."
    events, recs = prefix + k.events_topic, prefix + k.recommendations_topic
    await brokers.ensure_topics(k.bootstrap_servers, [events, recs], partitions=k.partitions,
                                replication_factor=k.replication_factor)  # fmt: skip
    if faust:
        env = _env(settings, prefix, work / f"faust-relay-{rate}")
        with (work / f"faust-relay-{rate}.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "recstream.bench.relay_faust", events, recs, env=env,
                stdout=log, stderr=log,
            )  # fmt: skip
    else:
        proc = await start_relay(k.bootstrap_servers, events, recs, k.fetch_max_wait_ms)
    name = "faust relay" if faust else "relay"
    try:
        res = await drive(settings, Procs(proc, None), events, recs, rate, args, name)
    finally:
        await stop(proc)
    return res.summary()


async def _worker_run(
    settings: Settings,
    rate: int,
    args: argparse.Namespace,
    tag: str,
    work: Path,
    cache: Path,
    backend: str,
) -> dict[str, Any]:
    k = settings.kafka
    prefix = f"rs{tag}."
    run_dir = work / f"rate-{rate}"
    env = _env(settings, prefix, run_dir)
    if args.replay is None:
        # The synthetic catalog, encoded: into the items topic before the worker starts (the
        # worker's catalog reader loads it as it would a catalog encoded earlier).
        ws = Settings()
        ws.app_id = env["RECSTREAM_APP_ID"]
        ws.kafka.bootstrap_servers = k.bootstrap_servers
        ws.kafka.topic_prefix = prefix
        await brokers.ensure_topic_specs(k.bootstrap_servers, topic_specs(ws))
        names = TopicNames.from_settings(ws)
        secs = await catalog.publish(
            k.bootstrap_servers, names.items, names.item_stats, k.partitions, cache,
            args.items, args.seed, model_params(ws.ranking).score,
        )  # fmt: skip
        print(f"  catalog of {args.items} items published in {secs:.1f} s", flush=True)
    # The synthetic catalog is encoded already: a ranking-only worker serves the events (an
    # ml-100k replay needs the worker's encoder for its films), and with --content-rate a
    # separate encoding worker, over a store holding the catalog, encodes the new items.
    encoder = None
    if args.content_rate > 0:  # (the synthetic catalog: checked in main)
        ws.qdrant.path = env["RECSTREAM_QDRANT_PATH"]
        store = open_store(ws, ws.encoder.dims())
        try:
            secs = await catalog.fill_store(store, cache, args.items, args.seed)
        finally:
            await store.close()
        print(f"  the encoding stage's store filled with the catalog in {secs:.1f} s", flush=True)
        encoder = await start_worker(env, run_dir / "encoder.log", role="encode")
    role = "all" if args.replay is not None else "rank"
    proc = await start_worker(env, run_dir / "worker.log", role=role)
    events, recs = prefix + k.events_topic, prefix + k.recommendations_topic
    try:
        if args.replay is not None:
            await publish_items(settings, proc, prefix, args.replay)
        during: Callable[[float], Coroutine[Any, Any, dict[str, Any]]] | None = None
        if encoder is not None:
            await encoder_ready(settings, prefix, encoder)
            during = functools.partial(content_beside, settings, prefix, encoder, args.content_rate)

        res: LoadResult = await drive(
            settings, Procs(proc, env), events, recs, rate, args, "recstream",
            requests_topic=prefix + k.requests_topic, spy_svg=args.profile, during=during,
        )  # fmt: skip
    finally:
        await stop(proc)
        if encoder is not None:
            await stop(encoder)
        if args.workdir is None:  # a temporary run folder: its store goes now
            shutil.rmtree(run_dir, ignore_errors=True)
    return {**res.summary(), "worker_role": role}


async def _ingest_run(settings: Settings, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from recstream.bench.ingest import ingest_run

    return await ingest_run(
        settings,
        args.ingest,
        work / "ingest",
        _env,
        rate=args.ingest_rate,
        media=args.ingest_media,
    )


def _print_run(run: dict[str, Any]) -> None:
    def line(name: str, r: dict[str, Any]) -> str:
        return (
            f"  {name:9s} p50 {r['p50_ms']:7.1f}  p95 {r['p95_ms']:7.1f}  p99 {r['p99_ms']:7.1f}  "
            f"max {r['max_ms']:7.1f} ms  achieved {r['achieved_rate']:7.1f}/s  "
            f"unanswered at the end {r['unanswered']}"
            + (
                f"  made after {r['made_p50_ms']:.0f} / {r['made_p99_ms']:.0f} ms"
                if not math.isnan(r.get("made_p50_ms", math.nan))
                else ""
            )
            + (
                f"  broker CPU {r['broker_cpu_percent']:.0f}%"
                if r.get("broker_cpu_percent")
                else ""
            )
        )

    if "relay" in run:
        print(line("relay", run["relay"]))
    if "faust_relay" in run:
        print(line("faust", run["faust_relay"]))
    if "p50_ms" not in run:
        return
    print(line("recstream", run))
    print(
        f"  worker CPU {run['worker_cpu_percent']:.0f}%  "
        f"peak RSS {run['worker_peak_rss_mb']:.0f} MB  "
        f"lag first/last third {run['lag_first_third']:.0f}/{run['lag_last_third']:.0f}",
        flush=True,
    )
    c = run.get("content")
    if c:
        print(
            f"  content   {c['indexed']}/{c['items']} text items at {c['rate']:g}/s searchable "
            f"p50 {c['searchable_p50_ms']:.1f}  p99 {c['searchable_p99_ms']:.1f}  "
            f"max {c['searchable_max_ms']:.1f} ms  encoder peak RSS "
            f"{c['encoder_peak_rss_mb']:.0f} MB",
            flush=True,
        )


def table(runs: list[dict[str, Any]]) -> str:
    """The runs as one Markdown table (what docs/benchmarks.md holds): per offered rate, each
    system's p50 / p99 and the rate it answered; the worker's CPU, peak RSS and backlog."""

    def cell(r: dict[str, Any] | None) -> str:
        if not r or "p50_ms" not in r:
            return "-"
        return f"{_ms(r['p50_ms'])} / {_ms(r['p99_ms'])}, {r['achieved_rate']:,.1f}/s"

    lines = [
        "| offered | bare relay | Faust relay | recstream | recstream CPU, peak RSS, backlog "
        "first -> last third |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        worker = (
            f"{run['worker_cpu_percent']:.0f}%, {run['worker_peak_rss_mb']:,.0f} MB, "
            f"{run['lag_first_third']:,.0f} -> {run['lag_last_third']:,.0f}"
            if "p50_ms" in run
            else "-"
        )
        lines.append(
            f"| {run['rate']:,}/s | {cell(run.get('relay'))} | {cell(run.get('faust_relay'))} "
            f"| {cell(run)} | {worker} |"
        )
    return "\n".join(lines)


def _ms(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.1f} ms"


def _write(args: argparse.Namespace, report: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    out = {**report, **runs[-1], "runs": runs} if runs else dict(report)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    if runs:
        _plot(args.plot or args.report.with_suffix(".png"), runs)


def _plot(path: Path, runs: list[dict[str, Any]]) -> None:
    """The latency plot, after the JSON report (optional: needs matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print(f"plot skipped ({path}): matplotlib is not installed (pip install "
              "'recstream[bench]'); the JSON report is written", flush=True)  # fmt: skip
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["rate"] for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
        if all(key in r for r in runs):
            ax.plot(rates, [r[key] for r in runs], style, label=f"recstream {key[:-3]}")
        if all("relay" in r for r in runs):
            ax.plot(rates, [r["relay"][key] for r in runs], style[0] + "--", alpha=0.4,
                    label=f"relay {key[:-3]}")  # fmt: skip
        if all("faust_relay" in r for r in runs):
            ax.plot(rates, [r["faust_relay"][key] for r in runs], style[0] + ":", alpha=0.6,
                    label=f"Faust relay {key[:-3]}")  # fmt: skip
    ax.set_xlabel("events/s")
    ax.set_ylabel("event -> recommendation latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("recstream vs bare and Faust relays (same broker, same load generator)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
