"""Congruence: the same operations on every ItemStore backend give the same results.

The reference is qdrant-client (the production path's client, here in its local mode); the
embedded Qdrant engine (ranking/store/edge.py) must answer alike, also after a restart and
across a background index build.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recstream.ranking import store as stores
from recstream.ranking.item_side import NO_TREND
from recstream.ranking.store import (
    CANDIDATE_FIELDS,
    CandidateQuery,
    ItemRecord,
    ItemStore,
    StoredItem,
)
from recstream.ranking.store.edge import EdgeStore

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")
BACKENDS = ("client", "edge")
DIMS = {"text": 8, "image": 6, "cf": 4}
NOW = 1_700_000_000_000
rng = np.random.default_rng(7)
VEC = {
    f"i{n:02d}": {"text": rng.standard_normal(8), "image": rng.standard_normal(6)}
    for n in range(30)
}


def open_store(backend: str, location: str) -> ItemStore:
    return stores.connect(
        url=None,
        api_key=None,
        location=location,
        collection="c",
        dims=DIMS,
        backend=backend,  # type: ignore[arg-type]
    )


def snap(item: StoredItem) -> tuple[Any, ...]:
    """What must be equal across backends (vectors compared after rounding)."""
    vecs = {m: tuple(np.round(v, 4)) for m, v in sorted(item.vectors.items())}
    score = None if item.score is None else round(item.score, 4)
    extra = {k: v for k, v in item.payload.items() if k not in ("item_id", "title", "tags")}
    return (item.item_id, item.title, item.tags, item.published_at, item.trend, score, vecs,
            tuple(sorted(extra.items())))  # fmt: skip


def records(ids: list[str], title: str = "t") -> list[ItemRecord]:
    out = []
    for n, i in enumerate(ids):
        vec = {m: v for m, v in VEC[i].items() if not (m == "image" and n % 3 == 0)}
        if n % 7 == 6:
            vec = {}  # an item with no vector at all
        out.append(
            ItemRecord(
                item_id=i,
                vectors=vec,
                title=f"{title}-{i}",
                tags=("a", i),
                published_at=NOW + n * 1000 if n % 5 else None,
                kind="video",
            )
        )
    return out


async def scenario(store: ItemStore) -> list[Any]:
    """Every operation of the interface; returns what each read saw."""
    seen: list[Any] = []
    await store.ensure_collection()
    ids = sorted(VEC)
    await store.upsert(records(ids[:20]))
    # distinct values: engines may break order-by ties differently
    await store.set_trends({i: float(n * 7 % 20) for n, i in enumerate(ids[:20]) if n % 4})
    await store.set_trends({"never-published": 3.0})
    await store.update_vectors(
        {"i01": {"cf": np.ones(4)}, "i02": {"cf": np.arange(4.0) + 1}, "gone": {"cf": np.ones(4)}}
    )
    await store.set_payload({"i03": {"genre": "jazz"}, "missing": {"genre": "x"}})
    # what the item side publishes: the row (read for seeds only) and the count
    await store.set_payload({"i06": {"cf_top": [["i07", 1.5]], "cf_count": 2.0}})
    await store.delete(["i04", "i05", "not-there"])
    # republished: content replaced; trend, cf vector and genre kept
    await store.upsert(records(["i01", "i02", "i03"], title="v2") + records(ids[20:25]))
    seen.append(await store.count())
    got = await store.get([*ids, "gone"])
    seen.append(sorted(snap(it) for it in got.values()))
    lean = await store.get(["i01", "i04"], with_vectors=False)
    seen.append(sorted((i, it.vectors) for i, it in lean.items()))
    picked = await store.get(["i06", "i07"], fields=CANDIDATE_FIELDS)
    seen.append(sorted(snap(it) for it in picked.values()))
    q = {"text": VEC["i09"]["text"], "image": VEC["i10"]["image"], "audio": np.ones(3)}
    asks = [
        CandidateQuery(q, {"i09", "i10", "i12"}, 5),
        CandidateQuery({"cf": np.ones(4)}, set(), 5),
        CandidateQuery({}, {"i03", "i11"}, 5),
    ]
    for a in asks:
        out = await store.candidates(a.units, exclude=a.exclude, limit=a.limit)
        seen.append([snap(it) for it in out])
    # the same questions asked at once (one stream batch's users): the same answers
    many = await store.candidates_many([*asks, CandidateQuery(q, set(), 2)])
    seen.append([[snap(it) for it in out] for out in many])
    return seen


def run_all(tmp_path: Path, fn: Any) -> dict[str, Any]:
    return {b: asyncio.run(fn(b, str(tmp_path / b))) for b in BACKENDS}


def run_scenario(tmp_path: Path, scenario_fn: Any) -> dict[str, Any]:
    """``scenario_fn(store)`` on a fresh store of every backend, each closed afterwards."""

    async def go(backend: str, location: str) -> Any:
        store = open_store(backend, location)
        try:
            return await scenario_fn(store)
        finally:
            await store.close()

    return run_all(tmp_path, go)


def test_same_operations_same_results(tmp_path: Path) -> None:
    res = run_scenario(tmp_path, scenario)
    assert res["client"] == res["edge"]
    count, items, lean, picked, similar, cf_only, cold, many = res["edge"]
    assert many[:3] == [similar, cf_only, cold]
    assert len(many[3]) == 2 * 2 + 2 * 2  # 2 nearest per modality present, 2 trending, 2 fresh
    assert count == 23
    by_id = {s[0]: s for s in items}
    assert "i04" not in by_id and "gone" not in by_id  # deleted / never there
    assert by_id["i01"][1] == "v2-i01" and by_id["i01"][4] == 7.0  # new content, kept trend
    assert "cf" in dict(by_id["i02"][6]) and dict(by_id["i03"][7])["genre"] == "jazz"
    assert by_id["i00"][4] == NO_TREND  # never interacted with
    assert lean == [("i01", {})]
    # Payload selection: the full get has i06's row; CANDIDATE_FIELDS leave it out (and
    # unknown fields like genre), keeping the count; candidates never carry rows.
    assert dict(by_id["i06"][7])["cf_top"] == [["i07", 1.5]]
    assert [s[0] for s in picked] == ["i06", "i07"]
    assert dict(picked[0][7])["cf_count"] == 2.0 and "cf_top" not in dict(picked[0][7])
    assert all(set(dict(s[7])) <= set(CANDIDATE_FIELDS) for s in picked)
    assert picked[0][6] == by_id["i06"][6]  # vectors still come
    assert all("cf_top" not in dict(s[7]) for s in similar + cf_only + cold)
    assert len(similar) == 5 + 5 + 5 + 5  # text, image, trending, fresh; "audio" not stored
    assert not {s[0] for s in similar} & {"i09", "i10", "i12"}
    assert [s[0] for s in cf_only[:2]] == ["i01", "i02"] and len(cf_only) == 2 + 5 + 5


def test_restart_keeps_everything(tmp_path: Path) -> None:
    async def go(backend: str, location: str) -> list[Any]:
        store = open_store(backend, location)
        before = await scenario(store)
        await store.close()
        store = open_store(backend, location)  # a new process would do the same
        try:
            after = [
                await store.count(),
                sorted(snap(i) for i in (await store.get(sorted(VEC))).values()),
            ]
            return [before[:2], after]
        finally:
            await store.close()

    res = run_all(tmp_path, go)
    assert res["client"] == res["edge"]
    assert res["edge"][0] == res["edge"][1]


def test_index_build_in_background_loses_no_write(tmp_path: Path) -> None:
    """A generation switch (copy, child-process build, replay) while writes go on."""

    async def go() -> tuple[Any, Any, int]:
        store = EdgeStore.open(str(tmp_path), "c", DIMS, reindex_min_points=1)
        ref = open_store("client", ":memory:")
        await ref.ensure_collection()
        ids = sorted(VEC)
        for s in (store, ref):
            await s.upsert(records(ids[:15]))
        assert store.needs_index()
        build = asyncio.create_task(store.build_index())
        for n, i in enumerate(ids[15:]):  # writes while the child builds
            for s in (store, ref):
                await s.upsert(records([i]))
                await s.set_trends({ids[n]: float(n)})
                await s.delete([ids[n + 1]] if n % 4 == 0 else [])
            await asyncio.sleep(0.05)
        await build
        gen = store.generation
        got = sorted(snap(i) for i in (await store.get(ids)).values())
        want = sorted(snap(i) for i in (await ref.get(ids)).values())
        await store.close()
        await ref.close()
        reopened = EdgeStore.open(str(tmp_path), "c", DIMS)
        again = sorted(snap(i) for i in (await reopened.get(ids)).values())
        assert reopened.generation == gen
        await reopened.close()
        return got, want, gen, again

    got, want, gen, again = asyncio.run(go())
    assert got == want == again
    assert gen == 1
    assert [p.name for p in (tmp_path / "c.edge").glob("gen-*")] == ["gen-000001"]


async def interleaved(store: ItemStore) -> list[Any]:
    """Reads between writes: what a store keeps between calls (the edge store's cached views
    and trending/fresh lists) must never outlive a write."""
    seen: list[Any] = []
    await store.ensure_collection()
    ids = sorted(VEC)
    await store.upsert(records(ids[:12]))
    await store.set_trends({i: float(n + 1) for n, i in enumerate(ids[:12])})
    q = {"text": VEC["i04"]["text"]}

    async def look() -> None:
        out = await store.candidates(q, exclude={"i11"}, limit=3)
        picked = await store.get(["i02", "i03", "i05"], fields=CANDIDATE_FIELDS)
        full = await store.get(["i03"])
        seen.append(
            (
                [snap(it) for it in out],
                sorted(snap(it) for it in picked.values()),
                sorted(snap(it) for it in full.values()),
            )
        )

    await look()
    await store.set_payload({"i02": {"trend": 99.0, "cf_count": 5.0}})  # i02 now trends first
    await look()
    await store.upsert(records(["i03"], title="v2"))  # new content for i03
    await look()
    await store.update_vectors({"i05": {"cf": np.arange(4.0) + 2}})
    await look()
    await store.delete(["i02"])  # gone from every list
    await look()
    await store.upsert(records([ids[20]], title="new"))  # newest item: fresh list changes
    await store.set_trends({ids[20]: 500.0})
    await look()
    return seen


def test_reads_between_writes_see_every_write(tmp_path: Path) -> None:
    res = run_scenario(tmp_path, interleaved)
    assert res["client"] == res["edge"]
    views = res["edge"]
    trending = [[s[0] for s in cands[3:6]] for cands, _, _ in views]
    assert trending[0] == ["i10", "i09", "i08"]  # i11 (trend 12) excluded
    assert trending[1] == ["i02", "i10", "i09"]
    assert "i02" not in trending[4] and trending[5][0] == "i20"
    assert dict(views[1][1][0][7])["cf_count"] == 5.0  # the picked view of i02 saw the write
    assert views[2][2][0][1] == "v2-i03" and views[1][2][0][1] == "t-i03"
    assert "cf" in dict(views[3][1][2][6])  # i05's derived vector
    assert [s[0] for s in views[4][1]] == ["i03", "i05"]


def test_vectors_on_disk_answer_alike(tmp_path: Path) -> None:
    """Memory-mapped vectors (RECSTREAM_QDRANT_ON_DISK_VECTORS) change where vectors live,
    not what any read returns; the setting is kept in the shard's config."""

    async def go(on_disk: list[str], location: str) -> list[Any]:
        store = EdgeStore.open(location, "c", DIMS, on_disk_vectors=on_disk)
        try:
            return await scenario(store) + await interleaved(store)
        finally:
            await store.close()

    in_ram = asyncio.run(go([], str(tmp_path / "ram")))
    on_disk = asyncio.run(go(["image", "cf"], str(tmp_path / "disk")))
    assert in_ram == on_disk
    cfg = (tmp_path / "disk" / "c.edge" / "gen-000000" / "edge_config.json").read_text()
    assert '"on_disk":true' in cfg.replace(" ", "")
