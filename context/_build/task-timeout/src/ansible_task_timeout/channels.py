"""Per-worker result channels and the watchdog: the controller's side of the task-timeout guarantee.

The worker-side deadline (:mod:`ansible_task_timeout.alarm`) covers the common case. This module
makes the promise unconditional, whatever a worker does (blocks SIGALRM, sits in C code, is killed
by someone in the middle of writing a result):

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
  (``task_timeout`` + ``bounds.WATCHDOG_GRACE``). A worker that has not delivered its result by then
  is frozen and killed with its process tree (an ssh master that other tasks use is spared), and a
  :class:`WorkerLost` event is returned in place of the result. A worker that dies without a result
  (killed from outside, crashed) gives the same event. The strategy turns it into the normal failed
  result for that host, so callbacks, counters and ``register`` work as for any failed task, and the
  run goes on ("A worker was found in a dead state" is no longer raised for supervised workers).

Opening a channel starts the run guard (:mod:`ansible_task_timeout.guard`) before the first worker
is forked, and registers each worker with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import queue
import select
import signal
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

from ansible_task_timeout import alarm, bounds, guard, limit, proctree, sshmux

_HEADER = struct.Struct("!Q")
_MAX_FRAME = 1 << 31
_READ_CHUNK = 1 << 20


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
            return limit.timed_out_result(self.limit)
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


def _watchdog_deadline(started: float, seconds: int) -> float | None:
    """When the watchdog ends a worker started at `started` (monotonic); None for no limit."""
    return started + seconds + bounds.WATCHDOG_GRACE if seconds > 0 else None


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
    :meth:`get` in the results thread, :meth:`put` for the controller's own items (the strategy's
    sentinel), :meth:`close`. Worker side: :meth:`bind_writer` first thing after the fork, then
    :meth:`put`.
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
        self._supervised: weakref.WeakSet[object] = weakref.WeakSet()

    # ----------------------------------------------------------------- controller side

    def open_channel(self) -> int:
        """Create the pipe of the next worker (call right before forking it); return its token."""
        guard.ensure_run_guard()
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
        the worker only (:func:`ansible_task_timeout.limit.literal_limit`).
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
            seconds = limit.literal_limit(raw_limit)
            now = time.monotonic()
            # provisional for a templated limit, until the worker tells the one it resolved
            deadline = _watchdog_deadline(now, bounds.RESOLVE_LIMIT if seconds is None else seconds)
            channel.worker = _Worker(
                worker_id, pid, host_name, task_uuid, seconds or 0, deadline, process, started=now
            )
            self._supervised.add(process)
        guard.register_worker(pid)
        self._wake()

    def supervises(self, process: object) -> bool:
        """Whether `process` is a worker whose death these channels report (as a :class:`WorkerLost`)."""
        return process in self._supervised

    def put(self, obj: object) -> None:
        """Send `obj` to the controller: a frame on our own pipe in a worker, else :meth:`put_local`."""
        if self.is_worker():
            self.send(obj)
        else:
            self.put_local(obj)

    def put_local(self, obj: object) -> None:
        """Queue an item from the controller itself (never blocks)."""
        with self._lock:
            self._ready.append(obj)
        self._wake()

    def get(self, timeout: float = bounds.RESULTS_POLL) -> object:
        """Next item from any worker, or a :class:`WorkerLost`; raise queue.Empty after `timeout`.

        Only the results thread calls this. Never blocks on a single worker: reads are non-blocking
        and the wait is bounded, so deadlines are checked at least every ``bounds.RESULTS_POLL`` seconds.
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
                self._next_supervise = time.monotonic() + bounds.SUPERVISE_INTERVAL
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
                events = poller.poll(min(remaining, bounds.RESULTS_POLL) * 1000)
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
        guard.forget_run_guard_in_child()
        proctree.set_parent_death_signal(signal.SIGTERM, self._owner_pid)

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
            if isinstance(obj, limit.LimitNotice):
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
        exitcode = _wait_exitcode(worker.process, bounds.EXIT_STATUS_WAIT)
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
                paths = sshmux.kill_tree_keeping_masters(
                    worker.pid,
                    include_root=True,
                    grace=0,  # SIGKILL: the worker had its own deadline and grace to end politely
                    kill_wait=bounds.WATCHDOG_KILL_WAIT,
                    deadline=time.monotonic() + bounds.WATCHDOG_KILL_WAIT,
                    wait=proctree.wait_for,
                )
                self._lose(channel, "", timed_out=True)
                sshmux.release_masters(paths, wait=proctree.wait_for)  # after the result is queued: slow
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
        proctree.kill_group(worker.pid)  # what the dead worker left in its own group (modules, commands)
        if timed_out:
            message = limit.timed_out_message(worker.limit)
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
            interrupted=guard.interrupted(),
        )
        with self._lock:
            self._ready.append(event)


class WorkerChannelsQueue:
    """ansible-core's FinalQueue with :class:`ResultChannels` as its transport: a base placed before
    multiprocessing's SimpleQueue in FinalQueue's bases (the hook in patches/).

    FinalQueue's own methods run on top unchanged: where a core line overrides put() and get()
    (2.22 wraps each message in an envelope carrying the secrets the worker registered), their
    ``super()`` calls reach this transport, so whatever upstream sends goes through the worker's own
    channel. The subclass says which message is a worker's task result (:meth:`_is_task_result`).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._channels = ResultChannels(is_task_result=self._is_task_result)

    @staticmethod
    def _is_task_result(obj: object) -> bool:
        raise NotImplementedError("FinalQueue says which message is a task result")

    def put(self, obj: object) -> None:
        """In a worker, a frame on its own pipe; in the controller, its own queue.

        SIGALRM is blocked for the write: a task_timeout or timeout alarm raising mid-frame would
        tear the frame; the alarm raises right after it instead (:func:`alarm.critical_section`).
        """
        with alarm.critical_section():
            self._channels.put(obj)

    def notify_channels(self, obj: object) -> None:
        """A message for the channels themselves (a :class:`limit.LimitNotice`), past any put()
        override of the subclass: the watchdog reads it, the strategy never sees it."""
        WorkerChannelsQueue.put(self, obj)

    def get(self) -> object:
        """Next item from any worker, or a :class:`WorkerLost`; raises queue.Empty after a short
        wait, so the watchdog runs on every call."""
        return self._channels.get()

    def empty(self) -> bool:
        return False

    def close(self) -> None:
        self._channels.close()
        super().close()  # type: ignore[misc]

    def open_worker_channel(self) -> int:
        """Before forking a worker: create its own result pipe; returns the token for the calls below."""
        return self._channels.open_channel()

    def worker_started(
        self,
        channel: int,
        worker: object,
        host_name: str,
        task_uuid: str,
        worker_id: int,
        task_timeout: object,
    ) -> None:
        """Right after the fork: drop our write end of the channel and supervise the worker."""
        self._channels.worker_started(channel, worker, host_name, task_uuid, worker_id, task_timeout)

    def bind_worker_channel(self, channel: int) -> None:
        """In the forked worker, first thing: write to this channel only, and hold none of the others."""
        self._channels.bind_writer(channel)

    def supervises(self, worker: object) -> bool:
        """Whether the death of this worker comes as a failed result for its host (a WorkerLost)."""
        return self._channels.supervises(worker)


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
