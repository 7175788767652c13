"""What a worker does around its task, beyond the alarm: resolve the limit, and after a timeout
clean up without the host.

Everything here runs in the worker and is bounded: a templated limit is resolved under an alarm (a
lookup may hang), a remote cleanup under a limit is bounded, and after a timeout the worker kills
and reaps its own tree and lets go of its ssh masters within ``bounds.REAP_BUDGET``, so that its
timeout result is sent before the controller's watchdog would step in.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable

from ansible_task_timeout import alarm, bounds, limit, sshmux


class _CleanupTimeout(BaseException):
    """Raised when a bounded remote cleanup outlives ``bounds.CLEANUP_LIMIT``."""


class _ResolveTimeout(BaseException):
    """Raised when templating a ``task_timeout`` value outlives ``bounds.RESOLVE_LIMIT``."""


def resolve_limit(
    raw: object, render: Callable[[object], object] | None = None, keyword: str = limit.KEYWORD
) -> int:
    """Template `raw` with `render` (the task's templar) if it is a string, then validate it.

    Runs once, in the worker, per host, so a bad or undefined value fails that task on that host
    only; the templating is bounded by ``bounds.RESOLVE_LIMIT`` (a lookup may hang as well).
    """
    value = raw
    if isinstance(raw, str) and render is not None:
        try:
            with alarm.alarm(bounds.RESOLVE_LIMIT, _ResolveTimeout):
                value = render(raw)
        except _ResolveTimeout:
            raise limit.TaskTimeoutValueError(
                f"Invalid value for {keyword}: {raw!r} could not be resolved within {bounds.RESOLVE_LIMIT} s"
            ) from None
        except Exception as ex:  # undefined variables, syntax errors: all are "bad value"
            raise limit.TaskTimeoutValueError(
                f"Invalid value for {keyword}: {raw!r} could not be resolved: {ex}"
            ) from ex
    return limit.validate_limit(value, keyword)


def reap_after_timeout(connection: object | None = None) -> None:
    """Everything a timed-out task left running in this worker: kill and reap it, let go of masters.

    Order matters: kill the tree but its masters, reading the ControlPaths as it goes; then release
    each master (:func:`sshmux.release_control_master`: ended only if no other task uses it). All
    within ``bounds.REAP_BUDGET``. Never raises: the timeout result must still be sent.
    """
    end = time.monotonic() + bounds.REAP_BUDGET
    with contextlib.suppress(Exception):
        paths = sshmux.kill_tree_keeping_masters(deadline=end)
        if (path := sshmux.control_path_of_connection(connection)) is not None:
            paths.add(path)
        sshmux.release_masters(paths, deadline=end)


def guarded_cleanup(
    cleanup: Callable[[], object], connection: object | None, attempt_timeout: object = 0
) -> None:
    """Run an action's remote tmp cleanup without letting it hang the worker (W1).

    Called from the ``finally`` of the attempt loop. If a timeout is propagating, the host is
    presumed frozen: kill and reap what is left and skip the remote ``rm -rf`` (it would never
    return). If a limit is in force but none fired, bound the cleanup to ``bounds.CLEANUP_LIMIT``.
    With no limit at all, keep upstream's behaviour.
    """
    if alarm.is_alarm_exception(sys.exc_info()[1]):
        reap_after_timeout(connection)
        return
    if not (attempt_timeout or alarm.limit_in_force()):
        cleanup()
        return
    try:
        with alarm.alarm(bounds.CLEANUP_LIMIT, _CleanupTimeout):
            cleanup()
    except _CleanupTimeout:
        reap_after_timeout(connection)
