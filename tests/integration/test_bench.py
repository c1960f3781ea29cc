"""`recstream bench` end to end at a tiny size: the interface scripts depend on (the report's
keys, the bare and Faust relays beside recstream, the plot), not its figures, which belong to
the benchmark runs themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

LATENCY_KEYS = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "achieved_rate")


def test_bench_reports_recstream_beside_the_relays(worker_env: dict[str, str], tmp_path: Path):
    report = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"  # the default run folder goes under TMPDIR, removed at the end
    scratch.mkdir()
    cmd = [sys.executable, "-m", "recstream.streams.cli", "bench", "--rate", "20", "--seconds", "4",
           "--items", "2000", "--users", "50", "--report", str(report)]  # fmt: skip
    env = {**worker_env, "TMPDIR": str(scratch)}
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, timeout=300)
    out = (run.stdout + run.stderr).decode(errors="replace")
    assert run.returncode == 0, out[-4000:]
    rep = orjson.loads(report.read_bytes())
    assert rep["rate"] == 20
    for key in (*LATENCY_KEYS, "worker_peak_rss_mb", "sent", "answered"):
        assert key in rep, key
    for key in LATENCY_KEYS:
        assert key in rep["relay"], key
        assert key in rep["faust_relay"], key
    # 20 events/s for 4 s: every event answered by all three, each latency positive, ordered
    for r in (rep, rep["relay"], rep["faust_relay"]):
        assert r["sent"] >= 60 and r["answered"] == r["sent"], out[-2000:]
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert rep["worker_peak_rss_mb"] > 50
    assert report.with_suffix(".png").stat().st_size > 0
    assert not any(scratch.glob("recstream-bench-*")), "the temporary run folder was left behind"


def test_report_is_written_without_matplotlib(tmp_path: Path, monkeypatch, capsys) -> None:
    """The JSON report comes first; the plot is optional (the bench extra)."""
    import argparse

    from recstream.bench.latency import _write

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    args = argparse.Namespace(report=tmp_path / "r.json", plot=None)
    run = {"rate": 5, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}
    _write(args, {"machine": {}}, [run])
    assert orjson.loads(args.report.read_bytes())["runs"] == [run]
    assert not (tmp_path / "r.png").exists()
    assert "plot skipped" in capsys.readouterr().out


def test_bench_times_content_beside_the_events(worker_env: dict[str, str], tmp_path: Path):
    """--content-rate: new texts go to a separate encoding worker while a ranking-only worker
    answers the events; each is timed to its content-indexed record."""
    report = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    cmd = [sys.executable, "-m", "recstream.streams.cli", "bench", "--no-relay", "--rate", "10",
           "--seconds", "4", "--items", "500", "--users", "20", "--content-rate", "2",
           "--report", str(report)]  # fmt: skip
    env = {**worker_env, "TMPDIR": str(scratch)}
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, timeout=420)
    out = (run.stdout + run.stderr).decode(errors="replace")
    assert run.returncode == 0, out[-4000:]
    rep = orjson.loads(report.read_bytes())
    assert rep["worker_role"] == "rank"
    assert rep["answered"] == rep["sent"] >= 30, out[-2000:]
    content = rep["content"]
    assert content["items"] == 8 and content["indexed"] == 8, content
    assert 0 < content["searchable_p50_ms"] <= content["searchable_p99_ms"]
    assert content["encoder_peak_rss_mb"] > 50
    assert "content" in out and "searchable" in out
