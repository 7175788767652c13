"""Judging a run against the guarantee: the hung host fails with task_timeout in time, alone.

Kept apart from the tests so the matrix, the stock reference and the demo judge runs the same way.
Every check returns human-readable problems instead of asserting, so a reference run on stock
ansible can record *which* parts of the guarantee failed.
"""

from __future__ import annotations

import re
from typing import Any

from harness.runner import RunResult

DEADLINE_SLACK_S = 2.0
"""The hung host must be reported failed no later than its deadline plus this."""
EARLY_MARGIN_S = 0.5
"""...and not before deadline minus this (an earlier failure is some other error)."""
AFTER_TASKS = ("after 1", "after 2")


def timeout_msg_ok(msg: str, limit_s: int) -> bool:
    """The patched message: 'Task execution timed out, limit is: N second(s)'."""
    return re.search(rf"Task execution timed out, limit is: {limit_s} second\(s\)", msg or "") is not None


def _is_task_timeout(result: dict[str, Any]) -> bool:
    if result.get("task_timeout") is True:
        return True
    return any(isinstance(r, dict) and r.get("task_timeout") is True for r in result.get("results", []) or [])


def _start_ts(run: RunResult, host: str, task: str) -> float | None:
    ts = run.start_of(host, task)
    if ts is not None:
        return ts
    for e in run.events:  # fallback: the task (or handler) start seen by the play
        if e["event"] in ("task_start", "handler_start") and e.get("task") == task:
            return float(e["ts"])
    return None


def timeout_problems(run: RunResult, host: str, task: str, limit_s: int) -> tuple[list[str], float | None]:
    """Problems with the hung host's result; also returns seconds from its task start to failure."""
    finals = run.results(host=host, task=task)
    if not finals:
        return [f"{host}: no result at all for task {task!r}"], None
    event = finals[-1]
    result = event.get("result") or {}
    problems = []
    if event["event"] != "failed":
        problems.append(f"{host}: {task!r} ended {event['event']!r}, not failed: {result.get('msg')!r}")
    if not _is_task_timeout(result):
        problems.append(f"{host}: result has no task_timeout: true (msg {result.get('msg')!r})")
    msgs = [result.get("msg", "")] + [
        r.get("msg", "") for r in result.get("results", []) or [] if isinstance(r, dict)
    ]
    if not any(timeout_msg_ok(m, limit_s) for m in msgs):
        problems.append(f"{host}: message is not the task-timeout message: {result.get('msg')!r}")
    start = _start_ts(run, host, task)
    elapsed = None if start is None else float(event["ts"]) - start
    if elapsed is None:
        problems.append(f"{host}: no start event for {task!r}")
    elif not (limit_s - EARLY_MARGIN_S <= elapsed <= limit_s + DEADLINE_SLACK_S):
        problems.append(
            f"{host}: failed {elapsed:.2f} s after its task started; expected within "
            f"[{limit_s - EARLY_MARGIN_S}, {limit_s + DEADLINE_SLACK_S}] s"
        )
    return problems, elapsed


def healthy_problems(run: RunResult, hosts: list[str], hang_task: str) -> list[str]:
    """Every other host ran the hang task fine and every later task with its own results."""
    problems = []
    for host in hosts:
        if hang_task != "Gathering Facts":
            finals = run.results(host=host, task=hang_task)
            if not finals or finals[-1]["event"] != "ok":
                problems.append(f"{host}: {hang_task!r} did not end ok: {[e['event'] for e in finals]}")
        for task in AFTER_TASKS:
            finals = run.results(host=host, task=task)
            if not finals:
                problems.append(f"{host}: never ran {task!r}")
                continue
            event = finals[-1]
            expected = f"{task.replace(' ', '')}-{host}"
            got = (event.get("result") or {}).get("stdout")
            if event["event"] != "ok" or got != expected:
                problems.append(
                    f"{host}: {task!r} ended {event['event']} with stdout {got!r}, expected {expected!r}"
                )
    return problems


def guarantee_problems(
    run: RunResult, hung: str, healthy: list[str], hang_task: str, limit_s: int
) -> tuple[list[str], float | None]:
    """All parts of the guarantee at once: bounded run, timed-out hung host, others intact, no leftovers."""
    problems = []
    if run.hit_outer_limit:
        problems.append(f"the run hung: killed by the outer limit after {run.wall_s:.1f} s")
    elif run.rc != 2:
        problems.append(f"ansible-playbook rc {run.rc}, expected 2 (one host failed)")
    tp, elapsed = timeout_problems(run, hung, hang_task, limit_s)
    problems += tp
    problems += healthy_problems(run, healthy, hang_task)
    if run.leftovers:
        problems.append(
            "leftover processes in the EE: "
            + "; ".join(f"{p['pid']} {p['status']} {p['cmdline'][:80]!r}" for p in run.leftovers)
        )
    return problems, elapsed
