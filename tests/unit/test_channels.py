"""ansible_task_timeout.channels without ansible: real forked writers, real pipes, real kills."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.queues
import os
import queue
import signal
import threading
import time
from collections.abc import Callable

import pytest

from ansible_task_timeout import bounds, channels, guard, limit, proctree


class Proc:
    """The little of multiprocessing.Process the channels use: pid and a non-blocking exitcode."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._code: int | None = None

    @property
    def exitcode(self) -> int | None:
        if self._code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._code = os.waitstatus_to_exitcode(status)
        return self._code


class Result:
    """Stands for WireTaskResult: the item that means 'this worker delivered'."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


@pytest.fixture(autouse=True)
def no_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run guard has its own tests (with ansible-playbook); here only the channels matter."""
    monkeypatch.setattr(guard, "ensure_run_guard", lambda: "test")
    monkeypatch.setattr(proctree, "set_parent_death_signal", lambda *_args: None)


def fork_worker(chans: channels.ResultChannels, body: Callable[[], None], raw_limit: object = 0) -> Proc:
    token = chans.open_channel()
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            chans.bind_writer(token)
            body()
        finally:
            os._exit(0)
    proc = Proc(pid)
    chans.worker_started(token, proc, f"host{pid}", f"task{pid}", 0, raw_limit)
    return proc


def collect(chans: channels.ResultChannels, count: int, timeout: float) -> list[object]:
    items: list[object] = []
    end = time.monotonic() + timeout
    while len(items) < count and time.monotonic() < end:
        with contextlib.suppress(queue.Empty):
            items.append(chans.get(timeout=0.2))
    return items


def test_big_results_from_many_workers_arrive_intact() -> None:
    chans = channels.ResultChannels(is_task_result=lambda obj: isinstance(obj, Result))
    payloads = {i: os.urandom(300 * 1024) for i in range(4)}
    for i in range(4):
        fork_worker(chans, lambda i=i: chans.send(Result(payloads[i])))
    items = collect(chans, 4, 20)
    assert sorted(item.payload for item in items) == sorted(payloads.values())  # type: ignore[attr-defined]
    chans.close()


def test_a_worker_killed_mid_frame_costs_only_its_own_result() -> None:
    chans = channels.ResultChannels(is_task_result=lambda obj: isinstance(obj, Result))

    def torn() -> None:  # header announces 1 MiB, half is written, then the worker is killed
        assert chans._writer_fd is not None
        os.write(chans._writer_fd, channels._HEADER.pack(1 << 20) + b"x" * 4096)
        os.kill(os.getpid(), signal.SIGKILL)

    good = os.urandom(200 * 1024)
    victim = fork_worker(chans, torn)
    fork_worker(chans, lambda: chans.send(Result(good)))
    items = collect(chans, 2, 20)
    lost = [item for item in items if isinstance(item, channels.WorkerLost)]
    results = [item for item in items if isinstance(item, Result)]
    assert [r.payload for r in results] == [good]
    assert len(lost) == 1 and lost[0].pid == victim.pid and not lost[0].timed_out
    assert "SIGKILL" in lost[0].reason and "middle of a result frame" in lost[0].reason
    assert lost[0].result()["failed"] is True


def test_watchdog_kills_a_silent_worker_at_deadline_plus_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bounds, "WATCHDOG_GRACE", 0.5)
    chans = channels.ResultChannels(is_task_result=lambda obj: isinstance(obj, Result))

    def stuck() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM})
        time.sleep(600)

    start = time.monotonic()
    victim = fork_worker(chans, stuck, raw_limit=1)
    items = collect(chans, 1, 20)
    elapsed = time.monotonic() - start
    assert len(items) == 1 and isinstance(items[0], channels.WorkerLost)
    lost = items[0]
    assert lost.timed_out and lost.result()["task_timeout"] is True
    assert lost.result()["msg"] == "Task execution timed out, limit is: 1 second(s)"
    assert 1.5 <= elapsed < 1.5 + 5
    end = time.monotonic() + 5
    while victim.exitcode is None and time.monotonic() < end:
        time.sleep(0.02)
    assert victim.exitcode == -signal.SIGKILL


def test_a_templated_limit_is_learnt_from_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller never templates task_timeout: the worker resolves it and sends the integer."""
    monkeypatch.setattr(bounds, "WATCHDOG_GRACE", 0.5)
    chans = channels.ResultChannels(is_task_result=lambda obj: isinstance(obj, Result))

    def resolves_then_hangs() -> None:
        limit.announce_limit("{{ 60 | random }}", 1, chans.send)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM})
        time.sleep(600)

    start = time.monotonic()
    fork_worker(chans, resolves_then_hangs, raw_limit="{{ 60 | random }}")
    items = collect(chans, 1, 20)
    assert len(items) == 1 and isinstance(items[0], channels.WorkerLost), items  # the notice is not an item
    assert items[0].timed_out and items[0].limit == 1
    assert time.monotonic() - start < 1.5 + 5  # the real limit, not the provisional RESOLVE_LIMIT


def test_a_worker_ended_by_the_interrupt_is_not_reported_as_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    chans = channels.ResultChannels(is_task_result=lambda obj: isinstance(obj, Result))
    monkeypatch.setattr(guard, "_interrupted", True)
    fork_worker(chans, lambda: os.kill(os.getpid(), signal.SIGINT))
    items = collect(chans, 1, 20)
    assert len(items) == 1 and isinstance(items[0], channels.WorkerLost)
    assert items[0].interrupted and not items[0].timed_out


def test_controller_items_and_close() -> None:
    chans = channels.ResultChannels(is_task_result=lambda obj: False)
    chans.put_local("sentinel")
    assert chans.get(timeout=1) == "sentinel"
    with pytest.raises(queue.Empty):
        chans.get(timeout=0.05)
    chans.close()
    with pytest.raises(EOFError):
        chans.get(timeout=0.05)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_closed_channels_leave_no_descriptor_behind() -> None:
    """One ResultChannels per TaskQueueManager, and ansible-console makes one per command."""
    before = _open_fds()
    for _ in range(200):
        chans = channels.ResultChannels(is_task_result=lambda obj: False)
        chans.put_local("x")
        assert chans.get(timeout=1) == "x"
        chans.close()
    assert _open_fds() <= before


def test_a_reader_in_get_closes_the_wake_pipe_when_the_channels_close() -> None:
    before = _open_fds()
    chans = channels.ResultChannels(is_task_result=lambda obj: False)
    errors: list[BaseException] = []

    def reader() -> None:
        while True:
            try:
                chans.get(timeout=0.2)
            except queue.Empty:
                continue
            except EOFError as ex:
                errors.append(ex)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    chans.close()
    thread.join(5)
    assert errors and _open_fds() <= before


def test_the_channels_say_which_workers_they_supervise() -> None:
    """What has_dead_workers asks: a worker whose death the channels report is not 'dead state'."""
    chans = channels.ResultChannels(is_task_result=lambda obj: isinstance(obj, Result))
    proc = fork_worker(chans, lambda: chans.put(Result(b"from the worker")))
    other = Proc(os.getpid())
    assert chans.supervises(proc) and not chans.supervises(other)
    items = collect(chans, 1, 20)
    assert [item.payload for item in items] == [b"from the worker"]  # type: ignore[attr-defined]
    chans.put("from the controller")
    assert chans.get(timeout=1) == "from the controller"
    chans.close()


class _Envelope:
    """Stands for 2.22's FinalQueue envelope: a message and the secrets the worker registered."""

    def __init__(self, message: object, secrets: frozenset[str] | None) -> None:
        self.message, self.secrets = message, secrets


class EnvelopeQueue(channels.WorkerChannelsQueue, multiprocessing.queues.SimpleQueue):
    """A FinalQueue as 2.22 writes it: put()/get() of its own over super()'s transport."""

    def __init__(self) -> None:
        super().__init__(ctx=multiprocessing.get_context("fork"))
        self.registered: list[str] = []

    @staticmethod
    def _is_task_result(obj: object) -> bool:
        return isinstance(obj, _Envelope) and isinstance(obj.message, Result)

    def put(self, obj: object) -> None:
        super().put(_Envelope(obj, frozenset({"s3cret"}) if isinstance(obj, Result) else None))

    def get(self) -> object:
        envelope = super().get()
        if isinstance(envelope, channels.WorkerLost):
            return envelope
        assert isinstance(envelope, _Envelope)
        self.registered.extend(envelope.secrets or ())
        return envelope.message


def fork_queue_worker(q: EnvelopeQueue, body: Callable[[], None], raw_limit: object = 0) -> Proc:
    token = q.open_worker_channel()
    pid = os.fork()
    if pid == 0:
        try:
            q.bind_worker_channel(token)
            body()
        finally:
            os._exit(0)
    proc = Proc(pid)
    q.worker_started(token, proc, f"host{pid}", f"task{pid}", 0, raw_limit)
    return proc


def queue_items(q: EnvelopeQueue, count: int, timeout: float) -> list[object]:
    items: list[object] = []
    end = time.monotonic() + timeout
    while len(items) < count and time.monotonic() < end:
        with contextlib.suppress(queue.Empty):
            items.append(q.get())
    return items


def test_a_subclass_s_own_put_and_get_travel_on_the_worker_s_channel() -> None:
    """What 2.22 sends (an envelope with the worker's secrets) arrives whole, and is a task result."""
    q = EnvelopeQueue()
    proc = fork_queue_worker(q, lambda: q.put(Result(b"done")))
    (item,) = queue_items(q, 1, 10)
    assert isinstance(item, Result) and item.payload == b"done"
    assert q.registered == ["s3cret"]
    assert _wait_exitcode(proc) == 0
    assert not queue_items(q, 1, 1.5), "a worker that delivered its result and exited is no loss"
    q.close()


def test_a_lost_worker_reaches_the_subclass_s_get_as_a_worker_lost() -> None:
    q = EnvelopeQueue()
    fork_queue_worker(q, lambda: os.kill(os.getpid(), signal.SIGKILL))
    (item,) = queue_items(q, 1, 10)
    assert isinstance(item, channels.WorkerLost) and not item.timed_out
    q.close()


def test_notify_channels_bypasses_the_subclass_s_put(monkeypatch: pytest.MonkeyPatch) -> None:
    """A LimitNotice is for the watchdog: never wrapped, never handed to the strategy."""
    monkeypatch.setattr(bounds, "WATCHDOG_GRACE", 0.5)
    q = EnvelopeQueue()

    def worker() -> None:
        q.notify_channels(limit.LimitNotice(1))
        time.sleep(30)

    fork_queue_worker(q, worker, raw_limit="{{ templated }}")
    start = time.monotonic()
    (item,) = queue_items(q, 1, 15)
    assert isinstance(item, channels.WorkerLost) and item.timed_out and item.limit == 1
    assert time.monotonic() - start < 8
    q.close()


def test_put_keeps_sigalrm_out_of_the_write() -> None:
    """SIGALRM is blocked while the frame is written: an alarm due mid-write raises right after it."""
    q = EnvelopeQueue()
    seen: list[bool] = []

    def send(obj: object) -> None:
        seen.append(signal.SIGALRM in signal.pthread_sigmask(signal.SIG_BLOCK, set()))

    q._channels.put = send  # type: ignore[method-assign]
    q.put(Result(b"x"))
    q.notify_channels(limit.LimitNotice(3))
    assert seen == [True, True]
    assert signal.SIGALRM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    q.close()


def _wait_exitcode(proc: Proc, timeout: float = 10) -> int | None:
    end = time.monotonic() + timeout
    while proc.exitcode is None and time.monotonic() < end:
        time.sleep(0.01)
    return proc.exitcode
