"""`make bench`: fleet, overhead, detection latency and image benchmarks; results in bench/results/.

Benchmarks are not tests: they never gate CI. The defaults finish in well under 30 minutes on the
2-core machine; larger fleets are flags, e.g. `make bench BENCH_ARGS="--only fleet --sizes
200,500,1000 --forks 20"`, or with forks 50, which needs a larger T on 2 cores, `--forks 50 --limit 30`.
The overhead is kept per (hosts, forks): `--only overhead --overhead-hosts 100 --overhead-forks 50
--pairs 5 --limit 60` adds a measurement beside the default one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from . import report

OUT = Path(__file__).resolve().parent / "results"
PARTS = ("image", "overhead", "fleet", "latency")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return value


def machine() -> dict[str, str | int | float]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    docker = subprocess.run(
        ["docker", "version", "-f", "{{.Server.Version}}"], capture_output=True, text=True
    )
    return {
        "cores": os.cpu_count() or 0,
        "memory_gib": round(mem, 1),
        "kernel": platform.release(),
        "docker": docker.stdout.strip() or "?",
    }


def commit() -> str:
    """The checkout measured: short commit id, with "+changes" when the tree differs from it."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "patches", "context"], cwd=root,
                           capture_output=True, text=True)  # fmt: skip
    return (head.stdout.strip() or "?") + ("+changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_ints, default=[25, 50, 100], help="fleet sizes (hosts)")
    parser.add_argument("--forks", type=_ints, default=[20], help="fork counts for the fleet runs")
    parser.add_argument("--limit", type=_positive, default=15, help="task_timeout T of the fleet runs (s)")
    parser.add_argument("--pairs", type=_positive, default=10, help="patched/stock pairs of the overhead run")
    parser.add_argument("--overhead-hosts", type=_positive, default=20)
    parser.add_argument("--overhead-forks", type=_positive, default=20)
    parser.add_argument("--repeats", type=_positive, default=1, help="runs per hang mode for the latency")
    parser.add_argument("--no-cold-build", action="store_true", help="skip the cold image build timing")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only these parts")
    args = parser.parse_args(argv)
    parts = args.only or list(PARTS)
    t0 = time.monotonic()
    run = {
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        "args": " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
    }
    results: dict = {}
    if "image" in parts:
        from .image import image_benchmark

        results["image"] = image_benchmark(cold=not args.no_cold_build)
        print(f"image: {results['image']}", flush=True)
    if "overhead" in parts:
        from .overhead import overhead_benchmark

        results["overhead"] = [
            overhead_benchmark(args.overhead_hosts, args.overhead_forks, args.pairs, args.limit)
        ]
    if "fleet" in parts:
        from .fleet import fleet_benchmark

        results["fleet"] = fleet_benchmark(args.sizes, args.forks, args.limit)
    if "latency" in parts:
        from .latency import latency_benchmark

        results["latency"] = latency_benchmark(args.repeats, limit_s=6)
    run["duration_s"] = round(time.monotonic() - t0, 1)
    report.write(report.merge(report.load(OUT), results, run), OUT)
    print(f"bench: wrote {OUT}/results.md, results.json and plots in {run['duration_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
