"""ItemStore on the Qdrant engine in-process (qdrant-edge-py): the default embedded backend.

One EdgeShard per collection under ``<location>/<collection>.edge/``: the live shard is the
folder named in ``CURRENT``. Its WAL makes every write durable at once (kill -9 safe); new and
changed items go to an appendable segment and are searchable at once (exact search there).

Index building never stalls the stream. ``EdgeShard.optimize`` (building HNSW) holds the GIL for
its whole run (100k x 384-d: minutes on 2 cores), so it never runs in the worker: once enough
points are unindexed, the store copies the flushed shard to a new generation folder (writes
wait for the copy, reads go on), a child process (``python -m recstream.ranking.store.edge build
DIR``, niced, ``build_threads`` threads) builds the index there, and the worker loads it, replays
the writes made meanwhile (kept in memory), switches ``CURRENT`` and drops the old generation.
A crash mid-build leaves ``CURRENT`` on the old generation; the unfinished one is removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import qdrant_edge as qe

from recstream.ranking.store.base import (
    CANDIDATE_FIELDS,
    ORDER_KEYS,
    CandidateQuery,
    ItemRecord,
    ItemStore,
    StoredItem,
    content_payload,
    content_vectors,
    point_id,
    point_uuid,
    unit_list,
)

log = logging.getLogger(__name__)
_VIEW_FIELDS = frozenset(CANDIDATE_FIELDS)
_INDEXES = {"trend": qe.PayloadSchemaType.Float, "published_at": qe.PayloadSchemaType.Integer}
# (point id, payload) pairs read back. Every point this store writes has a UUID id
# (point_id), and the engine returns those as uuid.UUID objects; its type stubs say
# int | UUID | str for any point, hence the casts of ids read back.
_IdPayloads = list[tuple[uuid.UUID, Any]]


def _hnsw(m: int, ef_construct: int, threads: int) -> qe.HnswIndexConfig:
    return qe.HnswIndexConfig(
        m=m, ef_construct=ef_construct, full_scan_threshold=10_000, max_indexing_threads=threads
    )


def _vector_params(
    dims: Mapping[str, int], on_disk: Iterable[str] = ()
) -> dict[str, qe.EdgeVectorParams]:
    """Cosine vectors; those named in ``on_disk`` are memory-mapped (read when a search or a
    retrieve touches them; the kernel may drop the pages) instead of held in RAM."""
    disk = set(on_disk)
    return {
        m: qe.EdgeVectorParams(size=d, distance=qe.Distance.Cosine, on_disk=m in disk or None)
        for m, d in dims.items()
    }


def _narrowed(item: StoredItem, fields: Sequence[str]) -> StoredItem:
    """A cached view with only ``fields`` of its payload (what the engine would return)."""
    if len(fields) == len(_VIEW_FIELDS) and set(fields) == _VIEW_FIELDS:
        return item
    new = StoredItem.from_parts({k: v for k, v in item.payload.items() if k in fields}, None)
    return new.with_vectors(item.vectors)


def _cached(
    cache: OrderedDict[uuid.UUID, StoredItem],
    size: int,
    pids: Iterable[uuid.UUID],
    load: Callable[[list[Any]], Iterable[tuple[uuid.UUID, StoredItem]]],
) -> dict[uuid.UUID, StoredItem]:
    """LRU lookup: hits from ``cache``, the misses through one ``load`` call, kept to ``size``."""
    out = {}
    missing: list[Any] = []
    for pid in pids:
        it = cache.get(pid)
        if it is None:
            missing.append(pid)
        else:
            cache.move_to_end(pid)
            out[pid] = it
    if missing:
        for pid, it in load(missing):
            out[pid] = cache[pid] = it
        while len(cache) > size:
            cache.popitem(last=False)
    return out


def _stored_dims(path: Path) -> dict[str, int]:
    """The vectors a shard folder holds (loading needs them: EdgeConfig cannot omit them)."""
    cfg = orjson.loads((path / "edge_config.json").read_bytes())
    return {m: int(v["size"]) for m, v in cfg["vectors"].items()}


class EdgeStore(ItemStore):
    concurrent_reads = False  # in-process engine calls: nothing to overlap

    def __init__(
        self,
        root: Path,
        dims: Mapping[str, int],
        *,
        temporary: bool = False,
        reindex_min_points: int = 5_000,
        reindex_fraction: float = 0.2,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        hnsw_ef: int | None = None,
        build_threads: int = 1,
        search_threads: int | None = None,
        check_interval_s: float = 5.0,
        cache_items: int = 50_000,
        on_disk_vectors: Iterable[str] = (),
    ):
        self.root = root
        self.dims = dict(dims)
        self.temporary = temporary
        self.reindex_min_points = reindex_min_points
        self.reindex_fraction = reindex_fraction
        self.hnsw = (hnsw_m, hnsw_ef_construct)
        self.build_threads = build_threads
        self.check_interval_s = check_interval_s
        self.cache_items = cache_items
        self.on_disk_vectors = tuple(on_disk_vectors)
        # Candidate views (CANDIDATE_FIELDS payload + vectors) by point id (UUID objects, as
        # the engine returns them). This process is the shard's only writer and every write
        # drops the entries it touches, so a cached view is always what the engine would return.
        self._cache: OrderedDict[uuid.UUID, StoredItem] = OrderedDict()
        # Whole items (with ``cf_top``, ~15 KB as Python objects), for seeds; same rule.
        self._full: OrderedDict[uuid.UUID, StoredItem] = OrderedDict()
        self.full_cache_items = max(cache_items // 10, 0)
        # Trending and fresh lists (ids in order, longer than asked), valid until the next write,
        # each with how many the engine was asked for (a shorter answer is the whole catalog).
        self._ordered: dict[str, tuple[list[uuid.UUID], int]] = {}
        self._params = qe.SearchParams(hnsw_ef=hnsw_ef) if hnsw_ef else None
        self._search_threads = search_threads
        self._lock = asyncio.Lock()  # writers vs the generation copy; reads never wait
        self._journal: list[qe.UpdateOperation] | None = None  # writes during a build
        self._builder: asyncio.Task[None] | None = None
        self._build_proc: asyncio.subprocess.Process | None = None
        self.generation, self.shard = self._open()
        info = self.shard.info()
        # Points written since the last index build (a restart counts a never-indexed shard).
        self.unindexed = info.points_count if info.indexed_vectors_count == 0 else 0

    @classmethod
    def open(
        cls, location: str, collection: str, dims: Mapping[str, int], **options: Any
    ) -> EdgeStore:
        if location == ":memory:":
            root = Path(tempfile.mkdtemp(prefix="recstream-edge-"))
            return cls(root, dims, temporary=True, **options)
        return cls(Path(location) / f"{collection}.edge", dims, **options)

    # -- generations ---------------------------------------------------------------------------
    def _config(self, dims: Mapping[str, int]) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors=_vector_params(dims, self.on_disk_vectors),
            hnsw_config=_hnsw(*self.hnsw, self.build_threads),
            payload_memory=qe.Memory.Cached,
            max_search_threads=self._search_threads,
        )

    def _open(self) -> tuple[int, qe.EdgeShard]:
        self.root.mkdir(parents=True, exist_ok=True)
        current = self.root / "CURRENT"
        gen = int(current.read_text()) if current.exists() else 0
        for folder in self.root.glob("gen-*"):
            if folder.name != f"gen-{gen:06d}":  # an unfinished build or a dropped generation
                shutil.rmtree(folder, ignore_errors=True)
        path = self.root / f"gen-{gen:06d}"
        if (path / "edge_config.json").exists():
            have = _stored_dims(path)
            for m, d in self.dims.items():
                if m in have and have[m] != d:
                    raise RuntimeError(
                        f"vector {m!r} has size {have[m]} in {path}, configured {d}; "
                        "use a new collection name (RECSTREAM_QDRANT_COLLECTION)"
                    )
            shard = qe.EdgeShard.load(str(path), self._config(have))
            for m, d in self.dims.items():
                if m not in have:  # a newly configured vector: added in place
                    shard.update(qe.UpdateOperation.create_dense_vector(m, d, qe.Distance.Cosine))
        else:
            shard = qe.EdgeShard.create(str(path), self._config(self.dims))
            for key, schema in _INDEXES.items():
                shard.update(qe.UpdateOperation.create_field_index(key, schema))
            current.write_text(str(gen))
        return gen, shard

    def _gen_path(self, gen: int) -> Path:
        return self.root / f"gen-{gen:06d}"

    def needs_index(self) -> bool:
        total = self.shard.info().points_count
        return self.unindexed >= max(self.reindex_min_points, self.reindex_fraction * total)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            if self.needs_index():
                try:
                    await self.build_index()
                except Exception:  # noqa: BLE001 - searches still work, unindexed; try later
                    log.exception("edge index build failed; retrying later")

    async def build_index(self) -> None:
        """Build the HNSW index in a child process and switch to it (see module doc)."""
        old_gen, new_gen = self.generation, self.generation + 1
        new_path = self._gen_path(new_gen)
        loop = asyncio.get_running_loop()
        async with self._lock:
            self.shard.flush()
            await loop.run_in_executor(None, shutil.copytree, self._gen_path(old_gen), new_path)
            self._journal, at_copy = [], self.unindexed
        try:
            log.info("edge: building the index of %s in a child process", new_path)
            self._build_proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "recstream.ranking.store.edge", "build", str(new_path),
                str(self.build_threads), str(self.hnsw[0]), str(self.hnsw[1]),
                ",".join(self.on_disk_vectors),
            )  # fmt: skip
            if await self._build_proc.wait() != 0:
                raise RuntimeError(f"index build exited with {self._build_proc.returncode}")
            cfg = self._config(_stored_dims(new_path))
            new = await loop.run_in_executor(None, qe.EdgeShard.load, str(new_path), cfg)
            journal = self._journal
            done = 0
            while len(journal) - done > 256:  # catch up in slices, yielding to the stream
                for op in journal[done : done + 256]:
                    new.update(op)
                done += 256
                await asyncio.sleep(0)
            for op in journal[done:]:  # the tail, then the switch, without yielding
                new.update(op)
            new.flush()
            tmp = self.root / "CURRENT.tmp"
            tmp.write_text(str(new_gen))
            os.replace(tmp, self.root / "CURRENT")
            old, self.shard, self.generation = self.shard, new, new_gen
            self._journal, self.unindexed = None, self.unindexed - at_copy
        except BaseException:
            self._journal = None
            if self._build_proc is not None and self._build_proc.returncode is None:
                self._build_proc.kill()
            shutil.rmtree(new_path, ignore_errors=True)
            raise
        finally:
            self._build_proc = None
        old.close()
        await loop.run_in_executor(None, shutil.rmtree, self._gen_path(old_gen), True)
        log.info("edge: generation %d indexed (%d points)", new_gen, new.info().points_count)

    # -- writes --------------------------------------------------------------------------------
    async def _apply(
        self, ops: Sequence[qe.UpdateOperation], unindexed: int = 0, ids: Iterable[str] = ()
    ) -> None:
        for pid in ids:  # the item changes: forget its cached copies
            key = uuid.UUID(pid)
            self._cache.pop(key, None)
            self._full.pop(key, None)
        self._ordered.clear()  # any write may change trending or fresh
        async with self._lock:
            for op in ops:
                self.shard.update(op)
            if self._journal is not None:
                self._journal.extend(ops)
            self.unindexed += unindexed

    async def ensure_collection(self) -> None:
        # The shard exists since open(); start watching for index builds on this loop.
        if self._builder is None and not self.temporary:
            self._builder = asyncio.get_running_loop().create_task(self._watch())

    async def upsert(self, records: Sequence[ItemRecord]) -> None:
        if not records:
            return
        keep = self.derived_vectors
        existing = self._retrieve([r.item_id for r in records], keep or False)
        points = [
            qe.Point(
                point_id(r.item_id),
                # a dict of float lists is a qe.Vector (the stubs' Dict is invariant)
                cast("qe.Vector", content_vectors(r, existing.get(r.item_id), self.dims)),
                content_payload(r, existing.get(r.item_id)),
            )
            for r in records
        ]
        pids = [point_id(r.item_id) for r in records]
        await self._apply([qe.UpdateOperation.upsert_points(points)], len(points), pids)

    async def delete(self, item_ids: Sequence[str]) -> None:
        if item_ids:
            ids: list[Any] = [point_id(i) for i in item_ids]
            await self._apply([qe.UpdateOperation.delete_points(ids)], 0, ids)

    async def update_vectors(self, vectors: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        live = self._retrieve(list(vectors), False)
        pv = [
            qe.PointVectors(
                point_id(i),
                {m: unit_list(v) for m, v in vectors[i].items() if m in self.dims},
            )
            for i in live
        ]
        if pv:
            pids = [point_id(i) for i in live]
            await self._apply([qe.UpdateOperation.update_vectors(pv)], len(pv), pids)

    async def set_payload(self, payloads: Mapping[str, Mapping[str, Any]]) -> None:
        # By filter, not by id: an item deleted meanwhile is skipped, not an error.
        ops = [
            qe.UpdateOperation.set_payload_by_filter(
                qe.Filter(must=[qe.HasIdCondition({point_id(i)})]), dict(p)
            )
            for i, p in payloads.items()
        ]
        if ops:
            await self._apply(ops, 0, [point_id(i) for i in payloads])

    # -- reads (synchronous engine calls: ~0.1-3 ms, cheaper than a thread hop) ---------------
    def _retrieve(
        self, item_ids: Sequence[str], with_vectors: Any, fields: Sequence[str] | None = None
    ) -> dict[str, StoredItem]:
        if not item_ids:
            return {}
        ids: list[Any] = [point_id(i) for i in dict.fromkeys(item_ids)]
        records = self.shard.retrieve(ids, list(fields) if fields else True, with_vectors)
        items = (StoredItem.from_parts(r.payload, r.vector) for r in records)
        return {it.item_id: it for it in items}

    async def get(
        self,
        item_ids: Sequence[str],
        *,
        with_vectors: bool = True,
        fields: Sequence[str] | None = None,
    ) -> dict[str, StoredItem]:
        if not with_vectors:
            return self._retrieve(item_ids, False, fields)
        ids: list[Any] = [point_uuid(i) for i in dict.fromkeys(item_ids)]
        if fields is not None and set(fields) <= _VIEW_FIELDS:
            views = self._views(ids)  # candidate views: no engine call for cached items
            got = (views.get(pid) for pid in ids)
            return {it.item_id: _narrowed(it, fields) for it in got if it is not None}
        if fields is not None:  # other selections, rare: straight from the engine
            recs = self.shard.retrieve(ids, list(fields), False)
            items = self._with_cached_vectors(cast(_IdPayloads, [(r.id, r.payload) for r in recs]))
            return {it.item_id: it for _, it in items}
        full = self._full_items(ids)  # the seeds: whole payload (their cf_top rows) + vectors
        return {it.item_id: it for it in (full.get(pid) for pid in ids) if it is not None}

    async def candidates(
        self, units: Mapping[str, np.ndarray], *, exclude: Iterable[str], limit: int
    ) -> list[StoredItem]:
        return (await self.candidates_many([CandidateQuery(units, exclude, limit)]))[0]

    async def candidates_many(self, queries: Sequence[CandidateQuery]) -> list[list[StoredItem]]:
        """Nearest items per modality (the engine, exclusions in its filter), then trending and
        fresh: the first ``limit`` of a shared list not in ``exclude`` (see :meth:`_top`).
        Every user's vector queries go to the engine in one batch, and the candidate views of
        all the answers come from one cache lookup (one retrieve for the misses)."""
        requests: list[qe.QueryRequest] = []
        spans: list[tuple[int, int]] = []  # each query's requests within ``requests``
        excluded: list[set[uuid.UUID]] = []
        for q in queries:
            ids = {point_uuid(i) for i in q.exclude}
            excluded.append(ids)
            flt = qe.Filter(must_not=[qe.HasIdCondition(ids)]) if ids else None  # type: ignore[arg-type]
            start = len(requests)
            requests.extend(
                qe.QueryRequest(
                    limit=q.limit,
                    query=qe.Query.Nearest(np.asarray(v, dtype=np.float32).tolist(), using=m),
                    filter=flt,
                    params=self._params,
                    with_vector=False,
                    with_payload=False,
                )
                for m, v in q.units.items()
                if m in self.dims
            )
            spans.append((start, len(requests)))
        results = self.shard.query_batch(qe.QueryBatchRequest(requests)) if requests else []
        # .id builds a UUID per access: read each once
        found = cast(
            "list[list[tuple[uuid.UUID, float]]]",  # UUID ids: see _IdPayloads
            [[(p.id, p.score) for p in points] for points in results],
        )
        nearest = [[hit for r in range(a, b) for hit in found[r]] for a, b in spans]
        ordered = [
            [pid for key in ORDER_KEYS for pid in self._top(key, q.limit, ids)]
            for q, ids in zip(queries, excluded, strict=True)
        ]
        views = self._views(
            {
                *(pid for hits in nearest for pid, _ in hits),
                *(pid for top in ordered for pid in top),
            }
        )
        out = []
        for hits, top in zip(nearest, ordered, strict=True):
            got = [views[pid].scored(score) for pid, score in hits if pid in views]
            got.extend(views[pid] for pid in top if pid in views)
            out.append(got)
        return out

    def _top(self, key: str, limit: int, excluded: set[uuid.UUID]) -> list[uuid.UUID]:
        """The first ``limit`` point ids by ``key`` (descending) that are not ``excluded``.

        Every user asks the engine the same order with their own exclusions; the unfiltered
        list is read once instead, ``limit + len(excluded)`` long (at most that many entries
        can be excluded from it), kept until the next write, and filtered here: the result is
        the engine's filtered answer, at one engine call per write instead of one per event."""
        need = limit + len(excluded)
        top, asked = self._ordered.get(key, (None, 0))
        if top is None or (len(top) < need and len(top) >= asked):  # none, or cut short
            n = max(need, 2 * limit + 64)
            got = self.shard.query(
                qe.QueryRequest(
                    limit=n,
                    query=qe.OrderBy(key, qe.Direction.Desc),
                    with_vector=False,
                    with_payload=False,
                )
            )
            top = cast("list[uuid.UUID]", [p.id for p in got])  # UUID ids: see _IdPayloads
            self._ordered[key] = (top, n)
        out = []
        for pid in top:
            if pid not in excluded:
                out.append(pid)
                if len(out) == limit:
                    break
        return out

    def _full_items(self, pids: Sequence[uuid.UUID]) -> dict[uuid.UUID, StoredItem]:
        """Whole items (every payload field, vectors) by point id, from a smaller cache of their
        own: users' recent items, read as seeds event after event, carry 100-pair ``cf_top``
        rows whose conversion from the engine cost more than the rest of the lookup."""

        def load(missing: list[Any]) -> Iterable[tuple[uuid.UUID, StoredItem]]:
            got = self.shard.retrieve(missing, True, False)
            return self._with_cached_vectors(cast(_IdPayloads, [(r.id, r.payload) for r in got]))

        return _cached(self._full, self.full_cache_items, pids, load)

    def _with_cached_vectors(
        self, records: list[tuple[uuid.UUID, Any]]
    ) -> list[tuple[uuid.UUID, StoredItem]]:
        """(point id, payload) pairs read without vectors, as items whose vectors come from
        the candidate views (one retrieve for the views missing)."""
        views = self._views([pid for pid, _ in records])
        out = []
        for pid, payload in records:
            it = StoredItem.from_parts(payload, None)
            out.append((pid, it.with_vectors(views[pid].vectors) if pid in views else it))
        return out

    def _views(self, pids: Iterable[uuid.UUID]) -> dict[uuid.UUID, StoredItem]:
        """Candidate views (CANDIDATE_FIELDS payload + vectors) by point id: from the cache, or
        one retrieve for the misses. Converting the engine's payloads and float lists was most
        of the worker's store cost per event (profiled, 100k items); an item's view changes
        only when it is written, and writes drop it (see ``_apply``)."""

        def load(missing: list[Any]) -> Iterable[tuple[uuid.UUID, StoredItem]]:
            for r in self.shard.retrieve(missing, list(CANDIDATE_FIELDS), True):
                yield cast(uuid.UUID, r.id), StoredItem.from_parts(r.payload, r.vector)  # UUID ids

        return _cached(self._cache, self.cache_items, pids, load)

    async def count(self) -> int:
        return self.shard.count(qe.CountRequest(exact=True))

    async def close(self) -> None:
        if self._builder is not None:
            self._builder.cancel()
            try:
                await self._builder
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                pass
            self._builder = None
        self.shard.close()
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)


def _die_with_parent() -> None:
    """A worker killed mid-build must not leave its builder writing a folder it will drop."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before that
            os._exit(1)


def _build(path: str, threads: int, m: int, ef_construct: int, on_disk: Sequence[str]) -> None:
    """The child process: build the HNSW index of the shard at ``path`` (GIL held meanwhile)."""
    try:
        os.nice(10)  # the stream comes first
    except OSError:
        pass
    _die_with_parent()
    vectors = _vector_params(_stored_dims(Path(path)), on_disk)
    shard = qe.EdgeShard.load(
        path, qe.EdgeConfig(vectors, hnsw_config=_hnsw(m, ef_construct, threads))
    )
    shard.optimize()
    shard.flush()
    shard.close()


if __name__ == "__main__":
    if len(sys.argv) != 7 or sys.argv[1] != "build":
        sys.exit(
            "usage: python -m recstream.ranking.store.edge build DIR THREADS M EF_CONSTRUCT ON_DISK"
        )
    on_disk = [m for m in sys.argv[6].split(",") if m]
    _build(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), on_disk)
