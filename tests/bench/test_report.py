"""The fleet benchmark's arithmetic and report, on synthetic callback events (no containers).

The README quotes these numbers as the product's cost at scale: a wrong subtraction or a merge
that drops rows would publish a wrong claim without any run failing, so they are tested here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.runner import RunResult  # noqa: E402

from bench import report  # noqa: E402
from bench.__main__ import _ints, _positive  # noqa: E402
from bench.fleet import _failures, beside_stock, healthy_done, host_task_times, task_spans  # noqa: E402

HEALTHY = {"h1", "h2"}


def _run(events: list[dict[str, Any]]) -> RunResult:
    return RunResult(rc=0, hit_outer_limit=False, wall_s=0.0, stdout="", stderr="", events=events,
                     leftovers=[], started_at=0.0)  # fmt: skip


def _frozen_run() -> RunResult:
    """Task 1 starts at 100; h1/h2 report at 103/107, the frozen host times out at 131."""
    return _run([
        {"event": "task_start", "task": "task 1", "mono": 100.0},
        {"event": "ok", "task": "task 1", "host": "h1", "mono": 103.0, "result": {}},
        {"event": "ok", "task": "task 1", "host": "h2", "mono": 107.0, "result": {}},
        {"event": "failed", "task": "task 1", "host": "frozen0", "mono": 131.0,
         "result": {"task_timeout": True, "msg": "Task execution timed out, limit is: 30 second(s)"}},
        {"event": "task_start", "task": "task 2", "mono": 131.5},
        {"event": "ok", "task": "task 2", "host": "h1", "mono": 133.0, "result": {}},
        {"event": "task_start", "task": "task 3", "mono": 135.0},
        {"event": "stats", "mono": 140.0},
    ])  # fmt: skip


def test_task_spans_run_from_one_task_start_to_the_next() -> None:
    assert task_spans(_frozen_run()) == {"task 1": 31.5, "task 2": 3.5, "task 3": 5.0}


def test_healthy_done_is_the_last_healthy_result_and_none_when_one_is_missing() -> None:
    run = _frozen_run()
    assert healthy_done(run, HEALTHY) == 7.0
    assert healthy_done(run, HEALTHY | {"h3"}) is None  # h3 never reported: not a smaller number


def test_failures_count_by_task_and_message_of_the_hosts_asked_for() -> None:
    run = _frozen_run()
    assert _failures(run, HEALTHY) == {}
    assert _failures(run) == {"task 1 failed: Task execution timed out, limit is: 30 second(s)": 1}


def _starts_and_results(
    task: str, times: dict[str, tuple[float, float]], limit: bool
) -> list[dict[str, Any]]:
    """Runner starts and results at the given (start, end) ts; `limit`: results past 15 s time out."""
    events: list[dict[str, Any]] = []
    for host, (start, end) in times.items():
        timed_out = limit and end - start >= 15
        events.append({"event": "runner_start", "task": task, "host": host, "ts": start})
        events.append({"event": "failed" if timed_out else "ok", "task": task, "host": host, "ts": end,
                       "result": {"task_timeout": True} if timed_out else {}})  # fmt: skip
    return events


def test_healthy_hosts_that_timed_out_are_shown_beside_stock_s_task_times() -> None:
    patched = _run(_starts_and_results("task 1", {"h1": (0, 4), "h2": (1, 16), "h3": (2, 17)}, limit=True))
    stock = _run(_starts_and_results("task 1", {"s1": (0, 5), "s2": (1, 9), "s3": (2, 21)}, limit=False))
    assert host_task_times(patched, {"h1", "h2", "h3", "never"}, "task 1") == [4, 15, 15]
    assert beside_stock(patched, {"h1", "h2", "h3"}, stock, {"s1", "s2", "s3"}, 15) == (
        "task 1: 2 timed out; per host median / max 15.0 / 15.0 s, stock 8.0 / 19.0 s, "
        "stock over 15 s: 1 of 3 hosts"
    )


def _row(n: int, **extra: Any) -> dict[str, Any]:
    row = {
        "n": n, "forks": 20, "frozen": max(1, n // 100), "limit_s": 30, "healthy_s": 100.0,
        "patched_frozen_s": 131.0, "stock_frozen_s": None, "stock_bound_s": 190.0,
        "frozen_timed_out": max(1, n // 100), "healthy_hosts_complete": True, "leftover_processes": 0,
        "leftover_sockets": 0, "extra_s": 31.0, "patched_task1_s": 31.5, "patched_task1_healthy_s": 7.0,
    }  # fmt: skip
    return {**row, **extra}


def test_held_is_measured_within_the_frozen_run() -> None:
    assert report.held_s(_row(50)) == 24.5
    assert report.held_s(_row(50, patched_task1_healthy_s=None)) is None  # older rows: not known


def test_merge_replaces_only_rows_of_the_same_hosts_forks_and_limit() -> None:
    run_a = {"date": "a", "args": "", "machine": {}, "duration_s": 1}
    run_b = {"date": "b", "args": "--sizes 100", "machine": {}, "duration_s": 2}
    first = report.merge({}, {"fleet": [_row(50), _row(100)]}, run_a)
    second = report.merge(first, {"fleet": [_row(100, healthy_s=90.0)]}, run_b)
    by_n = {r["n"]: r for r in second["fleet"]}
    assert by_n[50]["healthy_s"] == 100.0 and second["runs"]["fleet"][by_n[50]["run"]]["date"] == "a"
    assert by_n[100]["healthy_s"] == 90.0 and second["runs"]["fleet"][by_n[100]["run"]]["date"] == "b"


def test_markdown_shows_held_and_not_measured_rows() -> None:
    run = {"date": "d", "args": "", "machine": {"cores": 2, "memory_gib": 1, "kernel": "k", "docker": "x"},
           "duration_s": 60}  # fmt: skip
    error = {"n": 100, "forks": 50, "frozen": 1, "limit_s": 15, "error": "healthy run failed"}
    text = report.markdown(report.merge({}, {"fleet": [_row(50), error]}, run))
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header, row_50, row_err = lines[0].split(" | "), lines[1].split(" | "), lines[2]
    assert row_50[header.index("task 1 held by frozen hosts (s)")] == "24.5"
    assert "not measured: healthy run failed" in row_err
    assert len(row_50) == len(header)


@pytest.mark.parametrize("bad", ["0", "-3", "1.5", "x", ""])
def test_counts_refuse_what_is_not_one_positive_integer(bad: str) -> None:
    with pytest.raises(Exception, match="positive integer"):
        _positive(bad)


def test_sizes_refuse_a_non_positive_size() -> None:
    assert _ints("50,100") == [50, 100]
    with pytest.raises(Exception, match="positive integers"):
        _ints("50,-1")


def _overhead(hosts: int, forks: int, ratio: float) -> dict[str, Any]:
    return {"hosts": hosts, "forks": forks, "median_ratio": ratio, "pairs": []}


def test_overhead_keeps_one_measurement_per_hosts_and_forks() -> None:
    run_a = {"date": "a", "args": "--only overhead", "machine": {}, "duration_s": 1}
    run_b = {"date": "b", "args": "--overhead-forks 50", "machine": {}, "duration_s": 2}
    older = {"overhead": _overhead(20, 20, 1.015), "runs": {"overhead": run_a}}  # one measurement, run apart
    merged = report.merge(older, {"overhead": [_overhead(100, 50, 1.1)]}, run_b)
    assert [(o["hosts"], o["forks"], o["measured"]["date"]) for o in report.overheads(merged)] == [
        (20, 20, "a"),
        (100, 50, "b"),
    ]
    again = report.merge(merged, {"overhead": [_overhead(100, 50, 1.05)]}, run_a)
    assert [o["median_ratio"] for o in report.overheads(again)] == [1.015, 1.05]
