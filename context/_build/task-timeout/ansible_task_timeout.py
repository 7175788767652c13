"""Whole-task deadline (`task_timeout`) and frozen-host hardening for ansible-core workers.

The patched ansible-core (see ``patches/``) only calls small hooks; every decision lives here so it
can be read, typed and unit-tested without ansible (stdlib + psutil only).

Why SIGALRM: a task runs in the worker's main thread and spends its time blocked in syscalls
(select/read on the ssh pipes, waitpid, sleep). A signal handler is the only in-process mechanism
that interrupts those calls and raises *in the task's own stack*, so ``finally`` blocks unwind it
and the worker can still build and send a normal result (the strategy never sees a dead worker).
A watchdog thread cannot raise in the main thread; a parent-side kill aborts the whole run (W8).

Where SIGALRM cannot reach: other threads; code holding the GIL in a long C loop (Python runs the
handler only between bytecodes); sections where we block it on purpose (queue writes, see
:func:`critical_section`); and anything outside the worker process: the strategy/controller side
(meta tasks such as ``reset_connection``, include expansion), and processes on the managed host
(an ``async`` job keeps running there).

Order of operations on expiry (upstream-timeout notes, W1-W3): the alarm raises
:class:`TaskDeadlineExceeded`; every ``finally`` on the way up gets :data:`UNWIND_GRACE` seconds
before the alarm raises again; remote tmp cleanup is skipped (:func:`guarded_cleanup`); then
:func:`reap_after_timeout` kills and reaps the worker's process tree and closes the host's
ControlPersist master; only then is the result built and sent.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence

import psutil

KEYWORD = "task_timeout"
MAX_TASK_TIMEOUT = 365 * 24 * 3600
"""Largest accepted limit (one year): anything larger is a typo, not a deadline."""

KILL_GRACE = 3.0
"""Seconds between SIGTERM and SIGKILL, and again to reap, when killing a process tree."""

MASTER_EXIT_TIMEOUT = 3.0
"""Bound for ``ssh -O exit``: the master answers locally, but nothing here may wait forever."""

CLEANUP_LIMIT = 10.0
"""Bound for the remote tmp cleanup of an attempt that did *not* time out, when a limit is in force."""

UNWIND_GRACE = 5.0
"""After a deadline fired, the alarm re-fires every this many seconds until the scope is left,
so no ``finally`` block (remote cleanup, connection close, an over-broad ``except``) can hang."""

_CONTROL_PATH_RE = re.compile(r"ControlPath=(?:\"([^\"]+)\"|'([^']+)'|(\S+))")
_PR_SET_CHILD_SUBREAPER = 36


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


class _CleanupTimeout(BaseException):
    """Raised when a bounded remote cleanup outlives :data:`CLEANUP_LIMIT`."""


# --------------------------------------------------------------------------- values and results


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


def resolve_limit(
    raw: object, render: Callable[[object], object] | None = None, keyword: str = KEYWORD
) -> int:
    """Template `raw` with `render` (the task's templar) if it is a string, then validate it.

    Runs in the worker, per host, so a bad or undefined value fails that task on that host only.
    """
    value = raw
    if isinstance(raw, str) and render is not None:
        try:
            value = render(raw)
        except Exception as ex:  # undefined variables, syntax errors: all are "bad value"
            raise TaskTimeoutValueError(
                f"Invalid value for {keyword}: {raw!r} could not be resolved: {ex}"
            ) from ex
    return validate_limit(value, keyword)


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


# --------------------------------------------------------------------------- the alarm


@dataclasses.dataclass
class _Scope:
    deadline: float
    make_exc: Callable[[], BaseException]
    fired: bool = False


@dataclasses.dataclass
class _AlarmState:
    scopes: list[_Scope] = dataclasses.field(default_factory=list)
    previous_handler: object = None
    critical_depth: int = 0
    pending: bool = False
    last_fired: BaseException | None = None


_state = _AlarmState()


@contextlib.contextmanager
def _sigalrm_blocked() -> Iterator[None]:
    """Block SIGALRM at the OS level for a few statements (state changes, queue writes)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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
    due = [scope for scope in _state.scopes if scope.deadline <= now + 0.0005]
    if not due:  # early or stale signal: just re-arm
        _rearm()
        return
    scope = due[0]  # outermost first: the whole-task deadline beats a per-attempt timeout
    scope.fired = True
    scope.deadline = now + UNWIND_GRACE
    exc = scope.make_exc()
    _state.last_fired = exc
    _rearm()
    raise exc


def _on_alarm(_signum: int, _frame: types.FrameType | None) -> None:
    """SIGALRM handler: raise now, or after the current critical section (W9)."""
    if _state.critical_depth:
        _state.pending = True
        return
    _fire()


@contextlib.contextmanager
def alarm(seconds: float, make_exc: Callable[[], BaseException]) -> Iterator[None]:
    """Raise ``make_exc()`` in this (main) thread if the body outlives `seconds` (<= 0: no limit).

    Unlike upstream's alarm_timeout this nests (task deadline around per-attempt timeout share one
    ITIMER_REAL), restores the previous handler instead of SIG_DFL, and uses setitimer for
    sub-second remainders. Disarming happens with SIGALRM blocked, and a signal still pending then
    is discarded, so it can neither hit SIG_DFL (which would kill the worker) nor fire after the
    body completed (W10).
    """
    if seconds <= 0:
        yield
        return
    with _sigalrm_blocked():
        if not _state.scopes:
            _state.previous_handler = signal.signal(signal.SIGALRM, _on_alarm)
        scope = _Scope(deadline=time.monotonic() + seconds, make_exc=make_exc)
        _state.scopes.append(scope)
        _rearm()
    try:
        yield
    finally:
        with _sigalrm_blocked():
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
        become_subreaper()
    with alarm(seconds, make_exc):
        yield


def limit_in_force() -> bool:
    """True while any alarm scope (task deadline or per-attempt timeout) is open."""
    return bool(_state.scopes)


def is_alarm_exception(exc: BaseException | None) -> bool:
    """True if `exc` is what one of our alarms raised (the deadline, or upstream's TaskTimeoutError)."""
    return exc is not None and (isinstance(exc, TaskDeadlineExceeded) or exc is _state.last_fired)


@contextlib.contextmanager
def critical_section() -> Iterator[None]:
    """Keep SIGALRM out of a write that must not be torn, such as a FinalQueue frame (W9).

    The signal is blocked at OS level; a Python-level handler that is already pending only notes
    the alarm, and the exception is raised here, after the write completed.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    _state.critical_depth += 1
    try:
        yield
    finally:
        _state.critical_depth -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if not _state.critical_depth and _state.pending:
            _state.pending = False
            if _state.scopes:
                _fire()


@contextlib.contextmanager
def task_deadline(limit: int, started: float | None = None) -> Iterator[None]:
    """Whole-task deadline: `limit` seconds from `started` (monotonic; default now); 0 = off.

    Also makes this process a child subreaper, so descendants orphaned during the task (the
    daemonised ssh ControlPersist master, ``cmd &``) stay in its tree and can be killed and reaped.
    """
    if not limit:
        yield
        return
    become_subreaper()
    begin = time.monotonic() if started is None else started
    remaining = max(begin + limit - time.monotonic(), 0.001)
    with alarm(remaining, lambda: TaskDeadlineExceeded(limit)):
        yield


# --------------------------------------------------------------------------- processes


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux prctl); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _reap_zombie_children() -> None:
    """waitpid() every exited child of this process, so nothing stays <defunct>."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_process_tree(
    root: int | None = None, include_root: bool = False, grace: float = KILL_GRACE
) -> list[int]:
    """Kill every descendant of `root` (default: this process): SIGTERM, wait, SIGKILL; then reap.

    Recursive because local modules run as ``sh -> python -> cmd``. Repeats while new descendants
    appear (a shell may fork between listing and killing). Returns the pids that were signalled.
    """
    try:
        top = psutil.Process(os.getpid() if root is None else root)
    except psutil.NoSuchProcess:
        return []
    signalled: list[int] = []
    for _round in range(5):
        try:
            procs = top.children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        if include_root and _round == 0:
            procs.append(top)
        procs = [p for p in procs if _alive(p)]
        if not procs:
            break
        end_processes(procs, grace)
        signalled.extend(proc.pid for proc in procs)
    _reap_zombie_children()
    return signalled


def _wait_dead(procs: Sequence[psutil.Process], timeout: float) -> None:
    """Reap our children among `procs` and wait (bounded) until none of them is alive."""
    end = time.monotonic() + timeout
    pending = list(procs)
    while pending and time.monotonic() < end:
        _reap_zombie_children()
        pending = [p for p in pending if _alive(p)]
        if pending:
            time.sleep(0.02)


def end_processes(
    procs: Sequence[psutil.Process],
    grace: float,
    wait: Callable[[Sequence[psutil.Process], float], None] = _wait_dead,
) -> None:
    """SIGTERM `procs`, wait up to `grace`, SIGKILL what is left, wait again: the one way to end them.

    SIGCONT goes with the SIGTERM because a SIGSTOPped process acts on it only once continued.
    `wait` must reap what it may reap: the default reaps any child of ours (fine in a worker); the
    controller passes one that waits only for the given processes, so no multiprocessing or
    subprocess object loses its exit status.
    """
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            proc.resume()
    wait(procs, grace)
    for proc in procs:
        if _alive(proc):
            with contextlib.suppress(psutil.Error):
                proc.kill()
    wait(procs, grace)


# --------------------------------------------------------------------------- ssh ControlPersist


def control_paths_from_cmdline(cmdline: Iterable[str]) -> set[str]:
    """The ``-o ControlPath=...`` values of one ssh/sshpass command line."""
    found: set[str] = set()
    for arg in cmdline:
        for match in _CONTROL_PATH_RE.finditer(arg):
            found.add(next(group for group in match.groups() if group))
    return found


def control_paths_in_tree(root: int | None = None) -> set[str]:
    """ControlPaths used by ssh clients below `root`; read *before* they are killed."""
    found: set[str] = set()
    try:
        procs = psutil.Process(os.getpid() if root is None else root).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            found |= control_paths_from_cmdline(proc.cmdline())
    return found


def control_path_of_connection(connection: object) -> str | None:
    """The expanded ControlPath of an ansible ssh connection plugin object, if it has one.

    The ssh plugin stores ``control_path`` with a ``%(directory)s`` placeholder and expands it
    with ``control_path_dir`` only when building the command line; do the same here.
    """
    path = getattr(connection, "control_path", None)
    if not isinstance(path, str) or not path:
        return None
    if "%(directory)s" in path:
        directory = getattr(connection, "control_path_dir", None) or "~/.ansible/cp"
        directory = os.path.realpath(os.path.expandvars(os.path.expanduser(str(directory))))
        path = path % {"directory": directory}
    return path


def close_control_master(control_path: str, timeout: float = MASTER_EXIT_TIMEOUT) -> list[int]:
    """Close the ControlPersist master of `control_path` and remove its socket; return killed pids.

    The master is daemonised by OpenSSH (ppid 1, own session), so it is not found by walking our
    tree unless we were its subreaper; it is found by its proctitle ``ssh: <path> [mux]``. First a
    polite, bounded ``ssh -O exit``, then SIGTERM/SIGKILL of whatever still names the path.
    """
    ssh = shutil.which("ssh")
    if ssh and os.path.exists(control_path):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [ssh, "-O", "exit", "-o", f"ControlPath={control_path}", "ansible-task-timeout"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
    me = os.getpid()
    masters: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.pid != me and any(control_path in arg for arg in cmdline):
            masters.append(proc)
    end_processes(masters, timeout)
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        os.unlink(control_path)
    return [proc.pid for proc in masters]


# --------------------------------------------------------------------------- hooks for the patches


def reap_after_timeout(connection: object | None = None) -> None:
    """Everything left running by a timed-out task in this worker: kill, reap, close the master.

    Order matters: collect ControlPaths from the live ssh clients, kill the tree, then close the
    masters (they outlive their clients). Never raises: the timeout result must still be sent.
    """
    with contextlib.suppress(Exception):
        paths = control_paths_in_tree()
        if (path := control_path_of_connection(connection)) is not None:
            paths.add(path)
        kill_process_tree()
        for path in sorted(paths):
            close_control_master(path)


def guarded_cleanup(
    cleanup: Callable[[], object], connection: object | None, attempt_timeout: object = 0
) -> None:
    """Run an action's remote tmp cleanup without letting it hang the worker (W1).

    Called from the ``finally`` of the attempt loop. If a timeout is propagating, the host is
    presumed frozen: kill and reap what is left and skip the remote ``rm -rf`` (it would never
    return). If a limit is in force but none fired, bound the cleanup to CLEANUP_LIMIT. With no
    limit at all, keep upstream's behaviour.
    """
    if is_alarm_exception(sys.exc_info()[1]):
        reap_after_timeout(connection)
        return
    if not (attempt_timeout or limit_in_force()):
        cleanup()
        return
    try:
        with alarm(CLEANUP_LIMIT, _CleanupTimeout):
            cleanup()
    except _CleanupTimeout:
        reap_after_timeout(connection)
