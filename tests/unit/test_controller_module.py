"""ansible_task_timeout_controller without ansible: real forked writers, real pipes, real kills."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import ansible_task_timeout_controller as ctl  # noqa: E402


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
    monkeypatch.setattr(ctl, "ensure_run_guard", lambda: "test")
    monkeypatch.setattr(ctl, "set_parent_death_signal", lambda *_args: None)


def fork_worker(channels: ctl.ResultChannels, body: Callable[[], None], limit: int = 0) -> Proc:
    token = channels.open_channel()
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            channels.bind_writer(token)
            body()
        finally:
            os._exit(0)
    proc = Proc(pid)
    channels.worker_started(token, proc, f"host{pid}", f"task{pid}", 0, limit)
    return proc


def collect(channels: ctl.ResultChannels, count: int, timeout: float) -> list[object]:
    items: list[object] = []
    end = time.monotonic() + timeout
    while len(items) < count and time.monotonic() < end:
        with contextlib.suppress(queue.Empty):
            items.append(channels.get(timeout=0.2))
    return items


def test_big_results_from_many_workers_arrive_intact() -> None:
    channels = ctl.ResultChannels(is_task_result=lambda obj: isinstance(obj, Result))
    payloads = {i: os.urandom(300 * 1024) for i in range(4)}
    for i in range(4):
        fork_worker(channels, lambda i=i: channels.send(Result(payloads[i])))
    items = collect(channels, 4, 20)
    assert sorted(item.payload for item in items) == sorted(payloads.values())  # type: ignore[attr-defined]
    channels.close()


def test_a_worker_killed_mid_frame_costs_only_its_own_result() -> None:
    channels = ctl.ResultChannels(is_task_result=lambda obj: isinstance(obj, Result))

    def torn() -> None:  # header announces 1 MiB, half is written, then the worker is killed
        assert channels._writer_fd is not None
        os.write(channels._writer_fd, ctl._HEADER.pack(1 << 20) + b"x" * 4096)
        os.kill(os.getpid(), signal.SIGKILL)

    good = os.urandom(200 * 1024)
    victim = fork_worker(channels, torn)
    fork_worker(channels, lambda: channels.send(Result(good)))
    items = collect(channels, 2, 20)
    lost = [item for item in items if isinstance(item, ctl.WorkerLost)]
    results = [item for item in items if isinstance(item, Result)]
    assert [r.payload for r in results] == [good]
    assert len(lost) == 1 and lost[0].pid == victim.pid and not lost[0].timed_out
    assert "SIGKILL" in lost[0].reason and "middle of a result frame" in lost[0].reason
    assert lost[0].result()["failed"] is True


def test_watchdog_kills_a_silent_worker_at_deadline_plus_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctl, "WATCHDOG_GRACE", 0.5)
    channels = ctl.ResultChannels(is_task_result=lambda obj: isinstance(obj, Result))

    def stuck() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM})
        time.sleep(600)

    start = time.monotonic()
    victim = fork_worker(channels, stuck, limit=1)
    items = collect(channels, 1, 20)
    elapsed = time.monotonic() - start
    assert len(items) == 1 and isinstance(items[0], ctl.WorkerLost)
    lost = items[0]
    assert lost.timed_out and lost.result()["task_timeout"] is True
    assert lost.result()["msg"] == "Task execution timed out, limit is: 1 second(s)"
    assert 1.5 <= elapsed < 1.5 + 5
    end = time.monotonic() + 5
    while victim.exitcode is None and time.monotonic() < end:
        time.sleep(0.02)
    assert victim.exitcode == -signal.SIGKILL


def test_controller_items_and_close() -> None:
    channels = ctl.ResultChannels(is_task_result=lambda obj: False)
    channels.put_local("sentinel")
    assert channels.get(timeout=1) == "sentinel"
    with pytest.raises(queue.Empty):
        channels.get(timeout=0.05)
    channels.close()
    with pytest.raises(EOFError):
        channels.get(timeout=0.05)
