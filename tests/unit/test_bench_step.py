"""recstream/bench/step.py on a small synthetic catalog: the step alone and the worker's handler
(every event answered, nothing dead-lettered), each with a figure per batch size."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from recstream.bench import step


@pytest.mark.parametrize("handlers", [False, True])
def test_step_bench_runs_and_reports(tmp_path: Path, handlers: bool) -> None:
    report = tmp_path / "r.json"
    argv = ["--items", "400", "--users", "60", "--batch", "1", "8", "--events", "48",
            "--report", str(report)] + (["--handlers"] if handlers else [])  # fmt: skip
    assert step.main(argv) == 0
    runs = orjson.loads(report.read_bytes())["runs"]
    assert [r["batch"] for r in runs] == [1, 8]
    for r in runs:
        assert r["events"] >= 48
        if handlers:
            assert r["answered"] == r["events"]
            assert r["on_events_us_per_event"] > 0 and r["item_side_us_per_event"] > 0
        else:
            assert r["events_per_s"] > 0 and r["step_ms_p50"] > 0
