"""Overhead of the patches on a healthy run: patched vs stock image, alternated within one session.

Alternating (patched, stock, patched, ...) on the same targets spreads the machine's drift over
both sides; the figure is the median of the per-pair ratios. Peak memory is the largest process
of the run (the controller), from ru_maxrss of the run's waited-for descendants. The CPU seconds
of the EE's processes (controller, workers, guardian, ssh) are reported beside the wall time: they
show what the patches cost even where the wall time, shared with the targets, hides it in noise.
The controller's own CPU (all its threads) is kept apart: the patches add work to it (result
channels, watchdog, registering workers) and to the rest (workers, guardian, reaped ssh masters).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from .lab import EE_IMAGE, STOCK_IMAGE, Bench, base_env, docker


def _timed_run(ee_name: str, env: dict[str, str], bound_s: float) -> tuple[float, dict[str, Any]]:
    """Wall seconds and rusage.py's figures (rc, maxrss_kib, cpu_s, controller_cpu_s) of one run."""
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    t0 = time.monotonic()
    out = docker(
        "exec", "-w", "/runner/project", *env_args, ee_name,
        "python3", "rusage.py", "ansible-playbook", "-i", "inventory.ini", "fleet.yml",
        timeout=bound_s,
    )  # fmt: skip
    wall = time.monotonic() - t0
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def overhead_benchmark(n: int, forks: int, pairs: int, limit_s: int) -> dict[str, Any]:
    env = base_env("linear", forks)
    env["ANSIBLE_PIPELINING"] = "True"
    env["ANSIBLE_TASK_DEADLINE"] = str(limit_s)  # the patched side pays for its deadline
    runs: list[dict[str, Any]] = []
    with Bench.open() as bench:
        fleet = bench.fleet(n, 0, "ovh")
        files = {"inventory.ini": fleet.inventory}

        def fresh_run(image: str, tag: str) -> tuple[float, dict[str, Any]]:
            # A fresh EE per run: no ControlPersist master of an earlier run to reuse (the patched
            # controller closes its masters at the end of a run, stock keeps them for 60 s).
            ee = bench.ee(image, tag, files)
            try:
                return _timed_run(ee.name, env, 600)
            finally:
                bench.drop(ee)

        fresh_run(EE_IMAGE, "ovh-warmup")  # page cache, first ssh handshakes of the targets
        for i in range(pairs):
            order = (EE_IMAGE, STOCK_IMAGE) if i % 2 == 0 else (STOCK_IMAGE, EE_IMAGE)
            pair: dict[str, Any] = {"pair": i + 1}
            for image in order:
                kind = "patched" if image == EE_IMAGE else "stock"
                wall, stats = fresh_run(image, f"ovh-{i}-{kind}")
                if stats["rc"] != 0:
                    raise RuntimeError(f"{kind} healthy run failed (rc {stats['rc']})")
                pair[f"{kind}_s"] = round(wall, 3)
                pair[f"{kind}_maxrss_mib"] = round(stats["maxrss_kib"] / 1024, 1)
                pair[f"{kind}_cpu_s"] = stats["cpu_s"]
                pair[f"{kind}_controller_cpu_s"] = stats["controller_cpu_s"]
            pair["ratio"] = round(pair["patched_s"] / pair["stock_s"], 4)
            pair["cpu_ratio"] = round(pair["patched_cpu_s"] / pair["stock_cpu_s"], 4)
            print(
                f"overhead pair {i + 1}: patched {pair['patched_s']:.2f} s, stock {pair['stock_s']:.2f} s, "
                f"ratio {pair['ratio']:.3f} (CPU {pair['cpu_ratio']:.3f}; controller "
                f"{pair['patched_controller_cpu_s']:.1f} vs {pair['stock_controller_cpu_s']:.1f} s)",
                flush=True,
            )
            runs.append(pair)
    ratios = [r["ratio"] for r in runs]
    cpu_ratios = [r["cpu_ratio"] for r in runs]

    def median(key: str, digits: int) -> float:
        return round(statistics.median(r[key] for r in runs), digits)

    summary: dict[str, Any] = {
        "hosts": n,
        "forks": forks,
        "pairs": runs,
        "median_ratio": round(statistics.median(ratios), 4),
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "median_cpu_ratio": round(statistics.median(cpu_ratios), 4),
        "min_cpu_ratio": min(cpu_ratios),
        "max_cpu_ratio": max(cpu_ratios),
    }
    for kind in ("patched", "stock"):
        summary[f"{kind}_median_s"] = median(f"{kind}_s", 3)
        summary[f"{kind}_median_cpu_s"] = median(f"{kind}_cpu_s", 2)
        summary[f"{kind}_median_controller_cpu_s"] = median(f"{kind}_controller_cpu_s", 2)
        summary[f"{kind}_peak_mib"] = max(r[f"{kind}_maxrss_mib"] for r in runs)
    return summary
