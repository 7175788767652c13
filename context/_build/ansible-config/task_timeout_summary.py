"""Aggregate callback of task-timeout-ee: make every timed-out host impossible to miss.

A run with fifty hosts prints a timed-out host as one `fatal:` line among hundreds, and the recap
counts it as an ordinary failure. This callback adds, whatever the stdout callback is (default,
yaml, awx_display under ansible-runner/AWX):

- one line the moment a host hits its limit: `TASK TIMEOUT: [host] "task" exceeded its limit of N s`;
- after the recap, a `TASK TIMEOUTS` section listing every such host with its task and limit.
A run without a timeout prints nothing extra.

The image installs it as a collection callback, `task_timeout.ee.task_timeout_summary`, and its
/etc/ansible/ansible.cfg enables it (`callbacks_enabled`). A collection, not a callback_plugins
directory, because ansible-runner (navigator, AWX) sets ANSIBLE_CALLBACK_PLUGINS for its own
awx_display callback, which hides any directory configured in ansible.cfg. A project that
replaces the image's ansible.cfg keeps the summary with
`callbacks_enabled = task_timeout.ee.task_timeout_summary` (or ANSIBLE_CALLBACKS_ENABLED).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ansible import constants as C
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: task_timeout_summary
    type: aggregate
    short_description: list the hosts whose task hit its task_timeout, after the recap
    description:
      - Prints one line when a host's task fails with C(task_timeout=true), and a
        C(TASK TIMEOUTS) section after the play recap with host, task and limit.
    requirements:
      - enabled in configuration (the task-timeout-ee image's /etc/ansible/ansible.cfg does it)
"""

_LIMIT_RE = re.compile(r"limit is: (\d+) second")


@dataclass(frozen=True)
class TimedOut:
    """One host whose task hit its limit."""

    host: str
    task: str
    limit_s: int | None
    play: str


def _timeout_limit(result: dict[str, Any]) -> tuple[bool, int | None]:
    """Whether a result (or one of its loop items) is a task timeout, and the limit it names."""
    candidates = [result] + [r for r in result.get("results") or [] if isinstance(r, dict)]
    for item in candidates:
        if item.get("task_timeout") is not True:
            continue
        period = (item.get("timedout") or {}).get("period")
        if isinstance(period, int):
            return True, period
        match = _LIMIT_RE.search(str(item.get("msg", "")))
        return True, int(match.group(1)) if match else None
    return False, None


class CallbackModule(CallbackBase):
    """Collect task timeouts as they happen; list them after the recap."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_timeout_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeouts: list[TimedOut] = []
        self._play = ""

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._play = play.get_name().strip()

    def _record(self, result: Any) -> None:
        is_timeout, limit = _timeout_limit(dict(result._result or {}))
        if not is_timeout:
            return
        entry = TimedOut(result._host.get_name(), result._task.get_name().strip(), limit, self._play)
        self._timeouts.append(entry)
        limit_text = f"{limit} s" if limit is not None else "its limit"
        self._display.display(
            f'TASK TIMEOUT: [{entry.host}] "{entry.task}" exceeded its limit of {limit_text}',
            color=C.COLOR_ERROR,
        )

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record(result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        if not self._timeouts:
            return
        self._display.banner("TASK TIMEOUTS")
        width = max(len(t.host) for t in self._timeouts)
        for t in self._timeouts:
            limit_text = f"limit {t.limit_s} s" if t.limit_s is not None else "limit unknown"
            self._display.display(
                f'{t.host.ljust(width)} : task "{t.task}" ({limit_text}) in play "{t.play}"',
                color=C.COLOR_ERROR,
            )
        self._display.display(f"{len(self._timeouts)} task(s) timed out", color=C.COLOR_ERROR)
