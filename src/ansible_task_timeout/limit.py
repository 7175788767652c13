"""The ``task_timeout`` keyword: which values it takes, what a task that outlived it reports.

Pure values, no signals and no processes, because both sides need them: the worker validates the
limit it resolved (:func:`ansible_task_timeout.worker.resolve_limit`) and tells the controller
(:func:`announce_limit`); the controller reads a literal limit as written (:func:`literal_limit`)
and never templates one; both build the same timeout result.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

KEYWORD = "task_timeout"
MAX_TASK_TIMEOUT = 365 * 24 * 3600
"""Largest accepted limit (one year): anything larger is a typo, not a deadline."""


class TaskTimeoutValueError(ValueError):
    """A `task_timeout` value that is not a whole number of seconds in range."""


class TaskDeadlineExceeded(BaseException):
    """Raised by the alarm when the whole-task deadline passes.

    A BaseException (like upstream's TaskTimeoutError) so that the many ``except Exception``
    handlers between the alarm and TaskExecutor.run() cannot swallow it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(timed_out_message(limit))


@dataclasses.dataclass(frozen=True)
class LimitNotice:
    """Sent by a worker to the controller: the limit it resolved from a templated ``task_timeout``."""

    limit: int


def validate_limit(value: object, keyword: str = KEYWORD) -> int:
    """Return `value` as whole seconds (0 = off) or raise TaskTimeoutValueError naming keyword and value.

    Floats are refused rather than rounded: ``2.5`` silently becoming ``2`` would hide a mistake.
    """
    problem = f"must be a whole number of seconds between 0 (off) and {MAX_TASK_TIMEOUT}"
    seconds: int | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\+?[0-9]+\s*", value):
        seconds = int(value)
    if seconds is None or not 0 <= seconds <= MAX_TASK_TIMEOUT:
        raise TaskTimeoutValueError(f"Invalid value for {keyword}: {value!r}; it {problem}.")
    return seconds


def literal_limit(raw: object) -> int | None:
    """The limit when `raw` needs no templating; None when only the worker can resolve it.

    The controller never templates the value: for a template (or a bad value, which the worker
    reports at once) its watchdog starts with a provisional deadline and learns the limit from
    the worker (:func:`announce_limit`).
    """
    try:
        return validate_limit(raw)
    except TaskTimeoutValueError:
        return None


def announce_limit(raw: object, limit: int, send: Callable[[object], None]) -> None:
    """In the worker: tell the controller the limit resolved from a template (a :class:`LimitNotice`)."""
    if literal_limit(raw) is None:
        send(LimitNotice(limit))


def timed_out_message(limit: int) -> str:
    """The stable, documented message of a task that outlived `task_timeout`."""
    return f"Task execution timed out, limit is: {limit} second(s)"


def timed_out_result(limit: int) -> dict[str, object]:
    """Result keys of a task that outlived `task_timeout`.

    ``timedout.period`` is upstream's shape, so the existing ``is timedout`` test keeps working;
    ``task_timeout: true`` tells it apart from upstream's per-attempt ``timeout``.
    """
    return {
        "failed": True,
        "changed": False,
        "task_timeout": True,
        "msg": timed_out_message(limit),
        "timedout": {"period": limit},
    }


def invalid_value_result(error: BaseException) -> dict[str, object]:
    """Result of a task whose `task_timeout` value was refused (the task is not run)."""
    return {"failed": True, "changed": False, "msg": str(error)}
