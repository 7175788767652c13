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
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence

import psutil

KEYWORD = "task_timeout"
MAX_TASK_TIMEOUT = 365 * 24 * 3600
"""Largest accepted limit (one year): anything larger is a typo, not a deadline."""

# --------------------------------------------------------------------------- bounds
# Every wait after a deadline, in one place and derived from each other. The worker's own path
# (alarm, unwind, kill and release, send) is budgeted to end inside WATCHDOG_GRACE; the watchdog
# in the controller gives the hard bound, RESULT_BOUND, whatever the worker does.

KILL_GRACE = 1.0
"""Seconds between SIGTERM and SIGKILL, and again to reap, when a worker kills its process tree."""

MASTER_EXIT_TIMEOUT = 1.0
"""Bound for ``ssh -O stop``: the master answers locally, but nothing here may wait forever."""

UNWIND_GRACE = 1.0
"""After a deadline fired, the alarm re-fires every this many seconds until the scope is left,
so no ``finally`` block (remote cleanup, connection close, an over-broad ``except``) can hang."""

REAP_BUDGET = 2.5
"""The worker's whole kill-and-release after a timeout (:func:`reap_after_timeout`): later steps
are skipped once it is spent, and what is left to the watchdog, the guardian and the run's end."""

SEND_MARGIN = 1.0
"""What the worker keeps for building and writing its timeout result."""

WATCHDOG_GRACE = UNWIND_GRACE + REAP_BUDGET + SEND_MARGIN
"""Seconds after ``task_timeout`` before the controller kills a worker that did not report: one
blocking ``finally`` interrupted, the budgeted reap and the send fit in it."""

RESULTS_POLL = 0.2
"""Longest the controller's results thread blocks before it re-checks deadlines and dead workers."""

WATCHDOG_KILL_WAIT = 1.0
"""How long the watchdog waits for a SIGKILLed worker tree before it records the result."""

RESULT_BOUND = WATCHDOG_GRACE + RESULTS_POLL + WATCHDOG_KILL_WAIT
"""The hard bound: a timed-out task's result is recorded at most this long after ``task_timeout``
(from the worker's start as the controller sees it), whatever the worker does. A worker that
cooperates, the usual case, reports within a few tenths of a second of the limit."""

CLEANUP_LIMIT = 10.0
"""Bound for the remote tmp cleanup of an attempt that did *not* time out, when a limit is in force."""

RESOLVE_LIMIT = 60
"""Bound for templating a ``task_timeout`` value in the worker (a lookup may hang as well)."""

assert UNWIND_GRACE + REAP_BUDGET < WATCHDOG_GRACE, "the worker's own timeout path must end first"
assert 2 * KILL_GRACE <= REAP_BUDGET, "one kill round (SIGTERM, wait, SIGKILL, wait) fits the budget"

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


class _ResolveTimeout(BaseException):
    """Raised when templating a ``task_timeout`` value outlives :data:`RESOLVE_LIMIT`."""


def warn(message: str) -> None:
    """One warning line: through ansible's Display where ansible is loaded, else on stderr."""
    display = sys.modules.get("ansible.utils.display")
    if display is not None:
        with contextlib.suppress(Exception):
            display.Display().warning(message)
            return
    print(f"[WARNING]: {message}", file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class LimitNotice:
    """Sent by a worker to the controller: the limit it resolved from a templated ``task_timeout``."""

    limit: int


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

    Runs once, in the worker, per host, so a bad or undefined value fails that task on that host
    only; the templating is bounded by :data:`RESOLVE_LIMIT` (a lookup may hang as well).
    """
    value = raw
    if isinstance(raw, str) and render is not None:
        try:
            with alarm(RESOLVE_LIMIT, _ResolveTimeout):
                value = render(raw)
        except _ResolveTimeout:
            raise TaskTimeoutValueError(
                f"Invalid value for {keyword}: {raw!r} could not be resolved within {RESOLVE_LIMIT} s"
            ) from None
        except Exception as ex:  # undefined variables, syntax errors: all are "bad value"
            raise TaskTimeoutValueError(
                f"Invalid value for {keyword}: {raw!r} could not be resolved: {ex}"
            ) from ex
    return validate_limit(value, keyword)


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
    pending: bool = False
    last_fired: BaseException | None = None


_state = _AlarmState()
_sections = threading.local()
"""Per thread: how deep this thread is in sections that keep SIGALRM out (:func:`critical_section`)."""

DEFERRED_REFIRE = 0.05
"""A deferred alarm also re-arms the timer this soon, so it is not lost if its section is left by
an exception before the alarm could be raised at its end."""


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
    scope.deadline = now + UNWIND_GRACE
    exc = scope.make_exc()
    _state.last_fired = exc
    _rearm()
    raise exc


def _on_alarm(_signum: int, _frame: types.FrameType | None) -> None:
    """SIGALRM handler (main thread): raise now, or at the end of the main thread's section."""
    if _depth():
        _state.pending = True
        signal.setitimer(signal.ITIMER_REAL, DEFERRED_REFIRE)
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
    """Keep SIGALRM out of a write that must not be torn, such as a FinalQueue frame.

    An alarm that comes meanwhile is raised here, after the write completed (in the main thread;
    a section of another thread does not defer it, see :func:`_sigalrm_deferred`).
    """
    with _sigalrm_deferred():
        yield


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
    root: int | None = None,
    include_root: bool = False,
    grace: float = KILL_GRACE,
    spare: Iterable[int] = (),
    deadline: float | None = None,
) -> list[int]:
    """Kill every descendant of `root` (default: this process): SIGTERM, wait, SIGKILL; then reap.

    Recursive because local modules run as ``sh -> python -> cmd``. Repeats while new descendants
    appear (a shell may fork between listing and killing), but starts no round after `deadline`
    (monotonic) and shortens the grace to fit it. The processes in `spare` and their own
    descendants are left alone (an ssh master that other tasks' sessions go through, with its
    ProxyCommand). Returns the pids that were signalled.
    """
    try:
        top = psutil.Process(os.getpid() if root is None else root)
    except psutil.NoSuchProcess:
        return []
    spared = set(spare)
    for pid in list(spared):
        with contextlib.suppress(psutil.Error):
            spared.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    signalled: list[int] = []
    for _round in range(5):
        try:
            procs = top.children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        if include_root and _round == 0:
            procs.append(top)
        procs = [p for p in procs if p.pid not in spared and _alive(p)]
        if not procs:
            break
        round_grace = grace
        if deadline is not None:
            if _round and time.monotonic() >= deadline:
                break
            round_grace = min(grace, max(deadline - time.monotonic(), 0.0) / 2)
        end_processes(procs, round_grace)
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


def ssh_in_tree(root: int | None = None) -> tuple[set[str], dict[int, str]]:
    """ControlPaths named by the ssh clients below `root`, and the masters there (pid -> path).

    Read *before* anything is killed: a worker is a subreaper, so a master it started (daemonised
    by OpenSSH) is its child until it exits, and the masters outlive their clients.
    """
    paths: set[str] = set()
    masters: dict[int, str] = {}
    try:
        procs = psutil.Process(os.getpid() if root is None else root).children(recursive=True)
    except psutil.NoSuchProcess:
        return paths, masters
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            cmdline = proc.cmdline()
            if (path := mux_master_path(cmdline)) is not None:
                masters[proc.pid] = path
            paths |= control_paths_from_cmdline(cmdline)
    return paths | set(masters.values()), masters


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


def mux_master_path(cmdline: Sequence[str]) -> str | None:
    """The socket of an ssh ControlPersist master from its proctitle ``ssh: <path> [mux]``.

    OpenSSH's setproctitle() writes the title over argv and pads the rest of the argv+environ area
    with NULs, so psutil shows ``["ssh: <path> [mux]", "", "", ...]``: look at the first word.
    """
    if not cmdline:
        return None
    text = cmdline[0].strip()
    if text.startswith("ssh: ") and text.endswith(" [mux]"):
        return text[len("ssh: ") : -len(" [mux]")].strip() or None
    return None


def is_mux_master(cmdline: Sequence[str]) -> bool:
    """An ssh ControlPersist master: ``ssh: <path> [mux]``, or ``ssh: [stopped mux]`` after ``-O stop``."""
    return bool(cmdline) and cmdline[0].startswith("ssh: ") and cmdline[0].rstrip().endswith("mux]")


def _masters_of(control_path: str) -> list[psutil.Process]:
    """The live ControlPersist masters listening on `control_path`."""
    return [
        proc
        for proc in psutil.process_iter(["cmdline"])
        if mux_master_path(proc.info.get("cmdline") or []) == control_path and _alive(proc)
    ]


def control_path_clients(control_path: str, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Live ssh clients (not masters) whose command line names `control_path`: another task's session."""
    skip = {os.getpid(), *exclude}
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.pid in skip or proc.info.get("status") == psutil.STATUS_ZOMBIE or is_mux_master(cmdline):
            continue
        if control_path in control_paths_from_cmdline(cmdline):
            found.append(proc)
    return found


def _ssh_control(command: str, control_path: str, timeout: float) -> None:
    """``ssh -O <command>`` to the master of `control_path`: answered locally, bounded all the same."""
    ssh = shutil.which("ssh")
    if ssh is None or not os.path.exists(control_path):
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [ssh, "-O", command, "-o", f"ControlPath={control_path}", "ansible-task-timeout"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )


def release_control_master(
    control_path: str,
    timeout: float = MASTER_EXIT_TIMEOUT,
    wait: Callable[[Sequence[psutil.Process], float], None] | None = None,
) -> list[int]:
    """Let go of the ControlPersist master of `control_path` after a timeout; return the pids ended.

    ansible's ControlPath hashes only host, port and user, so one master can carry the sessions of
    several live tasks (hosts that ``delegate_to`` one bastion, two inventory names for one
    machine). So the master is first told to accept no new session (``ssh -O stop``: the next task
    opens a fresh master, and one stuck on a frozen host takes nobody new with it), and is ended
    only if no other process's command line still names its ControlPath. Otherwise it serves the
    live sessions to their end and then exits by itself (or at the end of the run). Stop first,
    look second: a client that attaches after the look cannot exist, since the socket is gone.
    The caller has killed its own clients already. `wait` as in :func:`end_processes`.
    """
    masters = _masters_of(control_path)  # found by path now: ``-O stop`` retitles it "[stopped mux]"
    _ssh_control("stop", control_path, timeout)
    if control_path_clients(control_path, exclude=[m.pid for m in masters]):
        return []
    end_processes(masters, timeout, wait=wait or _wait_dead)
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        os.unlink(control_path)
    return [proc.pid for proc in masters]


# --------------------------------------------------------------------------- hooks for the patches


def reap_after_timeout(connection: object | None = None) -> None:
    """Everything a timed-out task left running in this worker: kill and reap it, let go of masters.

    Order matters: read the ControlPaths and masters of the tree, kill the tree but its masters,
    then release each master (:func:`release_control_master`: ended only if no other task uses
    it). All within :data:`REAP_BUDGET`. Never raises: the timeout result must still be sent.
    """
    end = time.monotonic() + REAP_BUDGET
    with contextlib.suppress(Exception):
        paths, masters = ssh_in_tree()
        if (path := control_path_of_connection(connection)) is not None:
            paths.add(path)
        kill_process_tree(spare=masters, deadline=end)
        for path in sorted(paths):
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            release_control_master(path, timeout=min(MASTER_EXIT_TIMEOUT, remaining / 3))


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
