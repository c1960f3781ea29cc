"""The ``recstream`` command.

recstream demo [--docker]      the whole system on one machine, no configuration (--docker:
                               Kafka and Qdrant in Docker containers)
recstream broker [--nodes 3]   a local Apache Kafka broker (KRaft) or three-node cluster
recstream worker [--role R]    the stream worker: rank, encode or all (RECSTREAM_* settings)
recstream produce TOPIC [FILE] JSON lines (stdin without FILE) to a topic
recstream tail TOPIC           print a topic's messages as they arrive
recstream models export [M..] export the ONNX encoders into the model cache (default: all used)
recstream evaluate ...         offline quality evaluation (ranking/evaluate; --help for options)
recstream bench ...            latency/throughput benchmark against a bare relay (--help)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from recstream.streams.settings import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recstream", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo", help="run broker, worker, sample catalog and events; print recommendations"
    )
    d.add_argument("--users", type=int, default=12, help="simulated users (default 12)")
    d.add_argument("--events", type=int, default=240, help="user events to send (default 240)")
    d.add_argument("--rate", type=float, default=20.0, help="events per second (default 20)")
    d.add_argument("--quiet", action="store_true", help="print only the summary")
    d.add_argument(
        "--docker",
        action="store_true",
        help="run Apache Kafka and a Qdrant server in Docker containers (testcontainers) "
        "instead of the local broker and the embedded store; exits 2 where no Docker engine "
        "answers",
    )

    b = sub.add_parser("broker", help="run a local Apache Kafka broker (KRaft) in the foreground")
    b.add_argument("--port", type=int, default=9092, help="first broker port (default 9092)")
    b.add_argument(
        "--nodes", type=int, default=1, choices=(1, 3), help="1 broker, or a 3-broker cluster"
    )
    b.add_argument(
        "--ephemeral",
        action="store_true",
        help="keep the data in a temporary folder (default: <RECSTREAM_DATA_DIR>/kafka)",
    )
    b.add_argument(
        "--prepare",
        action="store_true",
        help="only resolve Kafka's jars with Maven (and check Java), then exit",
    )

    w = sub.add_parser("worker", help="run the stream worker")
    w.add_argument(
        "--role",
        choices=("all", "rank", "encode"),
        help="rank: events, requests and the item side; encode: content -> encoders -> "
        "Qdrant and the items topic; all: both (default: RECSTREAM_WORKER_ROLE, else all)",
    )

    pr = sub.add_parser("produce", help="send JSON lines to a topic (key: the schema's key field)")
    pr.add_argument("topic", help="topic name, e.g. content or user-events (prefix applied)")
    pr.add_argument("file", nargs="?", help="JSON lines file (default: stdin)")
    pr.add_argument("--key-field", help="field whose value is the message key (default: by topic)")

    t = sub.add_parser("tail", help="print a topic's messages")
    t.add_argument("topic")
    t.add_argument("--from-beginning", action="store_true")
    t.add_argument("--max", type=int, default=0, help="stop after N messages (0: never)")

    m = sub.add_parser("models", help="model management")
    msub = m.add_subparsers(dest="models_command", required=True)
    ex = msub.add_parser("export", help="export ONNX encoders (needs recstream[export])")
    ex.add_argument(
        "--model-dir", help="default: RECSTREAM_ENCODER_MODEL_DIR or ~/.cache/recstream/models"
    )
    ex.add_argument("--force", action="store_true", help="export again even if already done")
    ex.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="text, image, audio, text-use or all (default: text image audio, plus text-use "
        "when RECSTREAM_ENCODER_TEXT_MODEL=use)",
    )
    # These two own their options (their modules parse the rest of the command line).
    sub.add_parser(
        "evaluate", help="offline quality evaluation on interaction data", add_help=False
    )
    sub.add_parser(
        "bench", help="latency and throughput benchmark, beside a bare relay", add_help=False
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "evaluate":
        from recstream.ranking.evaluate.cli import main as evaluate_main

        return evaluate_main(argv[1:])
    if argv and argv[0] == "bench":
        from recstream.bench.latency import main as bench_main

        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    settings = Settings()
    if args.command == "worker":
        from recstream.streams.worker import run_worker

        run_worker(settings, args.role or settings.worker_role)
        return 0
    if args.command == "broker":
        from recstream.streams import broker

        if args.prepare:
            try:
                libs = broker.check_requirements()
            except broker.BrokerUnavailable as exc:
                print(f"recstream broker: {exc}", file=sys.stderr)
                return 1
            print(f"Apache Kafka {broker.KAFKA_VERSION}'s jars are in {libs}")
            return 0
        folder = "kafka" if args.nodes == 1 else f"kafka-{args.nodes}-nodes"
        return broker.run_forever(
            port=args.port,
            nodes=args.nodes,
            data_dir=None if args.ephemeral else settings.data_dir / folder,
            heap_mb=settings.kafka.local_heap_mb,
        )
    if args.command == "demo":
        from recstream.streams.demo import run_demo

        return run_demo(
            settings,
            users=args.users,
            events=args.events,
            rate=args.rate,
            quiet=args.quiet,
            docker=args.docker,
        )
    if args.command == "produce":
        from recstream.streams.client import produce_lines

        src = open(args.file, "rb") if args.file else sys.stdin.buffer  # noqa: SIM115
        with src:
            n = asyncio.run(produce_lines(settings, args.topic, src, key_field=args.key_field))
        print(f"sent {n} messages to {settings.kafka.topic(args.topic)}", file=sys.stderr)
        return 0
    if args.command == "tail":
        from recstream.streams.client import tail

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                tail(settings, args.topic, from_beginning=args.from_beginning, limit=args.max)
            )
        return 0
    if args.command == "models":
        from recstream.encoders.export import main as export_main

        model_dir = args.model_dir or str(settings.encoder.model_dir)
        models = args.models or ["text", "image", "audio"]
        if not args.models and settings.encoder.text_model == "use":
            models.append("text-use")
        return export_main(
            ["--model-dir", model_dir, *(["--force"] if args.force else []), *models]
        )
    return 2


if __name__ == "__main__":
    sys.exit(main())
