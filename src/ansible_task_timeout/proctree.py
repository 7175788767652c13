"""Process trees on Linux: keep them whole, walk them, end them.

One walk (:func:`descendants`, from /proc) and one way to end a tree (:func:`kill_tree`, built on
:func:`end_processes`) serve the worker after its timeout, the controller's watchdog and the run
guard's sweep. They differ only in what they pass: how long SIGTERM gets, what is spared, and how
the ended processes are waited for (:data:`Wait`): a worker may reap any child of its own, while the
controller must reap only what it waits for, or a multiprocessing or subprocess object would lose
its exit status.

A tree stays whole only if its orphans stay in it: :func:`become_subreaper` makes them re-parent to
the process that asked, not to PID 1 (the daemonised ssh ControlPersist master, ``cmd &``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

import psutil

from ansible_task_timeout import bounds

Wait = Callable[[Sequence[psutil.Process], float], None]
"""``wait(procs, timeout)``: wait (bounded) until none of `procs` is alive, reaping what it may."""

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

# --------------------------------------------------------------------------- /proc, cheaply


@dataclasses.dataclass(frozen=True)
class Stat:
    """The fields of /proc/<pid>/stat that the guard uses."""

    state: str
    ppid: int
    session: int
    starttime: int  # clock ticks after boot (CLOCK_BOOTTIME): exact, unlike psutil's float
    comm: bytes


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Clock ticks per second, the unit of :attr:`Stat.starttime`."""

_proc_children_ok: bool | None = None


def stat(pid: int) -> Stat | None:
    """/proc/<pid>/stat, parsed (one read); None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        rpar = data.rindex(b")")  # comm may hold spaces and parentheses: it ends at the last ")"
        fields = data[rpar + 2 :].split()
        comm = data[data.index(b"(") + 1 : rpar]
        return Stat(fields[0].decode(), int(fields[1]), int(fields[3]), int(fields[19]), comm)
    except (OSError, ValueError, IndexError):
        return None


def now_ticks() -> int:
    """Now, in the clock and unit of /proc/<pid>/stat's starttime (rounded down, as the kernel does)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) * CLK_TCK // 1_000_000_000


def cmdline(pid: int) -> list[str] | None:
    """The command line of `pid`; None if it is gone or cannot be read."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).cmdline()
    return None


def children(pid: int) -> list[int]:
    """Direct children of `pid` from /proc/<pid>/task/*/children (no scan of the process table)."""
    global _proc_children_ok
    if _proc_children_ok is None:
        me = os.getpid()
        _proc_children_ok = os.path.exists(f"/proc/{me}/task/{me}/children")
    if not _proc_children_ok:  # kernel without CONFIG_PROC_CHILDREN: psutil scans /proc
        try:
            return [child.pid for child in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
            found.extend(int(word) for word in f.read().split())
    return found


def descendants(pid: int, prune: Callable[[int], bool] | None = None) -> list[int]:
    """Every descendant of `pid` (children, grandchildren, ...), parents before their children.

    A descendant that `prune` accepts is left out, and so is everything below it: the walk goes down
    the tree, so a subtree to be spared (an ssh master with its ProxyCommand) is never listed, even
    where it grew since the last walk.
    """
    found: list[int] = []
    seen = {pid}
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child in seen:
                continue
            seen.add(child)
            if prune is not None and prune(child):
                continue
            found.append(child)
            todo.append(child)
    return found


# --------------------------------------------------------------------------- ending processes


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie: a zombie is dead, whoever still has to reap it."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def reap_children() -> None:
    """waitpid() every exited child of this process, so nothing stays <defunct>."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_reaping(procs: Sequence[psutil.Process], timeout: float) -> None:
    """The worker's :data:`Wait`: reap every exited child of ours, until none of `procs` is alive.

    Reaps at least once, even with nothing to wait for. Right in a worker, whose children are all
    its own; never in the controller.
    """
    end = time.monotonic() + timeout
    pending = list(procs)
    while True:
        reap_children()
        pending = [p for p in pending if alive(p)]
        if not pending or time.monotonic() >= end:
            return
        time.sleep(0.02)


def wait_for(procs: Sequence[psutil.Process], timeout: float) -> None:
    """The controller's :data:`Wait`: wait for exactly these processes, reaping only those of them
    that are our children, so no multiprocessing or subprocess object loses its exit status.

    A zombie counts as dead: one whose parent is frozen or busy (a worker being killed) would
    otherwise hold the wait to its end.
    """
    end = time.monotonic() + timeout
    pending = list(procs)
    while True:
        pending = psutil.wait_procs(pending, timeout=0)[1]  # reaps those that are our children
        dead = [p for p in pending if not alive(p)]
        if dead:
            psutil.wait_procs(dead, timeout=0)  # ours that died since: reaped as well
            pending = [p for p in pending if p not in dead]
        if not pending or time.monotonic() >= end:
            return
        time.sleep(0.02)


def end_processes(
    procs: Sequence[psutil.Process],
    grace: float,
    wait: Wait = wait_reaping,
    kill_wait: float | None = None,
) -> None:
    """SIGTERM `procs`, wait up to `grace`, SIGKILL what is left, wait up to `kill_wait` (default `grace`).

    SIGCONT goes with the SIGTERM because a SIGSTOPped process acts on it only once continued. A
    `grace` of 0 sends SIGKILL at once: for processes that already had their chance.
    """
    if grace > 0:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
                proc.resume()
        wait(procs, grace)
    for proc in procs:
        if alive(proc):
            with contextlib.suppress(psutil.Error):
                proc.kill()
    wait(procs, grace if kill_wait is None else kill_wait)


def kill_tree(
    root: int | None = None,
    *,
    include_root: bool = False,
    grace: float = bounds.KILL_GRACE,
    kill_wait: float | None = None,
    spare: Callable[[int], bool] | None = None,
    deadline: float | None = None,
    wait: Wait = wait_reaping,
) -> list[int]:
    """End every descendant of `root` (default: this process), and `root` itself if `include_root`.

    Each round walks the tree afresh and ends what it finds (:func:`end_processes` with `grace` and
    `kill_wait`); rounds repeat while new descendants appear (a shell may fork between the walk and
    the signal), at most five, and none starts after `deadline` (monotonic), to which the waits are
    shortened. A descendant that `spare` accepts (asked once per pid) is left alone with its own
    descendants: an ssh master that other tasks' sessions go through, with its ProxyCommand.

    A root that is to die too is frozen first (SIGSTOP): stopped, it can neither fork nor exit, and
    its exit would orphan the rest of its tree out of reach. It is SIGKILLed last, and not waited
    for: its parent reaps it. Returns the pids that were signalled.
    """
    root_pid = os.getpid() if root is None else root
    try:
        top = psutil.Process(root_pid)
        if include_root:
            top.suspend()
    except psutil.Error:
        return []
    decided: dict[int, bool] = {}

    def spared(pid: int) -> bool:
        if pid not in decided:
            decided[pid] = spare is not None and spare(pid)
        return decided[pid]

    signalled: list[int] = []
    for round_ in range(5):
        procs: list[psutil.Process] = []
        for pid in descendants(root_pid, spared):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if alive(proc):
                    procs.append(proc)
        if not procs:
            break
        round_grace, round_kill_wait = grace, kill_wait
        if deadline is not None:
            left = deadline - time.monotonic()
            if round_ and left <= 0:
                break
            round_grace = min(grace, max(left, 0.0) / 2)
            if kill_wait is not None:
                round_kill_wait = min(kill_wait, max(left - round_grace, 0.0))
        end_processes(procs, round_grace, wait, round_kill_wait)
        signalled.extend(proc.pid for proc in procs)
    if include_root:
        with contextlib.suppress(psutil.Error):
            top.kill()
            signalled.append(root_pid)
    wait([], 0)  # what exited meanwhile: reaped, if this wait reaps at all
    return signalled


def kill_group(pgid: int) -> None:
    """SIGKILL process group `pgid` (a worker is its group's leader), ignoring a group that is gone."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------- keeping trees whole


def _prctl(option: int, value: int) -> bool:
    """prctl(2) on Linux; False where it is not there or refuses."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process, not to PID 1; False where unsupported.

    So what a task orphans (the daemonised ssh ControlPersist master, ``cmd &``) stays in the tree
    of the process that ends the task, and can be killed and reaped.
    """
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_parent_death_signal(signum: int, expected_parent: int) -> None:
    """PR_SET_PDEATHSIG: get `signum` when the parent (`expected_parent`) dies.

    If the parent died before the call took effect, the signal is sent at once.
    """
    if not sys.platform.startswith("linux"):
        return
    _prctl(_PR_SET_PDEATHSIG, int(signum))
    if os.getppid() != expected_parent:
        os.kill(os.getpid(), signum)
