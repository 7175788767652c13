"""Write the results: JSON (all numbers), a markdown table the README includes, and PNG plots.

A run may measure only some parts or sizes (`--only fleet --sizes 500,1000`): its results are merged
into what bench/results/ already holds, part by part and fleet row by (hosts, forks, T), and each part
keeps the date, command and machine it was measured with, so nothing is quoted without its origin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(out: Path) -> dict[str, Any]:
    """The results written before, or nothing (an older layout without per-part runs is dropped)."""
    try:
        old = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old.get("runs"), dict) else {}


def _key(row: dict[str, Any]) -> tuple[int, int, int]:
    return row["n"], row["forks"], row["limit_s"]


def merge(old: dict[str, Any], new: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """`old` updated with the parts of `new`; fleet rows replace only the rows of the same size, forks and T,
    overhead measurements only the one of the same hosts and forks.

    ``runs[part]`` is the run that measured the part; for the fleet, a list of the runs its rows
    come from, each row naming its run by index.
    """
    merged = dict(old)
    runs = dict(old.get("runs", {}))
    if "overhead" in old:  # each measurement carries its run (older results: one, its run apart)
        merged["overhead"] = overheads(old)
        runs.pop("overhead", None)
    for part, value in new.items():
        if part == "fleet":
            fresh = {_key(r) for r in value}
            kept = [r for r in old.get("fleet", []) if _key(r) not in fresh]
            old_runs = runs.get("fleet", [])
            fleet_runs: list[dict[str, Any]] = []
            for r in kept:  # renumber: drop the runs no row comes from any more
                origin = old_runs[r["run"]]
                if origin not in fleet_runs:
                    fleet_runs.append(origin)
                r["run"] = fleet_runs.index(origin)
            fleet_runs.append(run)
            for r in value:
                r["run"] = len(fleet_runs) - 1
            merged[part] = sorted(kept + value, key=lambda r: (r["forks"], r["limit_s"], r["n"]))
            runs[part] = fleet_runs
        elif part == "overhead":
            fresh = {_overhead_key(o) for o in value}
            kept = [o for o in merged.get(part, []) if _overhead_key(o) not in fresh]
            merged[part] = sorted(kept + [{**o, "measured": run} for o in value], key=_overhead_key)
        else:
            merged[part] = value
            runs[part] = run
    merged["runs"] = runs
    return merged


def _overhead_key(o: dict[str, Any]) -> tuple[int, int]:
    return o["hosts"], o["forks"]


def overheads(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The overhead measurements, one per (hosts, forks), each with the run that measured it.

    Results written before there could be several hold one measurement and its run apart.
    """
    value = results.get("overhead")
    if isinstance(value, dict):
        return [{**value, "measured": value.get("measured") or results.get("runs", {}).get("overhead")}]
    return list(value or [])


def _origin(run: dict[str, Any]) -> str:
    m = run["machine"]
    command = "make bench" + (f" BENCH_ARGS='{run['args']}'" if run["args"] else "")
    return (
        f"measured {run['date']} on {m['cores']} cores, {m['memory_gib']} GiB, kernel {m['kernel']}, "
        f"Docker {m['docker']}, commit {run.get('commit', '?')}, "
        f"by `{command}` ({run['duration_s'] / 60:.1f} min)"
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pair(row: dict[str, Any], a: str, b: str) -> str:
    """Two measurements of one row, or "-" for rows measured before they were recorded."""
    if row.get(a) is None or row.get(b) is None:
        return "-"
    return f"{row[a]:.1f} / {row[b]:.1f}"


def held_s(row: dict[str, Any]) -> float | None:
    """How long the frozen hosts held task 1 open after the last healthy host's result, in one run.

    The task-1 span (its start to task 2's start) minus the healthy hosts' task-1 time, both from
    the patched frozen run: unlike "extra", which subtracts two runs made minutes apart on a shared
    machine whose speed drifts by a fifth within the hour and more across days, this needs no
    second run. It stays under T + 2 s when the frozen hosts cost one deadline; stock ansible-core
    never ends task 1. The frozen hosts are last in the inventory, the worst place: their deadline
    starts after every healthy host's run did.
    """
    span, healthy = row.get("patched_task1_s"), row.get("patched_task1_healthy_s")
    return None if span is None or healthy is None else round(span - healthy, 2)


def _complete(row: dict[str, Any]) -> str:
    if row["healthy_hosts_complete"]:
        return "yes"
    failed = row.get("healthy_failed")
    return "NO" + (": " + "; ".join(f"{n} x {why}" for why, n in failed.items()) if failed else "")


def _fleet_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| hosts | forks | frozen | T (s) | healthy (s) | patched, frozen (s) | extra (s) "
        "| task 1 held by frozen hosts (s) | per host (ms) "
        "| task 1: healthy / patched (s) | tasks 2-3: healthy / patched (s) | frozen host failed after (s) "
        "| task 1, healthy hosts done: patched / stock (s) | stock, frozen | frozen timed out "
        "| healthy complete | left: procs / sockets | run |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|---:|",
    ]
    for r in rows:
        if r.get("error"):
            out.append(
                f"| {r['n']} | {r['forks']} | {r['frozen']} | {r['limit_s']} "
                f"| not measured: {r['error']} ||||||||||||| {r['run'] + 1} |"
            )
            continue
        stock = (
            f"{r['stock_frozen_s']:.1f} s"
            if r["stock_frozen_s"] is not None
            else (f"did not finish within {r['stock_bound_s']:.0f} s")
        )
        out.append(
            f"| {r['n']} | {r['forks']} | {r['frozen']} | {r['limit_s']} | {r['healthy_s']:.1f} "
            f"| {r['patched_frozen_s']:.1f} | {r['extra_s']:+.1f} | {_num(held_s(r))} "
            f"| {1000 * r['healthy_s'] / r['n']:.0f} "
            f"| {_pair(r, 'healthy_task1_s', 'patched_task1_s')} "
            f"| {_pair(r, 'healthy_rest_s', 'patched_rest_s')} "
            f"| {_num(r.get('frozen_failed_after_s'))} "
            f"| {_pair(r, 'patched_task1_healthy_s', 'stock_task1_healthy_s')} "
            f"| {stock} | {r['frozen_timed_out']}/{r['frozen']} "
            f"| {_complete(r)} "
            f"| {r['leftover_processes']} / {r['leftover_sockets']} | {r['run'] + 1} |"
        )
    return out


def markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines: list[str] = []
    if results.get("fleet"):
        lines += [
            "**Fleet** (three-task play, 1 % of hosts frozen in task 1, linear strategy, pipelining; "
            "the last column names the run below the table):",
            "",
        ]
        lines += _fleet_table(results["fleet"]) + [""]
        lines += [f"{i + 1}. {_origin(r)}." for i, r in enumerate(runs["fleet"])] + [""]
    for o in overheads(results):
        controller = (  # older measurements did not read the controller's CPU apart
            f"; the controller's own: {o['patched_median_controller_cpu_s']:.2f} s vs "
            f"{o['stock_median_controller_cpu_s']:.2f} s"
            if "patched_median_controller_cpu_s" in o
            else ""
        )
        lines += [
            f"**Overhead** (healthy run, {o['hosts']} hosts, forks {o['forks']}, "
            f"{len(o['pairs'])} alternated pairs): median patched/stock ratio "
            f"**{o['median_ratio']:.3f}** (min {o['min_ratio']:.3f}, max {o['max_ratio']:.3f}); "
            f"medians {o['patched_median_s']:.2f} s vs {o['stock_median_s']:.2f} s. "
            f"CPU seconds of the EE's processes: median ratio {o['median_cpu_ratio']:.3f} "
            f"(min {o['min_cpu_ratio']:.3f}, max {o['max_cpu_ratio']:.3f}; "
            f"{o['patched_median_cpu_s']:.2f} s vs {o['stock_median_cpu_s']:.2f} s{controller}). "
            f"Controller peak RSS: patched {o['patched_peak_mib']} MiB, stock {o['stock_peak_mib']} MiB "
            f"({_origin(o['measured'])}).",
            "",
        ]
    if results.get("latency"):
        origin = _origin(runs["latency"])
        lines += [f"**Detection latency** (deadline to failed result, per hang mode; {origin}):", ""]
        lines += [
            "| mode | T (s) | runs | median (s) | max (s) | problems |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for r in results["latency"]:
            lines.append(
                f"| {r['mode']} | {r['limit_s']} | {r['repeats']} | {r['median_s']} | {r['max_s']} "
                f"| {'; '.join(r['problems']) or '-'} |"
            )
        lines.append("")
    if i := results.get("image"):
        parts = [f"patched {i['patched_mb']} MB, stock {i['stock_mb']} MB uncompressed"]
        if "full_mb" in i:
            parts[0] += f", full (with the ansible package) {i['full_mb']} MB"
        if "cold_build_s" in i:
            parts.append(
                f"cold build {i['cold_total_s']:.0f} s (base bootstrap {i['base_bootstrap_s']:.0f} s + image "
                f"{i['cold_build_s']:.0f} s), "
                f"rebuild after one patch edit {i['rebuild_after_patch_edit_s']:.0f} s"
            )
        lines += ["**Image**: " + "; ".join(parts) + f" ({_origin(runs['image'])}).", ""]
    return "\n".join(lines)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _hosts_axis(ax: plt.Axes, ylabel: str, title: str, log: bool = True) -> None:
    """A fleet panel: hosts on x (log scale where sizes span 25-1000), y from 0 unless wall time."""
    ax.set_xlabel("hosts")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    made: list[Path] = []
    if fleet := [r for r in results.get("fleet", []) if not r.get("error")]:
        fig, (ax, per, hold) = plt.subplots(1, 3, figsize=(16, 4))
        for forks, limit in sorted({(r["forks"], r["limit_s"]) for r in fleet}):
            rows = sorted(
                (r for r in fleet if (r["forks"], r["limit_s"]) == (forks, limit)), key=lambda r: r["n"]
            )
            n = [r["n"] for r in rows]
            ax.plot(n, [r["healthy_s"] for r in rows], "o-", label=f"healthy, forks {forks}, T {limit}")
            ax.plot(
                n,
                [r["patched_frozen_s"] for r in rows],
                "s-",
                label=f"patched, 1 % frozen, forks {forks}, T {limit}",
            )
            ax.plot(
                n,
                [r["stock_bound_s"] for r in rows],
                "x:",
                label=f"stock, 1 % frozen: unfinished at, forks {forks}, T {limit}",
            )
            per.plot(
                n,
                [1000 * r["healthy_s"] / r["n"] for r in rows],
                "o-",
                label=f"healthy run, 3 tasks, forks {forks}, T {limit}",
            )
            split = [r for r in rows if r.get("stock_task1_healthy_s") and r.get("patched_task1_healthy_s")]
            if split:
                m = [r["n"] for r in split]
                for key, mark, who in (("patched", "s--", "patched"), ("stock", "x--", "stock")):
                    ms = [3000 * r[f"{key}_task1_healthy_s"] / (r["n"] - r["frozen"]) for r in split]
                    per.plot(m, ms, mark, label=f"{who}, task 1 x 3, forks {forks}, T {limit}")
                hold.plot(m, [held_s(r) for r in split], "o-", label=f"forks {forks}, T {limit}")
        for limit in sorted({r["limit_s"] for r in fleet}):
            hold.axhline(limit + 2, color="red", linestyle=":", linewidth=1)
            hold.annotate(f"T + 2 s = {limit + 2} s", (0.01, limit + 2), xycoords=("axes fraction", "data"),
                          fontsize=7, color="red", va="bottom")  # fmt: skip
        _hosts_axis(ax, "wall time (s)", "Fleet run with frozen hosts", log=False)
        _hosts_axis(per, "ms per host", "Cost per host (goal: flat)")
        _hosts_axis(hold, "seconds", "Task 1 held by frozen hosts, one run")
        made.append(_save(fig, out / "fleet.png"))
    if latency := results.get("latency"):
        fig, ax = plt.subplots(figsize=(7, 4))
        names = [r["mode"] for r in latency]
        ax.barh(names, [r["median_s"] or 0 for r in latency], label="median")
        ax.scatter([r["max_s"] or 0 for r in latency], names, color="black", marker="|", s=200, label="max")
        ax.set_xlabel("seconds from deadline to failed result")
        ax.set_title("Detection latency per hang mode")
        ax.legend(fontsize=8)
        made.append(_save(fig, out / "latency.png"))
    if measured := overheads(results):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for o in measured:
            pairs = [p["pair"] for p in o["pairs"]]
            label = f"{o['hosts']} hosts, forks {o['forks']}: median {o['median_ratio']:.3f}"
            ax.plot(pairs, [p["ratio"] for p in o["pairs"]], "o-", label=label)
        for level, style in ((1.01, ":"), (1.03, "--")):
            ax.axhline(level, color="red", linestyle=style, linewidth=1, label=f"{level}")
        ax.set_xlabel("pair")
        ax.set_ylabel("patched / stock wall time")
        ax.set_title("Healthy run, patched vs stock, alternated")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        made.append(_save(fig, out / "overhead.png"))
    return made


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    pictures = plots(results, out)
    md = markdown(results) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pictures) + "\n"
    (out / "results.md").write_text(md)
