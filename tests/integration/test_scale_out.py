"""Two ranking workers in one consumer group, each with its own embedded engine: every worker
holds the whole catalog (it reads the items topic in full), so a user on either worker is
offered items published to every partition; when one worker stops, the other takes its users
with their state intact and nothing is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from recstream.clock import now_ms
from recstream.streams.internal import key_partition
from tests.conftest import AppHarness, settings_for

pytestmark = pytest.mark.integration

PARTITIONS = 4


def test_two_workers_each_hold_the_whole_catalog_and_take_over(
    make_worker, worker_env, catalog, tmp_path: Path
) -> None:
    items = catalog[:40]
    # one group (app id and topics shared), two processes with their own folders and stores
    shared = {"RECSTREAM_KAFKA_PARTITIONS": str(PARTITIONS), "RECSTREAM_RANKING_MAX_K": "100"}
    a = make_worker(**shared)
    b = make_worker(
        **shared,
        RECSTREAM_WORKER_ROLE="rank",
        RECSTREAM_DATA_DIR=str(tmp_path / "b-data"),
        RECSTREAM_QDRANT_PATH=str(tmp_path / "b-qdrant"),
    )
    s = settings_for(worker_env)
    users = [f"user-{i}" for i in range(16)]
    by_partition: dict[int, list[str]] = {}
    for u in users:
        by_partition.setdefault(key_partition(u.encode(), PARTITIONS), []).append(u)
    assert len(by_partition) == PARTITIONS  # users on every partition, so on both workers
    assert len({key_partition(it["item_id"].encode(), PARTITIONS) for it in items}) == PARTITIONS

    async def scenario() -> None:
        async with AppHarness(s, a) as app:
            await app.wait_ready()
            await app.publish_catalog(items)
            liked: dict[str, str] = {}
            for n, u in enumerate(users):
                it = items[(7 * n) % len(items)]["item_id"]
                liked[u] = it
                ev: dict[str, Any] = {"user_id": u, "item_id": it, "type": "like",
                                      "ts": now_ms(), "event_id": f"{u}-1"}  # fmt: skip
                await app.client.send_event(ev)
            await app.client.flush()
            await app.wait(
                lambda: {f"{u}-1" for u in users} <= {r["trigger"] for r in app.recs},
                what="every first event answered",
            )
            assert not app.dead, app.dead
            # every user, on either worker, is offered every item but the one they liked
            for u in users:
                rec = await app.ask(u, k=100)
                got = {r["item_id"] for r in rec["items"]}
                assert got == {it["item_id"] for it in items} - {liked[u]}, (u, len(got))
            # worker b stops: its partitions and users move to a, state and all
            b.stop()
            second: dict[str, str] = {}
            for n, u in enumerate(users):
                second[u] = items[(7 * n + 3) % len(items)]["item_id"]
                ev = {"user_id": u, "item_id": second[u], "type": "view", "ts": now_ms(),
                      "event_id": f"{u}-2"}  # fmt: skip
                await app.client.send_event(ev)
            await app.client.flush()
            await app.wait(
                lambda: {f"{u}-2" for u in users} <= {r["trigger"] for r in app.recs},
                timeout=120,
                what="every event after the takeover answered",
            )
            for u in users:
                rec = await app.ask(u, k=100)
                # the state came along: the item liked before the takeover stays excluded
                got = {r["item_id"] for r in rec["items"]}
                assert got == {it["item_id"] for it in items} - {liked[u], second[u]}, u

    asyncio.run(scenario())
