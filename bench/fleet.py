"""Fleet runs: N hosts, 1 % of them frozen mid task 1; patched vs healthy vs stock.

What the motivating incident needs to see: with the patches, a run with frozen hosts costs about
one task limit T more than the healthy run, whatever N is; stock ansible-core never finishes.

Whole runs of hundreds of hosts vary by about 5 % from one run to the next on a shared 2-core
machine, more than T at N = 500, so each row also splits the runs by task (from the callback's
task_start events): the frozen hosts cost task 1 only, and the other two tasks show the noise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass

from .lab import (
    EE_IMAGE,
    STOCK_IMAGE,
    Bench,
    RunResult,
    base_env,
    control_sockets,
    freeze_when_running,
    run_playbook,
)


@dataclass
class FleetRow:
    n: int
    forks: int
    frozen: int
    limit_s: int
    healthy_s: float
    patched_frozen_s: float
    stock_frozen_s: float | None
    stock_bound_s: float
    frozen_timed_out: int
    healthy_hosts_complete: bool
    leftover_processes: int
    leftover_sockets: int
    healthy_task1_s: float | None = None
    patched_task1_s: float | None = None
    healthy_rest_s: float | None = None
    patched_rest_s: float | None = None
    frozen_failed_after_s: float | None = None
    patched_task1_healthy_s: float | None = None
    stock_task1_healthy_s: float | None = None
    healthy_failed: dict[str, int] | None = None
    """Healthy hosts of the patched frozen run that failed, by task and message (none expected)."""

    @property
    def extra_s(self) -> float:
        return self.patched_frozen_s - self.healthy_s


def _run(bench: Bench, image: str, tag: str, n: int, frozen: int, env: dict[str, str], bound_s: float):
    """One run on a fleet of its own: a frozen host of an earlier run would carry its hung command."""
    fleet = bench.fleet(n, frozen, tag)
    ee = bench.ee(image, tag, {"inventory.ini": fleet.inventory})
    triggers = freeze_when_running(fleet)
    try:
        result = run_playbook(ee, "fleet.yml", env=env, outer_limit_s=bound_s, settle_s=5.0)
        sockets = control_sockets(ee)
    finally:
        for trigger in triggers:
            trigger.stop()
        bench.drop(ee)
        bench.remove_fleet(fleet)
    for trigger in triggers:
        trigger.assert_fired()
    return fleet, result, sockets


def task_spans(result: RunResult) -> dict[str, float]:
    """Seconds from each task's start to the next task's start (the last: to the stats)."""
    marks = [(e["task"], float(e["mono"])) for e in result.events if e["event"] == "task_start"]
    end = next((float(e["mono"]) for e in result.events if e["event"] == "stats"), None)
    spans: dict[str, float] = {}
    for i, (task, start) in enumerate(marks):
        stop = marks[i + 1][1] if i + 1 < len(marks) else end
        if stop is not None:
            spans[task] = round(stop - start, 2)
    return spans


def _rest(spans: dict[str, float]) -> float | None:
    """Tasks 2 and 3 together, or None when a span is missing (never a sum that counts one as 0)."""
    if "task 2" not in spans or "task 3" not in spans:
        return None
    return round(spans["task 2"] + spans["task 3"], 2)


class FleetRunFailed(RuntimeError):
    """The healthy run of a size did not succeed: the size is reported as not measured, with why."""


def _frozen_count(n: int) -> int:
    """1 % of the fleet frozen, at least one host."""
    return max(1, n // 100)


def _failures(run: RunResult, hosts: Collection[str] | None = None) -> dict[str, int]:
    """Failed or unreachable results (of `hosts`, or of every host), counted by task and message."""
    counts: dict[str, int] = {}
    for e in run.results():
        if e["event"] in ("failed", "unreachable") and (hosts is None or e.get("host") in hosts):
            key = f"{e['task']} {e['event']}: {str(e['result'].get('msg'))[:80]}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _why_failed(run: RunResult, n: int, forks: int) -> str:
    """One line for the table: how many results failed, by task and message (a failed host stops)."""
    if run.hit_outer_limit:
        return f"healthy run of {n} hosts (forks {forks}) did not finish within its bound"
    failures = _failures(run)
    if not failures:
        return f"healthy run of {n} hosts (forks {forks}) ended with rc {run.rc}: {run.stderr[-300:]!r}"
    return f"healthy run of {n} hosts failed: " + "; ".join(f"{k} x {why}" for why, k in failures.items())


def healthy_done(result: RunResult, hosts: Collection[str], task: str = "task 1") -> float | None:
    """Seconds from `task`'s start to the last of `hosts` reporting on it; None if one never did.

    Stock ansible-core never finishes task 1 with a frozen host in the fleet, but its healthy hosts
    do report: this is what tells ansible-core's own cost per host at N from ours, in the same
    runs, without a fourth run per size.
    """
    start = next((float(e["mono"]) for e in result.events if e["event"] == "task_start"
                  and e.get("task") == task), None)  # fmt: skip
    ends: dict[str, float] = {}
    for e in result.results(task=task):
        if e.get("host") in hosts:
            ends[e["host"]] = max(ends.get(e["host"], 0.0), float(e["mono"]))
    if start is None or not hosts or len(ends) < len(hosts):
        return None
    return round(max(ends.values()) - start, 2)


TASKS = ("task 1", "task 2", "task 3")
"""The tasks of bench/playbooks/fleet.yml, by name."""


def host_task_times(result: RunResult, hosts: Collection[str], task: str) -> list[float]:
    """Each host's time on `task`, from its runner's start to its last result, sorted (hosts that
    never started or reported it are left out)."""
    times = []
    for host in hosts:
        start = result.start_of(host, task)
        ends = [float(e["ts"]) for e in result.results(host=host, task=task)]
        if start is not None and ends:
            times.append(round(max(ends) - start, 2))
    return sorted(times)


def _timed_out(result: RunResult, task: str) -> int:
    return sum(
        1 for e in result.results(task=task) if e["event"] == "failed" and e["result"].get("task_timeout")
    )


def beside_stock(
    patched: RunResult, hosts: Collection[str], stock: RunResult, stock_hosts: Collection[str], limit_s: int
) -> str:
    """For each task on which healthy hosts timed out: their task times next to stock's, in a run of a
    fleet of the same size. Stock enforces no limit: its times say whether it finished them in time."""
    parts = []
    for task in TASKS:
        if not (count := _timed_out(patched, task)):
            continue
        ours, theirs = host_task_times(patched, hosts, task), host_task_times(stock, stock_hosts, task)
        over = sum(1 for t in theirs if t > limit_s)
        parts.append(
            f"{task}: {count} timed out; per host median / max {_median(ours)} / {max(ours, default='-')} s, "
            f"stock {_median(theirs)} / {max(theirs, default='-')} s, "
            f"stock over {limit_s} s: {over} of {len(theirs)} hosts"
        )
    return "; ".join(parts)


def _median(values: list[float]) -> float | str:
    return round(statistics.median(values), 2) if values else "-"


def run_fleet(bench: Bench, n: int, forks: int, limit_s: int) -> FleetRow:
    frozen = _frozen_count(n)
    env = base_env("linear", forks)
    env["ANSIBLE_TASK_DEADLINE"] = str(limit_s)
    env["ANSIBLE_PIPELINING"] = "True"

    fleet, healthy, _ = _run(bench, EE_IMAGE, f"n{n}f{forks}h", n, 0, env, 1800)
    if healthy.hit_outer_limit or healthy.rc != 0:
        why = _why_failed(healthy, n, forks)
        if not healthy.hit_outer_limit and any(_timed_out(healthy, t) for t in TASKS):
            # healthy hosts timed out: would stock have finished them within the limit?
            stock_fleet, stock_healthy, _ = _run(bench, STOCK_IMAGE, f"n{n}f{forks}sh", n, 0, env, 1800)
            times = beside_stock(
                healthy, fleet.healthy.keys(), stock_healthy, stock_fleet.healthy.keys(), limit_s
            )
            why += f". Beside stock's healthy run of a fleet of the same size: {times}"
        raise FleetRunFailed(why)
    bound = healthy.wall_s + 2 * limit_s + 30
    fleet, patched, sockets = _run(
        bench, EE_IMAGE, f"n{n}f{forks}p", n, frozen, env, healthy.wall_s + 10 * limit_s
    )
    _, stock, _ = _run(bench, STOCK_IMAGE, f"n{n}f{forks}s", n, frozen, env, bound)

    timed_out = sum(
        1
        for h in fleet.frozen
        for e in patched.results(host=h, task="task 1")
        if e["result"].get("task_timeout")
    )
    complete = all(
        any(e["event"] == "ok" for e in patched.results(host=h, task="task 3")) for h in fleet.healthy
    )
    h_spans, p_spans = task_spans(healthy), task_spans(patched)
    failed_after = [
        float(e["ts"]) - start
        for h in fleet.frozen
        if (start := patched.start_of(h, "task 1")) is not None
        for e in patched.results(host=h, task="task 1")
    ]
    return FleetRow(
        n=n,
        forks=forks,
        frozen=frozen,
        limit_s=limit_s,
        healthy_s=round(healthy.wall_s, 2),
        patched_frozen_s=round(patched.wall_s, 2),
        stock_frozen_s=None if stock.hit_outer_limit else round(stock.wall_s, 2),
        stock_bound_s=round(bound, 1),
        frozen_timed_out=timed_out,
        healthy_hosts_complete=complete,
        leftover_processes=len(patched.leftovers),
        leftover_sockets=sockets,
        healthy_task1_s=h_spans.get("task 1"),
        patched_task1_s=p_spans.get("task 1"),
        healthy_rest_s=_rest(h_spans),
        patched_rest_s=_rest(p_spans),
        frozen_failed_after_s=round(max(failed_after), 2) if failed_after else None,
        patched_task1_healthy_s=healthy_done(patched, fleet.healthy.keys()),
        stock_task1_healthy_s=healthy_done(stock, fleet.healthy.keys()),
        healthy_failed=_failures(patched, fleet.healthy.keys()),
    )


def fleet_benchmark(sizes: list[int], forks: list[int], limit_s: int) -> list[dict]:
    rows = []
    with Bench.open() as bench:
        for f in forks:
            for n in sizes:
                t0 = time.monotonic()
                try:
                    row = run_fleet(bench, n, f, limit_s)
                except FleetRunFailed as exc:
                    print(f"fleet N={n} forks={f}: not measured: {exc}", flush=True)
                    rows.append({"n": n, "forks": f, "frozen": _frozen_count(n), "limit_s": limit_s,
                                 "error": str(exc)})  # fmt: skip
                    continue
                stock = "hung" if row.stock_frozen_s is None else f"{row.stock_frozen_s:.1f} s"
                print(
                    f"fleet N={n} forks={f}: healthy {row.healthy_s:.1f} s, patched+frozen "
                    f"{row.patched_frozen_s:.1f} s (+{row.extra_s:.1f}), stock {stock}, "
                    f"leftovers {row.leftover_processes}/{row.leftover_sockets} "
                    f"[{time.monotonic() - t0:.0f} s]",
                    flush=True,
                )
                rows.append({**asdict(row), "extra_s": round(row.extra_s, 2)})
    return rows
