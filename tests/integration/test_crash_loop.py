"""Crash loops in CI's size: the worker killed with SIGKILL three times while events flow
(recstream/bench/crash_loop.py runs the full-size loop, 20 runs and more)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from recstream.bench.crash_loop import LoopConfig, run_once

pytestmark = pytest.mark.integration


def test_at_least_once_loses_nothing_and_counts_each_event_once(
    broker: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    cfg = LoopConfig(events=600, rate=60, users=10, kills=3)
    r = asyncio.run(run_once(broker, tmp_path / "loop", cfg, seed=7, base_env=worker_env))
    assert r.kills == 3
    assert r.lost == 0, r
    assert r.miscounted_users == 0, r
    assert r.seen_in_final_list == 0, r
    # Repeated answers are allowed (at-least-once) and recognisable: each names its trigger.
    assert r.answers == r.sent + r.duplicate_answers


@pytest.mark.xfail(
    reason="faust-streaming 0.15.3 picks a record's transaction by its destination "
    "(TransactionManager.send: the destination topic's group and partition as its consumer "
    "knows them); a record to a topic the worker does not consume, such as recommendations, "
    "has none and goes out through the plain producer at once, so a killed worker's answers "
    "are visible to read_committed apps and the restarted worker answers again (measured: "
    "duplicate answers in crash-loop runs, docs/kafka.md)",
    strict=False,
)
def test_exactly_once_answers_each_event_once(
    broker: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    cfg = LoopConfig(events=600, rate=60, users=10, kills=3, guarantee="exactly_once")
    r = asyncio.run(run_once(broker, tmp_path / "loop", cfg, seed=8, base_env=worker_env))
    assert r.lost == 0 and r.miscounted_users == 0 and r.seen_in_final_list == 0, r
    assert r.duplicate_answers == 0, r
