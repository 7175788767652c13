"""The run guard: nothing of a run outlives its controller, however the controller ends.

A unique run id is put in the controller's environment (inherited by every exec'd descendant: ssh
clients, module processes) and a small guardian process (:mod:`ansible_task_timeout.guardian`) is
started in its own session, holding the read end of a pipe whose write end only the controller
holds. Forked workers do not show the id in /proc/<pid>/environ (that is the exec-time block), so
the controller registers each worker's pid on the same pipe (:func:`register_worker`). The ssh
ControlPersist masters do not show it either: OpenSSH's setproctitle() overwrites their whole
argv+environ area with ``ssh: <path> [mux]`` and NULs, and daemon() + setsid() puts them in their
own session. So the controller becomes a child subreaper: whatever its workers orphan (the masters,
``cmd &``) re-parents to it, not to PID 1, and stays in its tree while it lives.

When the controller ends in any way (normal exit, SIGTERM, SIGKILL, runner's killpg), the guardian
sees EOF and sweeps (:func:`sweep`) every process carrying the run id, every registered worker still
alive with its descendants, and the ssh clients and masters it saw among the controller's children.
At a normal end of run the controller does the sweep itself (:func:`end_of_run_sweep`, ``atexit``),
over the same candidates plus its whole tree, which is how the ControlPersist masters the run
created are closed. Workers also get PR_SET_PDEATHSIG as a belt.

Chosen over a cgroup (not writable in an unprivileged EE), over a process-group kill (workers and
mux masters have their own sessions) and over a per-run ControlPath directory (would change the ssh
plugin's configuration, which users override, and still needs the masters' pids to kill a master
that ignores ``ssh -O exit``).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import site
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable

import psutil

from ansible_task_timeout import bounds, proctree, sshmux

RUN_ID_ENV = "ANSIBLE_TASK_TIMEOUT_RUN_ID"
"""Environment variable carrying the run id: every process of the run is found by it."""

GUARDIAN_MODULE = "ansible_task_timeout.guardian"
"""What the guardian runs, as ``python -s -P -m GUARDIAN_MODULE RUN_ID CONTROLLER_PID FD``."""


@dataclasses.dataclass
class _Guard:
    run_id: str
    controller_pid: int
    write_fd: int
    guardian: subprocess.Popen[bytes] | None
    workers: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    worker_pids: set[int] = dataclasses.field(default_factory=set)
    last_reap: float = 0.0
    warned: bool = False
    """The guard's trouble with its guardian was reported: once, in one line."""
    status_fd: int | None = None
    """The read end of the starting guardian's stderr, until it told whether it started."""
    status: bytes = b""


_guard: _Guard | None = None
_guard_lock = threading.Lock()
_interrupted = False


def warn(message: str) -> None:
    """One warning line: through ansible's Display where ansible is loaded, else on stderr."""
    display = sys.modules.get("ansible.utils.display")
    if display is not None:
        with contextlib.suppress(Exception):
            display.Display().warning(message)
            return
    print(f"[WARNING]: {message}", file=sys.stderr)


def _warn_once(guard: _Guard, trouble: str, consequence: str) -> None:
    if not guard.warned:
        guard.warned = True
        message = f"the run guard's guardian {trouble}; if this controller is killed, {consequence}."
        warn(f"task_timeout: {message}")


def _guardian_env() -> dict[str, str]:
    """The controller's environment for the guardian: without the run id, with this package importable.

    ``-s -P`` keep the user's site directory and the working directory out of the guardian's path,
    so it finds this package where the controller found it: in a site directory it has anyway, or
    else (a source tree on the controller's path) in that directory, put first on PYTHONPATH.
    """
    env = {k: v for k, v in os.environ.items() if k != RUN_ID_ENV}
    home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    site_dirs = {os.path.realpath(path) for path in getattr(site, "getsitepackages", list)()}
    if os.path.realpath(home) not in site_dirs:
        env["PYTHONPATH"] = os.pathsep.join(path for path in (home, env.get("PYTHONPATH")) if path)
    return env


def ensure_run_guard() -> str:
    """Start the guardian once per controller process (before the first worker); return the run id.

    A fresh id every time, even if one was inherited (an ansible-playbook run from a task of
    another run must not sweep its parent's processes at its own end). The controller also becomes
    a child subreaper: what its workers orphan (above all the daemonised ssh ControlPersist
    masters, whose proctitle hides the run id) re-parents to it instead of to PID 1, so the
    controller's end-of-run sweep and the guardian's polls find it in the controller's tree.

    The guardian's stderr is a pipe until it has started: a guardian that cannot start (it cannot
    import this package, say) says why there and exits, and :func:`register_worker` reports it.
    """
    global _guard
    with _guard_lock:
        if _guard is not None and _guard.controller_pid == os.getpid():
            return _guard.run_id
        proctree.become_subreaper()
        run_id = uuid.uuid4().hex
        os.environ[RUN_ID_ENV] = run_id
        read_fd, write_fd = os.pipe()
        status_r, status_w = os.pipe()
        guardian: subprocess.Popen[bytes] | None
        failure: OSError | None = None
        try:
            guardian = subprocess.Popen(
                [sys.executable, "-s", "-P", "-m", GUARDIAN_MODULE, run_id, str(os.getpid()), str(read_fd)],
                pass_fds=(read_fd,),
                start_new_session=True,  # survives killpg of the controller's group (ansible-runner)
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=status_w,
                env=_guardian_env(),
            )
        except OSError as ex:
            guardian, failure = None, ex
        finally:
            os.close(read_fd)
            os.close(status_w)
        _guard = _Guard(run_id, os.getpid(), write_fd, guardian)
        if guardian is None:
            os.close(status_r)
            _warn_once(_guard, f"process could not start ({failure})", "processes of the run may outlive it")
        else:
            os.set_blocking(status_r, False)
            _guard.status_fd = status_r
        return run_id


def _check_guardian_start(guard: _Guard) -> None:
    """Read what the starting guardian said, without waiting; report one that could not start.

    EOF means it has replaced its stderr with /dev/null (started) or exited: an exit, after what it
    printed, is a guardian that could not start.
    """
    if guard.status_fd is None:
        return
    while True:
        try:
            chunk = os.read(guard.status_fd, 65536)
        except BlockingIOError:
            return  # still starting
        except OSError:
            chunk = b""
        if not chunk:
            break
        guard.status += chunk
    os.close(guard.status_fd)
    guard.status_fd = None
    if guard.guardian is None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        guard.guardian.wait(timeout=0.2 if guard.status else 0)  # an exit follows its last words
    if guard.guardian.returncode is not None:
        lines = guard.status.decode(errors="replace").strip().splitlines()
        why = lines[-1] if lines else f"exit status {guard.guardian.returncode}"
        _warn_once(guard, f"process could not start ({why})", "processes of the run may outlive it")


def register_worker(pid: int) -> None:
    """Tell the guardian about a forked worker: its /proc environ does not show the run id.

    The worker is recorded as (pid, now in /proc starttime ticks), read from the clock, not from
    /proc: this runs in the strategy's main thread between two forks, where every syscall hands the
    GIL to the results thread. A live process with that pid and a starttime no later than the
    recorded tick is the worker: a pid is reused only after its process was reaped.

    Also reports a guardian that could not start or was lost (once), and reaps the adopted processes
    that exited meanwhile (:func:`reap_adopted_zombies`), at most every ``bounds.REAP_INTERVAL``.
    """
    guard = _guard
    if guard is None or guard.controller_pid != os.getpid():
        return
    _check_guardian_start(guard)
    started_by = proctree.now_ticks()
    guard.workers.append((pid, started_by))
    guard.worker_pids.add(pid)
    try:
        os.write(guard.write_fd, f"W {pid} {started_by}\n".encode())
    except OSError as ex:
        _check_guardian_start(guard)  # a guardian that died starting says so, not merely "lost"
        _warn_once(guard, f"was lost ({ex})", "its workers may outlive it")
    now = time.monotonic()
    if now - guard.last_reap >= bounds.REAP_INTERVAL:
        guard.last_reap = now
        reap_adopted_zombies()


def reap_adopted_zombies() -> list[int]:
    """waitpid() the exited daemons the controller adopted as subreaper; return the reaped pids.

    Only zombie children in another session than the controller's that are neither a registered
    worker nor the guardian. Workers call setsid(), so everything they orphan (ssh ControlPersist
    masters, ``async_wrapper`` daemons, ``nohup cmd &``) is in another session; the controller's
    own subprocesses share its session (the few started with a new session, like the ssh of
    ``meta: reset_connection``, are waited for at once by the same main thread that calls this).
    So no multiprocessing or subprocess object is robbed of an exit status.
    """
    guard = _guard
    me = os.getpid()
    if guard is None or guard.controller_pid != me:
        return []
    if not _zombie_child():
        return []
    guardian = guard.guardian.pid if guard.guardian is not None else None
    own_session = os.getsid(0)
    reaped: list[int] = []
    for pid in proctree.children(me):  # the live children, not every worker the run registered
        # never read a busy worker's /proc/<pid>/stat: it waits on its memory map
        if pid in guard.worker_pids or pid == guardian:
            continue
        stat = proctree.stat(pid)
        if stat is None or stat.state != "Z" or stat.session == own_session:
            continue
        with contextlib.suppress(OSError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
    return reaped


def _zombie_child() -> bool:
    """Whether a child may be waiting to be reaped (one waitid, no reaping).

    waitid(WNOWAIT) shows one waitable child: none means there is nothing to scan for; a worker
    (multiprocessing reaps it) may hide others, so it does not rule a scan out.
    """
    try:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return info is not None and info.si_pid != 0


def forget_run_guard_in_child() -> None:
    """In a forked worker: close the inherited guard pipes, so only the controller holds them."""
    global _guard
    guard = _guard
    if guard is not None and guard.controller_pid != os.getpid():
        for fd in (guard.write_fd, guard.status_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        _guard = None


def note_interrupted() -> None:
    """The controller got SIGINT/SIGTERM: its end-of-run sweep ends everything of the run, not only ssh."""
    global _interrupted
    _interrupted = True


def interrupted() -> bool:
    """Whether the run is being interrupted (:func:`note_interrupted`)."""
    return _interrupted


def _is_ssh(proc: psutil.Process) -> bool:
    """An ssh client or ControlPersist master (what a normal end of run closes)."""
    with contextlib.suppress(psutil.Error):
        return sshmux.is_ssh(proc.cmdline())
    return False


def end_of_run_sweep() -> None:
    """At the controller's exit (atexit): close what the run left behind, then release the guardian.

    Candidates are the processes carrying the run id, the registered workers and every descendant
    of the controller (as subreaper it adopted the daemonised ssh masters, which carry no run id).
    A normal end closes the ssh ControlPersist masters and clients among them and any worker still
    alive, but spares what a local task deliberately left running (``nohup ... &``); after SIGINT
    or SIGTERM everything of the run is ended, as the guardian does when the controller dies.
    """
    global _guard
    guard = _guard
    if guard is None or guard.controller_pid != os.getpid():
        return
    _check_guardian_start(guard)
    exclude = {os.getpid()}
    if guard.guardian is not None:
        exclude.add(guard.guardian.pid)
    sweep(
        guard.run_id,
        guard.workers,
        exclude,
        only=None if _interrupted else _is_ssh,
        roots=lambda: [os.getpid()],
    )
    with contextlib.suppress(OSError):
        os.write(guard.write_fd, b"Q\n")  # done: the guardian exits without sweeping
        os.close(guard.write_fd)
    if guard.status_fd is not None:
        with contextlib.suppress(OSError):
            os.close(guard.status_fd)
    if guard.guardian is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            guard.guardian.wait(timeout=bounds.GUARDIAN_EXIT_WAIT)
    reap_adopted_zombies()
    _guard = None


# Registered at import, before any plugin's own exit handler: atexit runs handlers last-in first-out,
# so the sweep runs after them, when no callback thread writes to stdout any more. Registered at
# the first worker's start, it would run first and stretch the shutdown under a live callback thread.
atexit.register(end_of_run_sweep)


# --------------------------------------------------------------------------- the sweep


def _carries_run_id(proc: psutil.Process, run_id: str) -> bool:
    try:
        return proc.environ().get(RUN_ID_ENV) == run_id
    except psutil.Error:
        return False


def started_by(pid: int, ticks: int) -> bool:
    """Whether `pid` is alive and started no later than `ticks` (a registered worker's own process)."""
    stat = proctree.stat(pid)
    return stat is not None and stat.state != "Z" and stat.starttime <= ticks


def find_run_processes(
    run_id: str,
    workers: Iterable[tuple[int, int]],
    exclude: set[int],
    also: Callable[[int], bool] | None = None,
) -> list[psutil.Process]:
    """Live processes of the run: carrying `run_id` in their environ, registered workers, or `also`.

    `also` (a pid predicate) adds what the run id cannot show: descendants of the controller or of
    a worker, and the ssh masters the guardian remembered. Local ``async`` jobs (under an
    ``async_wrapper``) are spared: outliving the play is their point.
    """
    wanted = dict(workers)
    found: list[psutil.Process] = []
    spared: set[int] = set()
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        info = proc.info
        if proc.pid in exclude or info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(info.get("cmdline") or [])
        if "async_wrapper" in cmdline and (_carries_run_id(proc, run_id) or (also and also(proc.pid))):
            spared.add(proc.pid)
            spared.update(proctree.descendants(proc.pid))
            continue
        registered = proc.pid in wanted and started_by(proc.pid, wanted[proc.pid])
        if registered or _carries_run_id(proc, run_id) or (also is not None and also(proc.pid)):
            found.append(proc)
    return [proc for proc in found if proc.pid not in spared]


def live_workers(workers: Iterable[tuple[int, int]]) -> list[int]:
    """The registered workers still alive (see :func:`register_worker` for how they are told apart)."""
    existing = set(psutil.pids())  # a long run registers many workers: look only at live pids
    return [pid for pid, ticks in workers if pid in existing and started_by(pid, ticks)]


def sweep(
    run_id: str,
    workers: Iterable[tuple[int, int]],
    exclude: set[int],
    grace: float = bounds.SWEEP_GRACE,
    only: Callable[[psutil.Process], bool] | None = None,
    roots: Callable[[], Iterable[int]] | None = None,
    also: Callable[[int], bool] | None = None,
) -> list[int]:
    """SIGTERM, then SIGKILL, the processes of the run; repeat while new ones appear. Return the pids.

    Candidates: processes carrying the run id, the registered workers, the descendants of the
    registered workers and of `roots()` (listed afresh each round, before anything is signalled),
    and what `also` accepts. Registered workers are always included; the others only if `only`
    (a filter) is None or accepts them. The sockets the ended ssh processes named are removed.
    """
    workers = list(workers)
    worker_pids = {pid for pid, _ticks in workers}
    ended: list[int] = []
    for _round in range(5):
        tree: set[int] = set()
        for root in [*live_workers(workers), *(roots() if roots is not None else ())]:
            tree.update(proctree.descendants(root))

        def member(pid: int, tree: set[int] = tree) -> bool:
            return pid in tree or (also is not None and also(pid))

        procs = find_run_processes(run_id, workers, exclude, member)
        if only is not None:
            procs = [p for p in procs if p.pid in worker_pids or only(p)]
        if not procs:
            break
        sockets: set[str] = set()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                sockets |= sshmux.parse_cmdline(proc.cmdline()).paths
        proctree.end_processes(procs, grace, wait=proctree.wait_for)
        ended.extend(proc.pid for proc in procs)
        for path in sockets:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return ended
