"""`recstream bench` prints its runs as the Markdown table docs/benchmarks.md holds."""

from __future__ import annotations

from recstream.bench.latency import table


def _sys(p50: float, p99: float, rate: float) -> dict[str, float]:
    return {"p50_ms": p50, "p99_ms": p99, "achieved_rate": rate}


def test_table_has_a_row_per_rate_with_every_system() -> None:
    runs = [
        {"rate": 500, "relay": _sys(2.9, 23.3, 500.0), "faust_relay": _sys(11.8, 45.3, 499.9),
         **_sys(3709.1, 5111.6, 462.0), "worker_cpu_percent": 98.2,
         "worker_peak_rss_mb": 2446.0, "lag_first_third": 1117.0, "lag_last_third": 1864.0},
        {"rate": 3000, "relay": _sys(3.4, 11.7, 2999.0)},  # a relay-only run (--no-worker)
    ]  # fmt: skip
    lines = table(runs).splitlines()
    assert len(lines) == 4 and lines[1] == "|---|---|---|---|---|"
    assert lines[2] == (
        "| 500/s | 2.9 ms / 23.3 ms, 500.0/s | 11.8 ms / 45.3 ms, 499.9/s "
        "| 3.7 s / 5.1 s, 462.0/s | 98%, 2,446 MB, 1,117 -> 1,864 |"
    )
    assert lines[3] == "| 3,000/s | 3.4 ms / 11.7 ms, 2,999.0/s | - | - | - |"
