"""The worker's SIGALRM: the whole-task deadline, upstream's per-attempt timeout, and the sections
that keep it out.

Why SIGALRM: a task runs in the worker's main thread and spends its time blocked in syscalls
(select/read on the ssh pipes, waitpid, sleep). A signal handler is the only in-process mechanism
that interrupts those calls and raises *in the task's own stack*, so ``finally`` blocks unwind it
and the worker can still build and send a normal result. A watchdog thread cannot raise in the
main thread; a kill from the controller loses the result the worker could still have sent (W8;
the controller's watchdog does it only as the last resort, see :mod:`ansible_task_timeout.channels`).

Where SIGALRM cannot reach: other threads; code holding the GIL in a long C loop (Python runs the
handler only between bytecodes); sections where we block it on purpose (queue writes, see
:func:`critical_section`); and anything outside the worker process: the strategy/controller side
(meta tasks such as ``reset_connection``, include expansion), and processes on the managed host
(an ``async`` job keeps running there).

Order of operations on expiry (W1-W3): the alarm raises
:class:`~ansible_task_timeout.limit.TaskDeadlineExceeded`; every ``finally`` on the way up gets
``bounds.UNWIND_GRACE`` seconds before the alarm raises again; remote tmp cleanup is skipped
(:func:`ansible_task_timeout.worker.guarded_cleanup`); then
:func:`ansible_task_timeout.worker.reap_after_timeout` kills and reaps the worker's process tree and
lets go of the host's ControlPersist master; only then is the result built and sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
import types
from collections.abc import Callable, Iterator

from ansible_task_timeout import bounds, limit, proctree


@dataclasses.dataclass
class _Scope:
    deadline: float
    make_exc: Callable[[], BaseException]
    fired: bool = False


@dataclasses.dataclass
class _AlarmState:
    scopes: list[_Scope] = dataclasses.field(default_factory=list)
    previous_handler: object = None
    pending: bool = False
    last_fired: BaseException | None = None


_state = _AlarmState()
_sections = threading.local()
"""Per thread: how deep this thread is in sections that keep SIGALRM out (:func:`critical_section`)."""


def _depth() -> int:
    return getattr(_sections, "depth", 0)


@contextlib.contextmanager
def _sigalrm_deferred() -> Iterator[None]:
    """Keep SIGALRM out of a few statements of this thread; an alarm meanwhile is raised at the end.

    The depth goes up *before* the mask changes: CPython's pthread_sigmask() runs a Python handler
    that is already pending inside the call, and that handler must see the section and only note
    the alarm (raising there, on entry, would leave SIGALRM blocked for the rest of the worker).
    The depth is per thread: Python runs handlers in the main thread, and a section in another
    thread (a display call from a helper thread) must not defer the main thread's deadline.
    """
    _sections.depth = _depth() + 1
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending alarm is noted in here
    finally:
        _sections.depth -= 1
        if not _sections.depth and _state.pending and threading.current_thread() is threading.main_thread():
            _state.pending = False
            if _state.scopes:
                _fire()


def _rearm() -> None:
    """Point ITIMER_REAL at the earliest deadline of the open scopes (or stop it)."""
    if not _state.scopes:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return
    remaining = min(scope.deadline for scope in _state.scopes) - time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, max(remaining, 0.001))


def _fire() -> None:
    """Raise the exception of the outermost scope that is due; re-arm so unwinding stays bounded."""
    now = time.monotonic()
    # a scope that fired stays due: once the whole-task deadline passed, every later alarm (an inner
    # per-attempt or connection timeout among them) raises the deadline again, never its own
    due = [scope for scope in _state.scopes if scope.fired or scope.deadline <= now + 0.0005]
    if not due:  # early or stale signal: just re-arm
        _rearm()
        return
    scope = due[0]  # outermost first: the whole-task deadline beats a per-attempt timeout
    scope.fired = True
    scope.deadline = now + bounds.UNWIND_GRACE
    exc = scope.make_exc()
    _state.last_fired = exc
    _rearm()
    raise exc


def _on_alarm(_signum: int, _frame: types.FrameType | None) -> None:
    """SIGALRM handler (main thread): raise now, or at the end of the main thread's section."""
    if _depth():
        _state.pending = True
        signal.setitimer(signal.ITIMER_REAL, bounds.DEFERRED_REFIRE)
        return
    _fire()


def _refuse_foreign_alarm() -> None:
    """Keep upstream's rule that an alarm never silently replaces someone else's (its messages too).

    Our own scopes nest (the whole-task deadline around a per-attempt timeout); a SIGALRM handler
    or an armed timer of anybody else's makes the outermost scope refuse to start.
    """
    handler = signal.getsignal(signal.SIGALRM)
    if handler not in (signal.SIG_DFL, None):
        raise RuntimeError("An existing alarm handler was present.")
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        raise RuntimeError("An existing alarm was set.")


@contextlib.contextmanager
def alarm(seconds: float, make_exc: Callable[[], BaseException]) -> Iterator[None]:
    """Raise ``make_exc()`` in this (main) thread if the body outlives `seconds` (<= 0: no limit).

    Unlike upstream's alarm_timeout this nests (task deadline around per-attempt timeout share one
    ITIMER_REAL) and uses setitimer for sub-second remainders; like it, it refuses a foreign alarm
    and leaves SIG_DFL behind. Disarming happens with SIGALRM kept out, and a signal still pending
    then is discarded, so it can neither hit SIG_DFL (which would kill the worker) nor fire after
    the body completed.
    """
    if seconds <= 0:
        yield
        return
    scope: _Scope | None = None
    try:
        with _sigalrm_deferred():  # an alarm due on entry is raised at its end: after the finally below
            if not _state.scopes:
                _refuse_foreign_alarm()
                _state.previous_handler = signal.signal(signal.SIGALRM, _on_alarm)
            scope = _Scope(deadline=time.monotonic() + seconds, make_exc=make_exc)
            _state.scopes.append(scope)
            _rearm()
        yield
    finally:
        if scope is not None:  # None: refused on entry, nothing to undo
            with _sigalrm_deferred():
                _state.scopes.remove(scope)
                if not _state.scopes:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    if signal.SIGALRM in signal.sigpending():
                        signal.sigtimedwait([signal.SIGALRM], 0)  # consume it while still blocked
                    previous = _state.previous_handler
                    signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)  # type: ignore[arg-type]
                    _state.previous_handler = None
                    _state.pending = False
                else:
                    _rearm()


@contextlib.contextmanager
def attempt_alarm(seconds: int, make_exc: Callable[[], BaseException]) -> Iterator[None]:
    """Upstream's per-attempt ``timeout`` on the shared, nestable alarm (hardening, not new semantics).

    Also makes the worker a subreaper, so what the attempt leaves behind can be killed on expiry.
    """
    if seconds > 0:
        proctree.become_subreaper()
    with alarm(seconds, make_exc):
        yield


@contextlib.contextmanager
def task_deadline(seconds: int, started: float | None = None) -> Iterator[None]:
    """Whole-task deadline: `seconds` from `started` (monotonic; default now); 0 = off.

    Also makes this process a child subreaper, so descendants orphaned during the task (the
    daemonised ssh ControlPersist master, ``cmd &``) stay in its tree and can be killed and reaped.
    """
    if not seconds:
        yield
        return
    proctree.become_subreaper()
    begin = time.monotonic() if started is None else started
    remaining = max(begin + seconds - time.monotonic(), 0.001)
    with alarm(remaining, lambda: limit.TaskDeadlineExceeded(seconds)):
        yield


@contextlib.contextmanager
def critical_section() -> Iterator[None]:
    """Keep SIGALRM out of a write that must not be torn, such as a FinalQueue frame.

    An alarm that comes meanwhile is raised here, after the write completed (in the main thread;
    a section of another thread does not defer it, see :func:`_sigalrm_deferred`).
    """
    with _sigalrm_deferred():
        yield


def limit_in_force() -> bool:
    """True while any alarm scope (task deadline or per-attempt timeout) is open."""
    return bool(_state.scopes)


def is_alarm_exception(exc: BaseException | None) -> bool:
    """True if `exc` is what one of our alarms raised (the deadline, or upstream's TaskTimeoutError)."""
    return exc is not None and (isinstance(exc, limit.TaskDeadlineExceeded) or exc is _state.last_fired)
