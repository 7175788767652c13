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
  (``task_timeout`` + :data:`WATCHDOG_GRACE`). A worker that has not delivered its result by then
  is frozen and killed with its whole process tree, and a :class:`WorkerLost` event is returned in
  place of the result. A worker that dies without a result (killed from outside, crashed) gives the
  same event. The strategy turns it into the normal failed result for that host, so callbacks,
  counters and ``register`` work as for any failed task, and the run goes on ("A worker was found
  in a dead state" is no longer raised for supervised workers).
* **Run guard** (:func:`ensure_run_guard`): a unique run id is put in the controller's environment
  (inherited by every exec'd descendant: ssh clients, the daemonised ControlPersist masters, module
  processes) and a small guardian process is started in its own session, holding the read end of a
  pipe whose write end only the controller holds. Forked workers do not show the id in
  /proc/<pid>/environ (that is the exec-time block), so the controller registers each worker's pid
  on the same pipe. When the controller ends in any way (normal exit, SIGTERM, SIGKILL, runner's
  killpg), the guardian sees EOF and kills every process carrying the run id and every registered
  worker still alive, then exits. At a normal end of run the controller does the same sweep itself
  (``atexit``), which is how the ControlPersist masters the run created are closed. Workers also get
  PR_SET_PDEATHSIG as a belt. Chosen over a cgroup (not writable in an unprivileged EE) and over a
  process-group kill (workers and mux masters have their own sessions).

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
from collections.abc import Callable, Iterable

import psutil

import ansible_task_timeout

RUN_ID_ENV = "ANSIBLE_TASK_TIMEOUT_RUN_ID"
"""Environment variable carrying the run id: every process of the run is found by it."""

WATCHDOG_GRACE = 5.0
"""Seconds after ``task_timeout`` before the controller kills a worker that did not report.

The worker's own alarm fires at ``task_timeout`` and normally delivers its result well within this."""

POLL_INTERVAL = 0.2
"""Longest the results thread blocks before it re-checks deadlines and dead workers."""

SWEEP_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL when the run's leftovers are swept."""

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
    delivered: bool = False


@dataclasses.dataclass
class _Channel:
    token: int
    rfd: int
    wfd: int | None
    buffer: bytearray = dataclasses.field(default_factory=bytearray)
    worker: _Worker | None = None


def watchdog_limit(raw: object, render: Callable[[object], object] | None) -> int:
    """The task's ``task_timeout`` as the controller sees it; 0 (no watchdog) if it cannot be resolved.

    A bad value is reported by the worker itself right away, so it needs no watchdog.
    """
    try:
        return ansible_task_timeout.resolve_limit(raw, render)
    except ansible_task_timeout.TaskTimeoutValueError:
        return 0


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
        self._writer_fd: int | None = None
        self._writer_lock = threading.Lock()
        self._closed = False

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
        self, token: int, process: object, host_name: str, task_uuid: str, worker_id: int, limit: int
    ) -> None:
        """Close the controller's copy of the write end and start supervising the forked worker."""
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
            deadline = time.monotonic() + limit + WATCHDOG_GRACE if limit > 0 else None
            channel.worker = _Worker(worker_id, pid, host_name, task_uuid, limit, deadline, process)
        register_worker(pid)
        self._wake()

    def put_local(self, obj: object) -> None:
        """Queue an item from the controller itself (never blocks)."""
        with self._lock:
            self._ready.append(obj)
        self._wake()

    def get(self, timeout: float = POLL_INTERVAL) -> object:
        """Next item from any worker, or a :class:`WorkerLost`; raise queue.Empty after `timeout`.

        Only the results thread calls this. Never blocks on a single worker: reads are non-blocking
        and the wait is bounded, so deadlines are checked at least every :data:`POLL_INTERVAL`.
        """
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._ready:
                    return self._ready.popleft()
            self._supervise()
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
                events = poller.poll(min(remaining, POLL_INTERVAL) * 1000)
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
        """Close every channel (end of the run); a results thread still in :meth:`get` gets EOFError."""
        with self._lock:
            self._closed = True
            for channel in list(self._channels.values()):
                self._drop(channel)
        self._wake()

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
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
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
        with contextlib.suppress(BlockingIOError, OSError):
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
                kill_worker_tree(worker.pid)
                self._lose(channel, "", timed_out=True)
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


def kill_worker_tree(pid: int) -> list[int]:
    """Freeze the worker, kill it with every descendant and its process group; close ssh masters found.

    SIGSTOP first so the tree cannot grow while it is listed; SIGKILL because the worker already had
    its own deadline plus grace to finish politely. ControlPaths are read from the ssh clients
    before they die so stale mux sockets are removed.
    """
    try:
        root = psutil.Process(pid)
        root.suspend()
    except psutil.Error:
        kill_process_group(pid)
        return []
    procs: list[psutil.Process] = [root]
    for _round in range(3):
        try:
            found = [p for p in root.children(recursive=True) if p.pid not in {q.pid for q in procs}]
        except psutil.Error:
            found = []
        if not found:
            break
        for proc in found:
            with contextlib.suppress(psutil.Error):
                proc.suspend()
        procs.extend(found)
    paths: set[str] = set()
    for proc in procs[1:]:
        with contextlib.suppress(psutil.Error):
            paths |= ansible_task_timeout.control_paths_from_cmdline(proc.cmdline())
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    kill_process_group(pid)
    psutil.wait_procs(procs[1:], timeout=1.0)
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return [p.pid for p in procs]


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
    workers: list[tuple[int, float]] = dataclasses.field(default_factory=list)


_guard: _Guard | None = None
_guard_lock = threading.Lock()


def current_run_id() -> str | None:
    """The run id of this controller, if the guard was started."""
    return _guard.run_id if _guard is not None else None


def ensure_run_guard() -> str:
    """Start the guardian once per controller process (before the first worker); return the run id.

    A fresh id every time, even if one was inherited (an ansible-playbook run from a task of
    another run must not sweep its parent's processes at its own end).
    """
    global _guard
    with _guard_lock:
        if _guard is not None and _guard.controller_pid == os.getpid():
            return _guard.run_id
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
        except OSError:
            guardian = None
        os.close(read_fd)
        _guard = _Guard(run_id, os.getpid(), write_fd, guardian)
        atexit.register(end_of_run_sweep)
        return run_id


def register_worker(pid: int) -> None:
    """Tell the guardian about a forked worker: its /proc environ does not show the run id."""
    guard = _guard
    if guard is None or guard.controller_pid != os.getpid():
        return
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.Error:
        return
    guard.workers.append((pid, create_time))
    with contextlib.suppress(OSError):
        os.write(guard.write_fd, f"W {pid} {create_time!r}\n".encode())


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


def _is_ssh(proc: psutil.Process) -> bool:
    """An ssh client or ControlPersist master (what a normal end of run closes)."""
    with contextlib.suppress(psutil.Error):
        cmdline = proc.cmdline()
        return bool(cmdline) and (
            os.path.basename(cmdline[0]) in {"ssh", "sshpass"} or bool(_mux_socket(cmdline))
        )
    return False


def end_of_run_sweep() -> None:
    """At the controller's exit (atexit): close what the run left behind, then release the guardian.

    A normal end closes the ssh ControlPersist masters (and clients) of the run and any worker still
    alive, but spares what a local task deliberately left running (``nohup ... &``); after SIGINT or
    SIGTERM everything of the run is ended, as the guardian does when the controller dies.
    """
    global _guard
    guard = _guard
    if guard is None or guard.controller_pid != os.getpid():
        return
    exclude = {os.getpid()}
    if guard.guardian is not None:
        exclude.add(guard.guardian.pid)
    sweep(guard.run_id, guard.workers, exclude, only=None if _interrupted else _is_ssh)
    with contextlib.suppress(OSError):
        os.write(guard.write_fd, b"Q\n")  # done: the guardian exits without sweeping
        os.close(guard.write_fd)
    if guard.guardian is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            guard.guardian.wait(timeout=SWEEP_GRACE * 3)
    _guard = None


def _carries_run_id(proc: psutil.Process, run_id: str) -> bool:
    try:
        return proc.environ().get(RUN_ID_ENV) == run_id
    except psutil.Error:
        return False


def find_run_processes(
    run_id: str, workers: Iterable[tuple[int, float]], exclude: set[int]
) -> list[psutil.Process]:
    """Live processes of the run: carrying `run_id` in their environ, or registered workers.

    Local ``async`` jobs (under an ``async_wrapper``) are spared: outliving the play is their point.
    """
    wanted = {pid: ctime for pid, ctime in workers}
    found: list[psutil.Process] = []
    spared: set[int] = set()
    for proc in psutil.process_iter(["pid", "cmdline", "status", "create_time"]):
        info = proc.info
        if proc.pid in exclude or info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(info.get("cmdline") or [])
        if "async_wrapper" in cmdline and _carries_run_id(proc, run_id):
            spared.add(proc.pid)
            with contextlib.suppress(psutil.Error):
                spared.update(child.pid for child in proc.children(recursive=True))
            continue
        registered = proc.pid in wanted and abs(wanted[proc.pid] - (info.get("create_time") or 0)) < 0.05
        if registered or _carries_run_id(proc, run_id):
            found.append(proc)
    return [proc for proc in found if proc.pid not in spared]


def sweep(
    run_id: str,
    workers: Iterable[tuple[int, float]],
    exclude: set[int],
    grace: float = SWEEP_GRACE,
    only: Callable[[psutil.Process], bool] | None = None,
) -> list[int]:
    """SIGTERM, then SIGKILL, the processes of the run; repeat while new ones appear. Return the pids.

    Registered workers are always included; other processes carrying the run id only if `only`
    (a filter) is None or accepts them.
    """
    workers = list(workers)
    worker_pids = {pid for pid, _ctime in workers}
    ended: list[int] = []
    for _round in range(5):
        procs = find_run_processes(run_id, workers, exclude)
        if only is not None:
            procs = [p for p in procs if p.pid in worker_pids or only(p)]
        if not procs:
            break
        sockets: set[str] = set()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                sockets |= _mux_socket(proc.cmdline())
                proc.terminate()
                proc.resume()
            ended.append(proc.pid)
        _gone, alive = psutil.wait_procs(procs, timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=grace)
        for path in sockets:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return ended


def _mux_socket(cmdline: list[str]) -> set[str]:
    """The socket of an ssh ControlPersist master (proctitle ``ssh: <path> [mux]``), or of a client."""
    found = ansible_task_timeout.control_paths_from_cmdline(cmdline)
    text = " ".join(cmdline)
    if text.startswith("ssh: ") and text.endswith("[mux]"):
        found.add(text[len("ssh: ") : -len("[mux]")].strip())
    return found


def guardian_main() -> None:
    """The guardian (own session, no run id): wait for the controller to end, then sweep the run.

    argv: run id, controller pid, read fd. Lines ``W <pid> <create_time>`` register workers. EOF on
    the pipe, or the controller's pid gone (should a stray process still hold the write end), means
    the controller ended.
    """
    run_id, controller_pid, fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with contextlib.suppress(OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C to the terminal's group is not ours to obey
    workers: dict[int, float] = {}
    pending = b""
    normal_end = False
    try:
        controller = psutil.Process(controller_pid)
    except psutil.Error:
        controller = None
    while controller is not None:
        ready, _w, _x = select.select([fd], [], [], 1.0)
        if not ready:
            with contextlib.suppress(psutil.Error):
                if controller.is_running() and controller.status() != psutil.STATUS_ZOMBIE:
                    continue
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"W":
                workers[int(parts[1])] = float(parts[2])
            elif parts == [b"Q"]:
                normal_end = True  # the controller swept at its own exit
    if not normal_end:
        sweep(run_id, workers.items(), {os.getpid()})
