"""ansible_task_timeout.waiting without ansible: real processes, real threads, real pipes.

Each wait is given a long timeout; a wait that returns long before it was woken by what the test
did. The bounds are wide: they tell a wake-up (milliseconds) from a timeout (seconds).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from ansible_task_timeout import bounds, waiting

LONG = 5.0
"""The timeout each wait is given: far beyond a wake-up, well inside the test's patience."""
WOKEN = 1.0
"""A wait that returns within this was woken, not timed out."""

_ctx = multiprocessing.get_context("fork")


def timed(call: Callable[[], None]) -> float:
    start = time.monotonic()
    call()
    return time.monotonic() - start


def _wait_for_go(go: object) -> None:
    go.wait()  # type: ignore[attr-defined]


@pytest.fixture
def workers() -> Iterator[tuple[list[multiprocessing.Process], object]]:
    """Two real forked workers that run until `go` is set, like a strategy's busy slots."""
    go = _ctx.Event()
    procs = [_ctx.Process(target=_wait_for_go, args=(go,)) for _ in range(2)]
    for proc in procs:
        proc.start()
    yield procs, go
    go.set()
    for proc in procs:
        with contextlib.suppress(ValueError):  # closed by the test
            proc.join(10)


def later(action: Callable[[], None], after_event: threading.Event) -> threading.Thread:
    """Run `action` in another thread once `after_event` is set (the waiter is about to wait)."""

    def run() -> None:
        after_event.wait(10)
        time.sleep(0.2)  # let the main thread enter its wait: a wake-up before it must not be lost either
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_the_slot_wait_ends_when_a_busy_worker_exits(workers) -> None:
    procs, go = workers
    wakeup = waiting.Wakeup()
    started = threading.Event()
    thread = later(go.set, started)  # type: ignore[attr-defined]
    started.set()
    took = timed(lambda: wakeup.wait_for_slot(procs, timeout=LONG))
    thread.join()
    assert took < WOKEN + 0.2
    procs[0].join(5)
    assert not all(p.is_alive() for p in procs)


def test_the_slot_wait_times_out_while_every_worker_is_busy(workers) -> None:
    procs, _go = workers
    wakeup = waiting.Wakeup()
    took = timed(lambda: wakeup.wait_for_slot(procs, timeout=0.5))
    assert 0.45 <= took < 0.5 + WOKEN
    assert all(p.is_alive() for p in procs)


def test_the_slot_wait_does_not_wait_for_a_free_slot(workers) -> None:
    procs, go = workers
    wakeup = waiting.Wakeup()
    assert timed(lambda: wakeup.wait_for_slot([procs[0], None], timeout=LONG)) < WOKEN
    go.set()  # type: ignore[attr-defined]
    procs[1].join(5)
    procs[1].close()  # the strategy closes an exited worker before it reuses the slot
    assert timed(lambda: wakeup.wait_for_slot(procs, timeout=LONG)) < WOKEN


def test_a_result_wakes_the_results_wait_but_not_the_slot_wait(workers) -> None:
    procs, _go = workers
    wakeup = waiting.Wakeup()
    results = wakeup.results_queue()
    results.append("result")
    # a result does not free a slot: the slot wait sleeps on
    assert timed(lambda: wakeup.wait_for_slot(procs, timeout=0.5)) >= 0.45
    # the result appended before the wait is not lost: the results wait returns at once
    assert timed(lambda: wakeup.wait_for_results(timeout=LONG)) < WOKEN
    assert list(results) == ["result"]
    # and the wake-up was consumed: the next wait sleeps until its timeout
    assert timed(lambda: wakeup.wait_for_results(timeout=0.5)) >= 0.45


def test_a_result_from_another_thread_wakes_the_results_wait() -> None:
    wakeup = waiting.Wakeup()
    results = wakeup.results_queue()
    started = threading.Event()
    thread = later(lambda: results.append("result"), started)
    started.set()
    took = timed(lambda: wakeup.wait_for_results(timeout=LONG))
    thread.join()
    assert took < WOKEN + 0.2
    assert results.popleft() == "result"


def test_a_worker_request_wakes_both_waits(workers) -> None:
    procs, _go = workers
    wakeup = waiting.Wakeup()
    requests = wakeup.request_queue()
    waits = (lambda: wakeup.wait_for_slot(procs, timeout=LONG), lambda: wakeup.wait_for_results(timeout=LONG))
    for wait in waits:
        started = threading.Event()
        thread = later(lambda: requests.put("add_host"), started)
        started.set()
        took = timed(wait)
        thread.join()
        assert took < WOKEN + 0.2
        assert requests.get_nowait() == "add_host"


def test_the_default_timeout_is_the_controller_wait(workers, monkeypatch: pytest.MonkeyPatch) -> None:
    procs, _go = workers
    monkeypatch.setattr(bounds, "CONTROLLER_WAIT", 0.3)
    wakeup = waiting.Wakeup()
    assert 0.25 <= timed(lambda: wakeup.wait_for_slot(procs)) < 0.3 + WOKEN
    assert 0.25 <= timed(wakeup.wait_for_results) < 0.3 + WOKEN


def test_many_results_never_block_the_thread_that_appends() -> None:
    """The results thread must never block on a wake-up nobody reads: once the pipe is full, a
    wake-up is pending anyway and the next is dropped."""
    wakeup = waiting.Wakeup()
    results = wakeup.results_queue()
    done = threading.Event()

    def flood() -> None:
        for i in range(200_000):  # far more than a pipe holds
            results.append(i)
        done.set()

    thread = threading.Thread(target=flood)
    thread.start()
    assert done.wait(60)
    thread.join()
    assert len(results) == 200_000
    assert timed(lambda: wakeup.wait_for_results(timeout=LONG)) < WOKEN


def test_a_wake_up_after_close_writes_to_no_file() -> None:
    """The strategy closes its pipes at cleanup; their fd numbers are then free for new files."""
    wakeup = waiting.Wakeup()
    results, requests = wakeup.results_queue(), wakeup.request_queue()
    wakeup.close()
    wakeup.close()  # once only: a second close would close somebody else's fds
    read_fd, write_fd = os.pipe()  # most likely the numbers just freed
    try:
        os.set_blocking(read_fd, False)
        results.append("late")
        requests.put("late")
        with pytest.raises(BlockingIOError):
            os.read(read_fd, 1)
    finally:
        os.close(read_fd)
        os.close(write_fd)
