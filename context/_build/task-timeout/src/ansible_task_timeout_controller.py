"""Controller side of the task-timeout guarantee: per-worker result channels, watchdog, run guard.

The worker-side deadline (:mod:`ansible_task_timeout`) covers the common case. This module makes
the promise unconditional, whatever a worker does (blocks SIGALRM, sits in C code, is killed by
someone in the middle of writing a result):

* **Per-worker result channels** (:class:`ResultChannels`) replace the one shared FinalQueue pipe
  and its cross-process write lock. Upstream, a worker killed while holding that lock wedges every
  other worker and the controller forever, and a worker killed mid-frame desyncs the reader (W8,
  W9, lab H). Here each worker gets its own pipe, created right before its fork; the controller
  closes the write end right after the fork, so only that worker holds it. The worker writes
  length-prefixed pickled frames under a per-process lock only. The controller's results thread
  polls all channels and reads NON-BLOCKING into a per-channel buffer: a stalled or torn frame on
  one channel never blocks the reader or touches another channel; EOF or a corrupt frame just
  discards that channel. Nothing is shared between workers, so there is nothing a kill can leave
  locked.
* **Watchdog** (same class): the controller knows each worker's host, task and deadline
  (``task_timeout`` + ``WATCHDOG_GRACE``; every bound is defined in :mod:`ansible_task_timeout`).
  A worker that has not delivered its result by then is frozen and killed with its process tree
  (an ssh master that other tasks use is spared), and a :class:`WorkerLost` event is returned in
  place of the result. A worker that dies without a result (killed from outside, crashed) gives the
  same event. The strategy turns it into the normal failed result for that host, so callbacks,
  counters and ``register`` work as for any failed task, and the run goes on ("A worker was found
  in a dead state" is no longer raised for supervised workers).
* **Run guard** (:func:`ensure_run_guard`): a unique run id is put in the controller's environment
  (inherited by every exec'd descendant: ssh clients, module processes) and a small guardian
  process is started in its own session, holding the read end of a pipe whose write end only the
  controller holds. Forked workers do not show the id in /proc/<pid>/environ (that is the
  exec-time block), so the controller registers each worker's pid on the same pipe. The ssh
  ControlPersist masters do not show it either: OpenSSH's setproctitle() overwrites their whole
  argv+environ area with ``ssh: <path> [mux]`` and NULs, and daemon() + setsid() puts them in
  their own session. So the controller becomes a child subreaper: whatever its workers orphan
  (the masters, ``cmd &``) re-parents to it, not to PID 1, and stays in its tree while it lives.
  When the controller ends in any way (normal exit, SIGTERM, SIGKILL, runner's killpg), the
  guardian sees EOF and kills every process carrying the run id, every registered worker still
  alive with its descendants, and the ssh clients and masters it saw among the controller's
  children (it lists them every :data:`GUARD_POLL` seconds; see :class:`_RunWatch` for the race this
  leaves and how it is bounded), then exits. At a normal end of run the controller does the
  sweep itself (``atexit``), over the same candidates plus its whole tree, which is how the
  ControlPersist masters the run created are closed. Workers also get PR_SET_PDEATHSIG as a
  belt. Chosen over a cgroup (not writable in an unprivileged EE), over a process-group kill
  (workers and mux masters have their own sessions) and over a per-run ControlPath directory
  (would change the ssh plugin's configuration, which users override, and still needs the
  masters' pids to kill a master that ignores ``ssh -O exit``).

Stdlib + psutil only; importable without ansible, so it is unit-tested on the host.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import psutil

import ansible_task_timeout

RUN_ID_ENV = "ANSIBLE_TASK_TIMEOUT_RUN_ID"
"""Environment variable carrying the run id: every process of the run is found by it."""

SUPERVISE_INTERVAL = 0.1
"""Least seconds between two watchdog passes over the workers in the results thread.

A pass costs a waitpid() per live worker, and each syscall hands the GIL over: run after every
result frame, as at first, it slowed the strategy's main thread (forking the next workers) by
about 10 ms per host and task. A worker's exit is seen at once anyway, by EOF on its pipe."""

SWEEP_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL when the run's leftovers are swept."""

GUARD_POLL = 0.5
"""How often the guardian lists the controller's children (and checks that it is alive)."""

REAP_INTERVAL = 1.0
"""Least seconds between two scans for adopted zombies as workers start.

A scan stats every child of the controller, and with ControlPersist every host of the run has a
live master among them: scanning at each of thousands of worker starts made the cost per host
grow with the fleet. A scan is also skipped when waitid() shows no waitable child. An adopted
zombie waits at most this long (and is reaped at the end): tried at 5 s, the zombies of killed
workers' children lingered long enough to break tools that read the controller's children."""

_HEADER = struct.Struct("!Q")
_MAX_FRAME = 1 << 31
_READ_CHUNK = 1 << 20
_PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------- events


@dataclasses.dataclass(frozen=True)
class WorkerLost:
    """A worker ended (or was ended by the watchdog) without delivering its task result."""

    worker_id: int
    pid: int
    host_name: str
    task_uuid: str
    limit: int
    timed_out: bool
    reason: str
    interrupted: bool = False
    """The run was being interrupted (SIGINT/SIGTERM forwarded to the workers): no warning."""

    def result(self) -> dict[str, object]:
        """The result recorded for the host: the timeout result, or a plain failure naming the reason."""
        if self.timed_out:
            return ansible_task_timeout.timed_out_result(self.limit)
        return {"failed": True, "changed": False, "msg": self.reason}


@dataclasses.dataclass
class _Worker:
    worker_id: int
    pid: int
    host_name: str
    task_uuid: str
    limit: int
    deadline: float | None
    process: object  # multiprocessing.Process: only .exitcode is used
    started: float = 0.0  # monotonic, as the controller saw the fork
    delivered: bool = False


@dataclasses.dataclass
class _Channel:
    token: int
    rfd: int
    wfd: int | None
    buffer: bytearray = dataclasses.field(default_factory=bytearray)
    worker: _Worker | None = None


def _watchdog_deadline(started: float, limit: int) -> float | None:
    """When the watchdog ends a worker started at `started` (monotonic); None for no limit."""
    return started + limit + ansible_task_timeout.WATCHDOG_GRACE if limit > 0 else None


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
        return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


# --------------------------------------------------------------------------- the channels


class ResultChannels:
    """Per-worker result pipes, multiplexed by the controller's results thread (see module docstring).

    Controller side: :meth:`open_channel` before the fork, :meth:`worker_started` after it,
    :meth:`get` in the results thread, :meth:`put_local` for the controller's own items (the
    strategy's sentinel), :meth:`close`. Worker side: :meth:`bind_writer` first thing after the
    fork, then :meth:`send`.
    """

    def __init__(self, is_task_result: Callable[[object], bool]) -> None:
        self._is_task_result = is_task_result
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._channels: dict[int, _Channel] = {}  # token -> channel
        self._next_token = 0
        self._ready: deque[object] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_fds: tuple[int, ...] = (self._wake_r, self._wake_w)  # open until closed once
        self._reading = False
        self._writer_fd: int | None = None
        self._writer_lock = threading.Lock()
        self._closed = False
        self._next_supervise = 0.0

    # ----------------------------------------------------------------- controller side

    def open_channel(self) -> int:
        """Create the pipe of the next worker (call right before forking it); return its token."""
        ensure_run_guard()
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        with self._lock:
            token = self._next_token
            self._next_token += 1
            self._channels[token] = _Channel(token=token, rfd=rfd, wfd=wfd)
        return token

    def worker_started(
        self, token: int, process: object, host_name: str, task_uuid: str, worker_id: int, raw_limit: object
    ) -> None:
        """Close the controller's copy of the write end and start supervising the forked worker.

        `raw_limit` is the task's ``task_timeout`` as written: templated values are resolved by
        the worker only (:func:`ansible_task_timeout.literal_limit`).
        """
        pid = getattr(process, "pid", None)
        with self._lock:
            channel = self._channels.get(token)
            if channel is None:
                return
            if channel.wfd is not None:
                os.close(channel.wfd)
                channel.wfd = None
            if not isinstance(pid, int):  # the fork failed: nothing to supervise
                self._drop(channel)
                return
            limit = ansible_task_timeout.literal_limit(raw_limit)
            now = time.monotonic()
            # provisional for a templated limit, until the worker tells the one it resolved
            deadline = _watchdog_deadline(now, ansible_task_timeout.RESOLVE_LIMIT if limit is None else limit)
            channel.worker = _Worker(worker_id, pid, host_name, task_uuid, limit or 0, deadline, process, now)
        register_worker(pid)
        self._wake()

    def put_local(self, obj: object) -> None:
        """Queue an item from the controller itself (never blocks)."""
        with self._lock:
            self._ready.append(obj)
        self._wake()

    def get(self, timeout: float = ansible_task_timeout.RESULTS_POLL) -> object:
        """Next item from any worker, or a :class:`WorkerLost`; raise queue.Empty after `timeout`.

        Only the results thread calls this. Never blocks on a single worker: reads are non-blocking
        and the wait is bounded, so deadlines are checked at least every ``RESULTS_POLL`` seconds.
        """
        with self._lock:
            self._reading = True
        try:
            return self._get(time.monotonic() + timeout)
        finally:
            with self._lock:
                self._reading = False
                closed = self._closed
            if closed:
                self._close_wake_pipe()

    def _get(self, end: float) -> object:
        while True:
            with self._lock:
                if self._ready:
                    return self._ready.popleft()
            if time.monotonic() >= self._next_supervise:
                self._supervise()
                self._next_supervise = time.monotonic() + SUPERVISE_INTERVAL
            with self._lock:
                if self._ready:
                    continue
                if self._closed:
                    raise EOFError("result channels closed")
                fds = {channel.rfd: channel for channel in self._channels.values() if channel.worker}
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise queue.Empty
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            try:
                events = poller.poll(min(remaining, ansible_task_timeout.RESULTS_POLL) * 1000)
            except OSError:
                continue
            for fd, _mask in events:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError, OSError):
                        while os.read(self._wake_r, 4096):
                            pass
                elif fd in fds:
                    self._drain(fds[fd])

    def close(self) -> None:
        """Close every channel and the wake pipe (end of the run); a results thread still in
        :meth:`get` gets EOFError, and closes the wake pipe on its way out."""
        with self._lock:
            self._closed = True
            for channel in list(self._channels.values()):
                self._drop(channel)
            reading = self._reading
        self._wake()
        if not reading:
            self._close_wake_pipe()

    def _close_wake_pipe(self) -> None:
        with self._lock:
            fds, self._wake_fds = self._wake_fds, ()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # ----------------------------------------------------------------- worker side

    def is_worker(self) -> bool:
        """True in a forked worker that called :meth:`bind_writer`."""
        return self._writer_fd is not None and os.getpid() != self._owner_pid

    def bind_writer(self, token: int) -> None:
        """In the forked worker: keep only our own write end, drop every controller-side fd.

        Holding another worker's read end, the wake pipe or the guard pipe would not block anyone,
        but holding the guard pipe would hide the controller's death from the guardian.
        """
        channel = self._channels.get(token)
        if channel is None or channel.wfd is None:
            raise RuntimeError(f"no result channel {token} to bind")
        for other in self._channels.values():
            with contextlib.suppress(OSError):
                os.close(other.rfd)
            if other is not channel and other.wfd is not None:
                with contextlib.suppress(OSError):
                    os.close(other.wfd)
        for fd in self._wake_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_fds = ()
        self._channels = {}
        self._ready = deque()
        self._lock = threading.Lock()  # the controller's may have been held by another thread at fork
        self._writer_lock = threading.Lock()
        os.set_blocking(channel.wfd, True)
        self._writer_fd = channel.wfd
        forget_run_guard_in_child()
        set_parent_death_signal(signal.SIGTERM, self._owner_pid)

    def send(self, obj: object) -> None:
        """Write one length-prefixed pickled frame (blocking; only this worker owns the pipe)."""
        from multiprocessing.reduction import ForkingPickler

        if self._writer_fd is None:
            raise RuntimeError("send() outside a bound worker")
        payload = bytes(ForkingPickler.dumps(obj))
        data = memoryview(_HEADER.pack(len(payload)) + payload)
        with self._writer_lock:
            while data:
                written = os.write(self._writer_fd, data)
                data = data[written:]

    # ----------------------------------------------------------------- internals

    def _wake(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError, OSError):
            if self._wake_fds:  # never write to a closed fd number: it may be reused by now
                os.write(self._wake_w, b"x")

    def _drop(self, channel: _Channel) -> None:
        """Forget a channel and close its fds (caller holds the lock)."""
        self._channels.pop(channel.token, None)
        for fd in (channel.rfd, channel.wfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        channel.wfd = None
        channel.buffer.clear()

    def _drain(self, channel: _Channel) -> None:
        """Read what is there (non-blocking), decode complete frames, handle EOF or a corrupt frame."""
        eof = False
        total = 0
        while total < 8 * _READ_CHUNK:  # bounded: one busy worker cannot starve the others
            try:
                chunk = os.read(channel.rfd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            channel.buffer += chunk
            total += len(chunk)
        if not self._decode(channel):
            return
        if eof:
            self._on_eof(channel)

    def _decode(self, channel: _Channel) -> bool:
        """Move complete frames to the ready queue; False if the channel was discarded as corrupt."""
        buffer = channel.buffer
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            if size > _MAX_FRAME:
                self._lose(channel, "sent a corrupt result frame")
                return False
            if len(buffer) < _HEADER.size + size:
                break
            payload = bytes(buffer[_HEADER.size : _HEADER.size + size])
            del buffer[: _HEADER.size + size]
            try:
                obj = pickle.loads(payload)
            except Exception:
                self._lose(channel, "sent a result frame that could not be decoded")
                return False
            worker = channel.worker
            if isinstance(obj, ansible_task_timeout.LimitNotice):
                if worker is not None:  # the limit the worker resolved: the watchdog's real deadline
                    worker.limit = obj.limit
                    worker.deadline = _watchdog_deadline(worker.started, obj.limit)
                continue
            if worker is not None and self._is_task_result(obj):
                worker.delivered = True
            with self._lock:
                self._ready.append(obj)
        return True

    def _on_eof(self, channel: _Channel) -> None:
        worker = channel.worker
        if worker is None or worker.delivered:
            with self._lock:
                self._drop(channel)
            return
        torn = " in the middle of a result frame" if channel.buffer else ""
        exitcode = _wait_exitcode(worker.process, 2.0)
        self._lose(channel, f"exited ({_signal_name(exitcode)}){torn} before delivering its task result")

    def _supervise(self) -> None:
        """Watchdog pass: end overdue workers; notice dead workers whose channel is held open elsewhere."""
        now = time.monotonic()
        with self._lock:
            active = [c for c in self._channels.values() if c.worker is not None and not c.worker.delivered]
        for channel in active:
            worker = channel.worker
            assert worker is not None
            if worker.deadline is not None and now >= worker.deadline:
                self._drain(channel)  # a result that just arrived wins over the watchdog
                if worker.delivered or channel.token not in self._channels:
                    continue
                masters = kill_worker_tree(worker.pid)
                self._lose(channel, "", timed_out=True)
                release_masters(masters)  # after the result is queued: it may take a while
            elif _exitcode(worker.process) is not None:
                self._drain(channel)
                if channel.token in self._channels and not worker.delivered:
                    self._on_eof(channel)

    def _lose(self, channel: _Channel, reason: str, timed_out: bool = False) -> None:
        """Discard a channel whose worker will not deliver; queue the WorkerLost event for its host."""
        worker = channel.worker
        with self._lock:
            self._drop(channel)
        if worker is None or worker.delivered:
            return
        worker.delivered = True  # exactly one result per worker
        kill_process_group(worker.pid)  # what the dead worker left in its own group (modules, commands)
        if timed_out:
            message = ansible_task_timeout.timed_out_message(worker.limit)
        else:
            message = f"The worker process of host {worker.host_name} (pid {worker.pid}) {reason}."
        event = WorkerLost(
            worker_id=worker.worker_id,
            pid=worker.pid,
            host_name=worker.host_name,
            task_uuid=worker.task_uuid,
            limit=worker.limit,
            timed_out=timed_out,
            reason=message,
            interrupted=_interrupted,
        )
        with self._lock:
            self._ready.append(event)


def _wait_exitcode(process: object, timeout: float) -> int | None:
    """The worker's exit code, polled (bounded): EOF on its pipe comes a moment before it is reapable."""
    end = time.monotonic() + timeout
    while True:
        code = _exitcode(process)
        if code is not None or time.monotonic() >= end:
            return code
        time.sleep(0.01)


def _exitcode(process: object) -> int | None:
    """multiprocessing's exitcode (waitpid WNOHANG); None if still running or the object was closed."""
    try:
        code = getattr(process, "exitcode", None)
    except ValueError:  # Process.close() was called by the strategy when it reused the slot
        return None
    return code if isinstance(code, int) else None


# --------------------------------------------------------------------------- killing


def kill_process_group(pgid: int) -> None:
    """SIGKILL process group `pgid` (a worker is its group's leader), ignoring a group that is gone."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


def kill_worker_tree(pid: int) -> set[str]:
    """Freeze the worker, kill it with its descendants and its process group; return ControlPaths.

    SIGSTOP first so the tree cannot grow while it is listed; SIGKILL because the worker already had
    its own deadline plus grace to finish politely. An ssh ControlPersist master in the tree (the
    worker adopted the one it started) is neither frozen nor killed here: other tasks' sessions may
    go through it. The ControlPaths of the tree's clients and masters are returned for
    :func:`release_masters`, which the caller runs once the result is recorded.
    """
    try:
        root = psutil.Process(pid)
        root.suspend()
    except psutil.Error:
        kill_process_group(pid)
        return set()
    procs: list[psutil.Process] = [root]
    seen = {pid}
    paths: set[str] = set()
    for _round in range(3):
        try:
            found = [p for p in root.children(recursive=True) if p.pid not in seen]
        except psutil.Error:
            found = []
        if not found:
            break
        for proc in found:
            seen.add(proc.pid)
            try:
                cmdline = proc.cmdline()
            except psutil.Error:
                cmdline = []  # unreadable: not a master we can tell, so it is killed like the rest
            if (path := ansible_task_timeout.mux_master_path(cmdline)) is not None:
                paths.add(path)  # spared, with what it runs (a ProxyCommand)
                with contextlib.suppress(psutil.Error):
                    seen.update(child.pid for child in proc.children(recursive=True))
                continue
            paths |= ansible_task_timeout.control_paths_from_cmdline(cmdline)
            with contextlib.suppress(psutil.Error):
                proc.suspend()
            procs.append(proc)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    kill_process_group(pid)
    psutil.wait_procs(procs[1:], timeout=ansible_task_timeout.WATCHDOG_KILL_WAIT)
    return paths


def release_masters(paths: Iterable[str]) -> None:
    """Let go of the masters of a killed worker: ended only where no other live task uses them."""
    for path in sorted(paths):
        ansible_task_timeout.release_control_master(path, wait=_wait_for)


def set_parent_death_signal(signum: int, expected_parent: int) -> None:
    """PR_SET_PDEATHSIG: get `signum` when the controller dies (belt to the guardian's braces)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if os.getppid() != expected_parent:  # the controller died before prctl took effect
        os.kill(os.getpid(), signum)


# --------------------------------------------------------------------------- run guard


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


_guard: _Guard | None = None
_guard_lock = threading.Lock()


def current_run_id() -> str | None:
    """The run id of this controller, if the guard was started."""
    return _guard.run_id if _guard is not None else None


def ensure_run_guard() -> str:
    """Start the guardian once per controller process (before the first worker); return the run id.

    A fresh id every time, even if one was inherited (an ansible-playbook run from a task of
    another run must not sweep its parent's processes at its own end). The controller also becomes
    a child subreaper: what its workers orphan (above all the daemonised ssh ControlPersist
    masters, whose proctitle hides the run id) re-parents to it instead of to PID 1, so the
    controller's end-of-run sweep and the guardian's polls find it in the controller's tree.
    """
    global _guard
    with _guard_lock:
        if _guard is not None and _guard.controller_pid == os.getpid():
            return _guard.run_id
        ansible_task_timeout.become_subreaper()
        run_id = uuid.uuid4().hex
        os.environ[RUN_ID_ENV] = run_id
        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if k != RUN_ID_ENV}
        module_dir = os.path.dirname(os.path.abspath(__file__))
        code = f"import sys; sys.path.insert(0, {module_dir!r}); import {__name__} as m; m.guardian_main()"
        guardian: subprocess.Popen[bytes] | None
        try:
            guardian = subprocess.Popen(
                [sys.executable, "-I", "-c", code, run_id, str(os.getpid()), str(read_fd)],
                pass_fds=(read_fd,),
                start_new_session=True,  # survives killpg of the controller's group (ansible-runner)
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        except OSError as ex:
            guardian = None
            ansible_task_timeout.warn(
                f"task_timeout: the run guard's guardian process could not start ({ex}); if this "
                "controller is killed, processes of the run may outlive it."
            )
        os.close(read_fd)
        _guard = _Guard(run_id, os.getpid(), write_fd, guardian)
        return run_id


def register_worker(pid: int) -> None:
    """Tell the guardian about a forked worker: its /proc environ does not show the run id.

    The worker is recorded as (pid, now in /proc starttime ticks), read from the clock, not from
    /proc: this runs in the strategy's main thread between two forks, where every syscall hands
    the GIL to the results thread (reading each new worker's stat here was a tenth of that thread's
    time at forks 50). A live process with that pid and a starttime no later than the recorded
    tick is the worker: a pid is reused only after its process was reaped.

    Also reaps the adopted processes that exited meanwhile (see :func:`reap_adopted_zombies`),
    at most every :data:`REAP_INTERVAL`.
    """
    guard = _guard
    if guard is None or guard.controller_pid != os.getpid():
        return
    started_by = _now_ticks()
    guard.workers.append((pid, started_by))
    guard.worker_pids.add(pid)
    try:
        os.write(guard.write_fd, f"W {pid} {started_by}\n".encode())
    except OSError as ex:
        if not guard.warned:
            guard.warned = True
            ansible_task_timeout.warn(
                f"task_timeout: the run guard lost its guardian ({ex}); if this controller is killed, "
                "its workers may outlive it."
            )
    now = time.monotonic()
    if now - guard.last_reap >= REAP_INTERVAL:
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
    keep = set(guard.worker_pids)
    if guard.guardian is not None:
        keep.add(guard.guardian.pid)
    own_session = os.getsid(0)
    reaped: list[int] = []
    for pid in _children(me):
        if pid in keep:  # never read a busy worker's /proc/<pid>/stat: it waits on its memory map
            continue
        stat = _stat(pid)
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
    """In a forked worker: close the inherited guard pipe, so only the controller holds it."""
    global _guard
    guard = _guard
    if guard is not None and guard.controller_pid != os.getpid():
        with contextlib.suppress(OSError):
            os.close(guard.write_fd)
        _guard = None


_interrupted = False


def note_interrupted() -> None:
    """The controller got SIGINT/SIGTERM: its end-of-run sweep ends everything of the run, not only ssh."""
    global _interrupted
    _interrupted = True


_SSH_NAMES = frozenset({"ssh", "sshpass"})
"""Executable names of an ssh client; a ControlPersist master keeps "ssh" as its comm."""
_SSH_COMMS = frozenset(name.encode() for name in _SSH_NAMES)


def _is_ssh_cmdline(cmdline: list[str]) -> bool:
    return bool(cmdline) and (
        os.path.basename(cmdline[0]) in _SSH_NAMES or ansible_task_timeout.is_mux_master(cmdline)
    )


def _is_ssh(proc: psutil.Process) -> bool:
    """An ssh client or ControlPersist master (what a normal end of run closes)."""
    with contextlib.suppress(psutil.Error):
        return _is_ssh_cmdline(proc.cmdline())
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
    if guard.guardian is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            guard.guardian.wait(timeout=SWEEP_GRACE * 3)
    reap_adopted_zombies()
    _guard = None


# Registered at import, before any plugin's own exit handler: atexit runs handlers last-in first-out,
# so the sweep runs after them, when no callback thread writes to stdout any more. Registered at
# the first worker's start, it ran first and stretched the shutdown under a live callback thread.
atexit.register(end_of_run_sweep)


def _carries_run_id(proc: psutil.Process, run_id: str) -> bool:
    try:
        return proc.environ().get(RUN_ID_ENV) == run_id
    except psutil.Error:
        return False


def _started_by(pid: int, ticks: int) -> bool:
    """Whether `pid` is alive and started no later than `ticks` (a registered worker's own process)."""
    stat = _stat(pid)
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
            with contextlib.suppress(psutil.Error):
                spared.update(child.pid for child in proc.children(recursive=True))
            continue
        registered = proc.pid in wanted and _started_by(proc.pid, wanted[proc.pid])
        if registered or _carries_run_id(proc, run_id) or (also is not None and also(proc.pid)):
            found.append(proc)
    return [proc for proc in found if proc.pid not in spared]


def _live_workers(workers: Iterable[tuple[int, int]]) -> list[int]:
    """The registered workers still alive (see :func:`register_worker` for how they are told apart)."""
    existing = set(psutil.pids())  # a long run registers many workers: look only at live pids
    return [pid for pid, ticks in workers if pid in existing and _started_by(pid, ticks)]


def sweep(
    run_id: str,
    workers: Iterable[tuple[int, int]],
    exclude: set[int],
    grace: float = SWEEP_GRACE,
    only: Callable[[psutil.Process], bool] | None = None,
    roots: Callable[[], Iterable[int]] | None = None,
    also: Callable[[int], bool] | None = None,
) -> list[int]:
    """SIGTERM, then SIGKILL, the processes of the run; repeat while new ones appear. Return the pids.

    Candidates: processes carrying the run id, the registered workers, the descendants of the
    registered workers and of `roots()` (listed afresh each round, before anything is signalled),
    and what `also` accepts. Registered workers are always included; the others only if `only`
    (a filter) is None or accepts them.
    """
    workers = list(workers)
    worker_pids = {pid for pid, _ticks in workers}
    ended: list[int] = []
    for _round in range(5):
        tree: set[int] = set()
        for root in [*_live_workers(workers), *(roots() if roots is not None else ())]:
            tree.update(descendants(root))

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
                sockets |= _mux_socket(proc.cmdline())
        ansible_task_timeout.end_processes(procs, grace, wait=_wait_for)
        ended.extend(proc.pid for proc in procs)
        for path in sockets:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return ended


def _wait_for(procs: Sequence[psutil.Process], timeout: float) -> None:
    """Wait (bounded) for exactly these processes, reaping only those that are our children."""
    psutil.wait_procs(procs, timeout=timeout)


def _mux_socket(cmdline: list[str]) -> set[str]:
    """The socket of an ssh ControlPersist master (proctitle ``ssh: <path> [mux]``), or of a client."""
    found = ansible_task_timeout.control_paths_from_cmdline(cmdline)
    if (path := ansible_task_timeout.mux_master_path(cmdline)) is not None:
        found.add(path)
    return found


# --------------------------------------------------------------------------- /proc, cheaply


@dataclasses.dataclass(frozen=True)
class _Stat:
    state: str
    ppid: int
    session: int
    starttime: int  # clock ticks after boot (CLOCK_BOOTTIME): exact, unlike psutil's float
    comm: bytes


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_proc_children_ok: bool | None = None


def _stat(pid: int) -> _Stat | None:
    """/proc/<pid>/stat, parsed (one read); None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        rpar = data.rindex(b")")
        fields = data[rpar + 2 :].split()
        comm = data[data.index(b"(") + 1 : rpar]
        return _Stat(fields[0].decode(), int(fields[1]), int(fields[3]), int(fields[19]), comm)
    except (OSError, ValueError, IndexError):
        return None


def _now_ticks() -> int:
    """Now, in the clock and unit of /proc/<pid>/stat's starttime (rounded down, as the kernel does)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) * _CLK_TCK // 1_000_000_000


def _cmdline(pid: int) -> list[str] | None:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).cmdline()
    return None


def _children(pid: int) -> list[int]:
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


def descendants(pid: int) -> list[int]:
    """Every descendant of `pid` (children, grandchildren, ...), found by walking down the tree."""
    found: list[int] = []
    seen = {pid}
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                todo.append(child)
    return found


# --------------------------------------------------------------------------- the guardian


class _RunWatch:
    """What the guardian learns about the run while the controller lives (polled every GUARD_POLL).

    OpenSSH's setproctitle() overwrites a ControlPersist master's whole argv+environ area, so
    /proc/<pid>/environ of a master never shows the run id, and daemon() puts it in its own
    session. While the controller lives it is the master's subreaper, so the master is one of
    the controller's children: each poll lists them (via /proc/<pid>/task/*/children, not a scan
    of the whole process table) and remembers (pid, starttime) of every ssh client and
    ``ssh: <path> [mux]`` master among them, and the directories of their ControlPaths. After
    the controller's death those still alive with the same starttime are killed (a reused pid is
    never hit).

    Remaining race: a master born after the last poll that listed the children, right before a SIGKILL
    of the controller, was never seen. Bounded by :meth:`race_master`: after the death, a process
    is also killed if it is an ``ssh: <path> [mux]`` master, started after the start of the
    poll before the last one (and after the controller) and no later than the death plus one
    sweep grace, is an orphan (its parent is PID 1 or one of the controller's ancestors, where the
    kernel re-parents orphans when the subreaper dies; another live run's masters have that run's
    controller or worker as parent), and has its socket in a directory where this run's ssh
    processes had theirs (or ansible's default ``~/.ansible/cp``). Left: such a master of an
    unpatched concurrent run, born in that second or two in the same directory.
    """

    def __init__(self, controller_pid: int, workers: dict[int, int] | None = None) -> None:
        self.controller_pid = controller_pid
        self.workers = workers if workers is not None else {}  # the registered workers (pid -> ticks)
        stat = _stat(controller_pid)
        self.controller_start = stat.starttime if stat is not None else 0
        self.ancestors: set[int] = {1}
        pid = stat.ppid if stat is not None else 0
        while pid > 1 and pid not in self.ancestors:
            self.ancestors.add(pid)
            parent = _stat(pid)
            pid = parent.ppid if parent is not None else 0
        self.known: dict[int, tuple[int, bytes]] = {}  # the controller's children: pid -> (starttime, comm)
        self.remembered: dict[int, int] = {}  # pid -> starttime of the ssh processes seen
        default = os.environ.get("ANSIBLE_SSH_CONTROL_PATH_DIR") or "~/.ansible/cp"
        self.dirs: set[str] = {os.path.realpath(os.path.expanduser(default))}
        self.polls: list[int] = []  # start (ticks) of the last two polls
        self.window_end: int | None = None

    def poll(self) -> None:
        """List the controller's children; remember the ssh clients and masters among them.

        Its children, not its whole tree: ssh daemonises a ControlPersist master (fork, then
        daemon()), so as subreaper the controller is the parent of every master, and an ssh client
        carries the run id (or is below a registered worker, which the sweep covers). Only a pid
        the previous poll did not list, or that may have exec'd since (neither a registered worker,
        which never execs, nor an ssh process already remembered), is read, and its cmdline only
        if its comm is ssh's: at forks 50 a walk of the whole tree, reading everything at every
        poll, took the guardian 4 % of a core and slowed the run it guards.
        """
        start = _now_ticks()
        known: dict[int, tuple[int, bytes]] = {}
        for pid in _children(self.controller_pid):
            entry = self.known.get(pid)
            if entry is not None and (pid in self.workers or pid in self.remembered):
                known[pid] = entry
                continue
            stat = _stat(pid)
            if stat is None or stat.state == "Z":
                continue
            if entry != (stat.starttime, stat.comm) and stat.comm in _SSH_COMMS:  # new, or exec'd since
                cmdline = _cmdline(pid) or []
                if _is_ssh_cmdline(cmdline):
                    self.remembered[pid] = stat.starttime
                    self.dirs.update(os.path.dirname(path) for path in _mux_socket(cmdline))
            known[pid] = (stat.starttime, stat.comm)
        self.known = known
        for pid, starttime in list(self.remembered.items()):
            if pid not in known and not self._same(pid, starttime):
                del self.remembered[pid]
        self.polls = [*self.polls[-1:], start]

    def controller_died(self) -> None:
        self.window_end = _now_ticks() + int((SWEEP_GRACE + 1.0) * _CLK_TCK)

    @staticmethod
    def _same(pid: int, starttime: int) -> bool:
        stat = _stat(pid)
        return stat is not None and stat.state != "Z" and stat.starttime == starttime

    def belongs(self, pid: int) -> bool:
        """After the controller's death: a remembered ssh process, or a master of the race window."""
        starttime = self.remembered.get(pid)
        if starttime is not None and self._same(pid, starttime):
            return True
        return self.race_master(pid)

    def race_master(self, pid: int) -> bool:
        """A master that may have been born after the last poll that could have seen it."""
        stat = _stat(pid)
        if stat is None or stat.state == "Z" or stat.comm != b"ssh":
            return False
        low = max(self.polls[-2], self.controller_start) if len(self.polls) == 2 else self.controller_start
        high = self.window_end if self.window_end is not None else _now_ticks()
        if not low <= stat.starttime <= high or stat.ppid not in self.ancestors:
            return False
        path = ansible_task_timeout.mux_master_path(_cmdline(pid) or [])
        return path is not None and os.path.dirname(path) in self.dirs


def guardian_main() -> None:
    """The guardian (own session, no run id): wait for the controller to end, then sweep the run.

    argv: run id, controller pid, read fd. Lines ``W <pid> <ticks>`` register workers. EOF on
    the pipe, or the controller's pid gone (should a stray process still hold the write end), means
    the controller ended. Every GUARD_POLL seconds while it lives, :class:`_RunWatch` records the
    ssh processes among its children, which the sweep after its death adds to the run id and the
    workers.
    """
    run_id, controller_pid, fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with contextlib.suppress(OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C to the terminal's group is not ours to obey
    workers: dict[int, int] = {}
    pending = b""
    normal_end = False
    try:
        controller = psutil.Process(controller_pid)
    except psutil.Error:
        controller = None
    watch = _RunWatch(controller_pid, workers)
    next_poll = 0.0
    while controller is not None:
        now = time.monotonic()
        if now >= next_poll:
            try:
                if not controller.is_running() or controller.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.Error:
                break
            watch.poll()
            next_poll = time.monotonic() + GUARD_POLL
            continue
        ready, _w, _x = select.select([fd], [], [], next_poll - now)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"W":
                workers[int(parts[1])] = int(parts[2])
            elif parts == [b"Q"]:
                normal_end = True  # the controller swept at its own exit
    if not normal_end:
        watch.controller_died()
        sweep(run_id, workers.items(), {os.getpid()}, also=watch.belongs)
