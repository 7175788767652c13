"""Detection latency: for each hang mode of the test matrix, the time from the deadline to the result.

Runs the very scenarios of tests/integration (tests/harness/scenarios.py) with the patched image, so the
numbers describe what the tests assert with margins.
"""

from __future__ import annotations

import statistics
from typing import Any

from .lab import EE_IMAGE, Bench, start_target


def latency_benchmark(repeats: int, limit_s: int, modes: list[str] | None = None) -> list[dict[str, Any]]:
    from harness.scenarios import HUNG, SCENARIOS, Lab, run_scenario
    from harness.verdict import timeout_problems

    rows: list[dict[str, Any]] = []
    with Bench.open() as bench:
        pool = start_target(
            bench.session, bench.network, bench.key, f"{bench.session}-pool", [f"ok{i}" for i in range(5)]
        )
        bench._containers.append(pool.name)
        lab = Lab(bench.session, bench.network, bench.key, pool, bench.workdir)
        for name, scenario in SCENARIOS.items():
            if modes and name not in modes:
                continue
            latencies: list[float] = []
            problems: list[str] = []
            for _ in range(repeats):
                outcome = run_scenario(lab, scenario, image=EE_IMAGE, limit_s=limit_s, healthy_count=5)
                found, elapsed = timeout_problems(outcome.run, HUNG, scenario.hang_task, outcome.limit_s)
                problems += found
                if elapsed is not None:
                    latencies.append(elapsed - outcome.limit_s)
            row = {
                "mode": name,
                "limit_s": scenario.limit_s or limit_s,
                "repeats": repeats,
                "median_s": round(statistics.median(latencies), 2) if latencies else None,
                "max_s": round(max(latencies), 2) if latencies else None,
                "problems": problems,
            }
            print(
                f"latency {name}: median {row['median_s']} s, max {row['max_s']} s {problems or ''}",
                flush=True,
            )
            rows.append(row)
    return rows
