"""``recstream evaluate``: replay interaction data through recstream's online model and the
baselines, print a table and write a JSON report.

    recstream evaluate --data ml-100k|ml-latest-small|ibm-articles|PATH [--items PATH] \
        --protocol prequential|split --report OUT.json [--models recstream,popularity,...]

A data file that cannot be read, or models that do not fit the protocol, end with one
sentence on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from recstream.ranking.evaluate.data import DATASETS, DataError, Interactions, load_interactions

MODELS = ("recstream", "popularity", "item-knn", "random", "ease")
DEFAULT_MODELS = {
    "prequential": "recstream,popularity,item-knn",
    "split": "recstream,popularity,item-knn,ease",
}
BATCH_MODELS = ("ease",)  # fit once on a training part: the split protocol only


class UsageError(Exception):
    """Options that do not go together: the message is one sentence."""


DATA_HELP = (
    "ml-100k, ml-latest-small, ibm-articles (fetched from PyPI wheels into the cache; "
    "ibm-articles has no timestamps: its events keep the file's row order, a second a row), "
    "or a CSV / JSON-lines file"
)
TABLE_COLUMNS = (
    "HR@10",
    "NDCG@10",
    "Recall@10",
    "Precision@10",
    "MRR@10",
    "Coverage@10",
    "ILD@10",
    "first_HR@10",
    "cold_HR@10",
    "ms_p50",
    "ms_p99",
    "stream_ms_p50",
    "stream_ms_p99",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recstream evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--items", type=Path, help="item texts (CSV or JSON lines) for a --data file")
    p.add_argument("--protocol", choices=("prequential", "split"), default="prequential")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument(
        "--models",
        help=f"comma list of {', '.join(MODELS)} (default: prequential "
        f"{DEFAULT_MODELS['prequential']}; split {DEFAULT_MODELS['split']})",
    )
    p.add_argument("--limit", type=int, help="only the first N interactions (time order)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=2020, help="split protocol shuffle seed")
    p.add_argument(
        "--split-order",
        choices=("time", "random"),
        default="time",
        help="split protocol: the order the training part is learned in (time: as it "
        "happened; random: RecBole's default ordering, the training timestamps handed out "
        "in ascending order)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a RankingSettings field for this run (repeatable)",
    )
    p.add_argument("--model-dir", type=Path, help="exported encoders (default: settings)")
    p.add_argument("--no-text", action="store_true", help="do not encode item texts")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(os.cpu_count() or 1, 2),
        help="processes: with 2, the baselines replay in a second process beside recstream "
        "(the same results; default: 2 where there are two cores)",
    )
    p.add_argument(
        "--stream-cost-every",
        type=int,
        default=1,
        help="time the stream's per-event path (the online step, with the state read and "
        "written as bytes) on every Nth event; 0: not at all",
    )
    return p


def load(spec: str, items: Path | None) -> Interactions:
    """A named dataset or a file; DataError when it cannot be read."""
    if spec in DATASETS:
        if items is not None:
            raise UsageError(f"--items is for a --data file; {spec} brings its own item texts")
        return DATASETS[spec]()
    if not Path(spec).exists():
        raise DataError(f"{spec}: no such file (datasets by name: {', '.join(DATASETS)})")
    return load_interactions(Path(spec), items)


def model_names(spec: str | None, protocol: str) -> list[str]:
    """The --models list; UsageError for an unknown model or one the protocol cannot run."""
    names = [n.strip() for n in (spec or DEFAULT_MODELS[protocol]).split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise UsageError(f"unknown model {unknown[0]!r}; known: {', '.join(MODELS)}")
    batch = [n for n in names if n in BATCH_MODELS]
    if batch and protocol != "split":
        raise UsageError(
            f"{batch[0]} is fit once on a training part, not learned online: use it with "
            "--protocol split"
        )
    return names


def build_models(names: list[str], data: Interactions, args: argparse.Namespace) -> list[Any]:
    from recstream.ranking.evaluate.baselines import (
        EASEModel,
        ItemKNNModel,
        PopularityModel,
        RandomModel,
    )

    out: list[Any] = []
    for name in names:
        if name == "recstream":
            from recstream.ranking.evaluate.online import (
                OnlineRecstream,
                encode_items,
                ranking_settings,
            )

            settings = ranking_settings(args.set)
            vectors = None if args.no_text else encode_items(data, args.model_dir)
            out.append(OnlineRecstream(data, settings, vectors, time_every=args.stream_cost_every))
        elif name == "popularity":
            out.append(PopularityModel(data))
        elif name == "item-knn":
            out.append(ItemKNNModel(data))
        elif name == "random":
            out.append(RandomModel(data))
        elif name == "ease":
            out.append(EASEModel(data))
        else:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return out


def table(results: dict[str, dict[str, Any]], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    cols = [c for c in columns if any(c in r for r in results.values())]
    width = max([len(n) for n in results] + [5])
    lines = ["model".ljust(width) + "".join(c.rjust(14) for c in cols)]
    for name, r in results.items():
        cells = [f"{r[c]:.4f}" if isinstance(r.get(c), float) else "-" for c in cols]
        lines.append(name.ljust(width) + "".join(c.rjust(14) for c in cells))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        names = model_names(args.models, args.protocol)
        data = load(args.data, args.items)
    except (DataError, UsageError) as e:
        print(f"recstream evaluate: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.data}: {len(data):,} interactions, {data.n_users:,} users, "
        f"{data.n_items:,} items" + "".join(f"; {note}" for note in data.notes)
    )
    if args.limit:
        data = data.head(args.limit)
    from recstream.ranking.evaluate.protocols import beside, prequential, split, split_replay

    part = None
    if args.protocol == "split":
        data, part = split_replay(data, args.seed, args.split_order)
    models = build_models(names, data, args)

    # the item texts' vectors (when recstream encoded them): every model's lists' ILD@k
    texts = [m.item_vectors() for m in models if hasattr(m, "item_vectors")]
    vectors = next((t for t in texts if t is not None), None)
    t0 = time.perf_counter()
    if args.protocol == "prequential":
        results = beside(
            prequential, data, models, args.jobs, not args.quiet, k=args.k, item_vectors=vectors
        )
    else:
        results = beside(
            split, data, models, args.jobs, not args.quiet, k=args.k, part=part,
            item_vectors=vectors,
        )  # fmt: skip
    elapsed = time.perf_counter() - t0
    print(table(results))
    print(
        f"{args.protocol} on {args.data}: {len(data)} interactions, {data.n_users} users, "
        f"{data.n_items} items, {elapsed:.1f} s"
    )
    if args.report:
        report = {
            "data": args.data,
            "protocol": args.protocol,
            "k": args.k,
            **({"split_order": args.split_order} if args.protocol == "split" else {}),
            "interactions": len(data),
            "users": data.n_users,
            "items": data.n_items,
            "seconds": round(elapsed, 2),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "settings_overrides": args.set,
            "data_notes": data.notes,
            "models": list(results),
            **results,  # report["recstream"]["HR@10"], report["item-knn"]["NDCG@10"], ...
        }
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"report: {args.report}")
    return 0
