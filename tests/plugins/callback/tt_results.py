"""Test-only callback: one JSON line per runner event, with wall and monotonic timestamps.

The integration tests assert on *when* a host failed relative to its task's start, and on the exact
result dicts of every other host; the stdout callback shows neither reliably, so this aggregate
callback appends to $TT_RESULTS_FILE and flushes every line (a run killed by the outer limit still
leaves everything it saw so far).
"""

from __future__ import annotations

import json
import os
import threading
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: tt_results
    type: aggregate
    short_description: JSON lines of every host result, for the task-timeout-ee tests
    description: Writes one JSON object per event to the file named by TT_RESULTS_FILE.
    requirements:
      - enable in configuration (ANSIBLE_CALLBACKS_ENABLED=tt_results)
"""


def _result_dict(result: object) -> dict:
    data = getattr(result, "_result", None)
    if data is None:
        data = getattr(result, "result", None)
    return dict(data or {})


class CallbackModule(CallbackBase):
    """Append every task start, runner start and host result to $TT_RESULTS_FILE."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "tt_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._path = os.environ.get("TT_RESULTS_FILE", "tt_results.jsonl")
        self._lock = threading.Lock()
        self._fh = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def _emit(
        self, event: str, task: object = None, host: str | None = None, result: dict | None = None
    ) -> None:
        line = {
            "event": event,
            "ts": time.time(),
            "mono": time.monotonic(),
            "task": getattr(task, "get_name", lambda: None)() if task is not None else None,
            "task_uuid": getattr(task, "_uuid", None),
            "host": host,
            "result": result,
        }
        text = json.dumps(line, default=repr)
        with self._lock:
            self._fh.write(text + "\n")
            self._fh.flush()

    def _runner(self, event: str, result: object) -> None:
        host = getattr(getattr(result, "_host", None), "name", None)
        self._emit(event, getattr(result, "_task", None), host, _result_dict(result))

    def v2_playbook_on_task_start(self, task: object, is_conditional: bool) -> None:
        self._emit("task_start", task)

    def v2_playbook_on_handler_task_start(self, task: object) -> None:
        self._emit("handler_start", task)

    def v2_runner_on_start(self, host: object, task: object) -> None:
        self._emit("runner_start", task, getattr(host, "name", None))

    def v2_runner_on_ok(self, result: object) -> None:
        self._runner("ok", result)

    def v2_runner_on_failed(self, result: object, ignore_errors: bool = False) -> None:
        self._runner("failed", result)

    def v2_runner_on_skipped(self, result: object) -> None:
        self._runner("skipped", result)

    def v2_runner_on_unreachable(self, result: object) -> None:
        self._runner("unreachable", result)

    def v2_runner_item_on_ok(self, result: object) -> None:
        self._runner("item_ok", result)

    def v2_runner_item_on_failed(self, result: object) -> None:
        self._runner("item_failed", result)

    def v2_runner_on_async_poll(self, result: object) -> None:
        self._runner("async_poll", result)

    def v2_playbook_on_stats(self, stats: object) -> None:
        self._emit("stats", result={"failures": dict(getattr(stats, "failures", {}) or {})})
        self._fh.close()
