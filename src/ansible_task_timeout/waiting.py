"""The controller's main thread sleeps until something it waits for happens, instead of polling.

Upstream's strategy waits for a free worker slot by calling ``is_alive()`` on every worker in a
loop with 0.1 ms sleeps (``StrategyBase._queue_task``), and for results with 1 ms sleeps
(``StrategyBase._wait_on_pending_results``). With many forks on a small controller, those loops
take CPU that the workers need: a healthy host's task then runs late, and under a deadline it can
time out for lack of CPU alone. The hooks in the strategy call :class:`Wakeup` instead. Its waits
end when

* a worker exits (its process sentinel; the slot wait),
* the results thread queues a result (:class:`NotifyingDeque`, the strategy's ``_results``),
* a worker's request to the controller arrives (:class:`NotifyingQueue`, the strategy's
  ``_rpc_queue``: ``add_host`` and ``add_group`` run in the main thread while the worker waits),

or after ``bounds.CONTROLLER_WAIT`` at the latest. The strategy's loops re-check their own
conditions after every wait, exactly as after upstream's sleeps, so a wake-up only decides *when*
the main thread looks again, never what it finds: ordering and results are upstream's.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import queue
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any

from ansible_task_timeout import bounds


class _Signal:
    """A self-pipe another thread writes a byte to; the main thread waits on its read end."""

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)
        self.close = weakref.finalize(self, _close, self.fd, self._write_fd)
        """Close both ends, once (also when the signal is garbage-collected)."""

    def notify(self) -> None:
        if not self.close.alive:  # never write to a closed fd number: it may belong to a new file by now
            return
        # a full pipe already holds a wake-up nobody has consumed: nothing is lost by dropping this one
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write_fd, b"\0")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.fd, 4096):
                pass


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Wakeup:
    """What the strategy's main thread waits on (one per strategy object, made in its constructor).

    Each wait consumes the wake-ups it saw. A wake-up written after the caller last looked at its
    condition stays in the pipe until the next wait, which then returns at once: none is lost.
    """

    def __init__(self) -> None:
        self._results = _Signal()
        self._requests = _Signal()

    def close(self) -> None:
        """At the strategy's cleanup, when its results thread has ended: close the pipes (a wake-up
        after this is dropped). Each strategy object has its own, and a run may play many plays."""
        self._results.close()
        self._requests.close()

    def results_queue(self) -> NotifyingDeque:
        """The strategy's ``_results``: appending a result wakes :meth:`wait_for_results`."""
        return NotifyingDeque(self._results)

    def request_queue(self) -> NotifyingQueue:
        """The strategy's ``_rpc_queue``: a worker's request wakes both waits."""
        return NotifyingQueue(self._requests)

    def wait_for_slot(self, workers: Iterable[Any], timeout: float | None = None) -> None:
        """Instead of upstream's 0.1 ms sleep when every slot in `workers` was busy: sleep until one
        of them exits, a worker's request arrives or `timeout` (default ``bounds.CONTROLLER_WAIT``).

        Returns at once if a slot is free by now (None, or a process already closed). A worker's
        sentinel is a pipe it holds until it exits, so only a child that inherited it without
        exec'ing can delay the wake-up, and then by the timeout at most: the caller's own
        ``is_alive()`` stays the truth.
        """
        sentinels = []
        for worker in workers:
            if worker is None:
                return
            try:
                sentinels.append(worker.sentinel)
            except ValueError:  # closed by the strategy: the slot is free
                return
        self._wait(sentinels, timeout)

    def wait_for_results(self, timeout: float | None = None) -> None:
        """Instead of upstream's 1 ms sleep while results are pending: sleep until the results thread
        queues a result, a worker's request arrives or `timeout` (default ``bounds.CONTROLLER_WAIT``)."""
        self._wait([self._results.fd], timeout)

    def _wait(self, fds: list[int], timeout: float | None) -> None:
        ready = multiprocessing.connection.wait(
            [self._requests.fd, *fds], bounds.CONTROLLER_WAIT if timeout is None else timeout
        )
        for signal in (self._requests, self._results):
            if signal.fd in ready:
                signal.clear()


class NotifyingDeque(deque):  # type: ignore[type-arg]
    """A deque whose :meth:`append` wakes the waiting main thread (the results thread appends)."""

    def __init__(self, signal: _Signal) -> None:
        super().__init__()
        self._signal = signal

    def append(self, item: object) -> None:
        super().append(item)
        self._signal.notify()


class NotifyingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue.Queue whose :meth:`put` wakes the waiting main thread."""

    def __init__(self, signal: _Signal) -> None:
        super().__init__()
        self._signal = signal

    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._signal.notify()
