"""ansible_task_timeout.guard with stand-in controllers: the normal end, the interrupted end, zombies."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from standins import Controller, alive, pid_ended

from ansible_task_timeout import guard, proctree


def test_normal_end_closes_adopted_masters_and_spares_local_jobs(
    controllers: Callable[[str], Controller], tmp_path: Path
) -> None:
    ctrl = controllers("guard")
    (tmp_path / "cp").mkdir()
    socket = tmp_path / "cp" / "m"
    socket.touch()
    master = ctrl.spawn("master", str(socket))
    keep = ctrl.spawn("keep", f"{tmp_path}-keep")
    assert ctrl.ask("sweep") == "ok"
    assert not alive(master) and not socket.exists()
    assert alive(keep)
    assert pid_ended(ctrl.guardian)  # released, without sweeping
    time.sleep(0.5)
    assert alive(keep)


def test_interrupted_end_ends_every_adopted_process(
    controllers: Callable[[str], Controller], tmp_path: Path
) -> None:
    ctrl = controllers("guard")
    master = ctrl.spawn("master", f"{tmp_path}/cp/m")
    keep = ctrl.spawn("keep", f"{tmp_path}-keep")
    assert ctrl.ask("interrupt") == "ok"
    assert ctrl.ask("sweep") == "ok"
    assert not alive(master) and not alive(keep)


def test_adopted_daemons_are_reaped_not_left_defunct(
    controllers: Callable[[str], Controller], tmp_path: Path
) -> None:
    ctrl = controllers("guard")
    master = ctrl.spawn("master", f"{tmp_path}/cp/m")
    own = psutil.Process(int(ctrl.ask("own")))
    master.kill()
    end = time.monotonic() + 5
    while {master.status(), own.status()} != {psutil.STATUS_ZOMBIE} and time.monotonic() < end:
        time.sleep(0.01)
    assert master.status() == psutil.STATUS_ZOMBIE and master.ppid() == ctrl.pid
    assert own.status() == psutil.STATUS_ZOMBIE
    assert ctrl.ask("reap") == str(master.pid)
    assert not psutil.pid_exists(master.pid)
    assert ctrl.ask("own-wait") == "7"  # the controller's own subprocess kept its exit status
    assert psutil.Process(ctrl.guardian).status() != psutil.STATUS_ZOMBIE  # its own child: untouched


def test_zombie_precheck_sees_an_exited_daemon_without_reaping_it(
    controllers: Callable[[str], Controller], tmp_path: Path
) -> None:
    ctrl = controllers("guard")
    keep = ctrl.spawn("keep", f"{tmp_path}-keep")
    assert ctrl.ask("zombie?") == "False"  # a live child is not waitable
    keep.kill()
    end = time.monotonic() + 5
    while keep.status() != psutil.STATUS_ZOMBIE and time.monotonic() < end:
        time.sleep(0.01)
    assert ctrl.ask("zombie?") == "True"
    assert keep.status() == psutil.STATUS_ZOMBIE  # still there for the scan to reap
    assert ctrl.ask("reap") == str(keep.pid)
    assert ctrl.ask("zombie?") == "False"


def test_a_registered_worker_is_told_from_a_later_process_with_its_pid() -> None:
    worker = subprocess.Popen(["sleep", "60"])
    try:
        registered = proctree.now_ticks()  # what register_worker records, right after the fork
        assert guard.started_by(worker.pid, registered)
        end = time.monotonic() + 5
        while proctree.now_ticks() <= registered and time.monotonic() < end:
            time.sleep(0.001)
        later = subprocess.Popen(["sleep", "60"])  # stands for a process that got a reaped worker's pid
        try:
            assert not guard.started_by(later.pid, registered)
            assert guard.live_workers([(worker.pid, registered), (later.pid, registered)]) == [worker.pid]
        finally:
            later.kill()
            later.wait()
    finally:
        worker.kill()
        worker.wait()
    assert not guard.started_by(worker.pid, registered)


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The guard's warnings, for a guard started afresh in this process (and forgotten after)."""
    said: list[str] = []
    monkeypatch.setattr(guard, "warn", said.append)
    monkeypatch.setattr(guard, "_guard", None)
    monkeypatch.setenv(guard.RUN_ID_ENV, "outer")
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    yield said
    signal.signal(signal.SIGPIPE, old)
    if guard._guard is not None:
        for fd in (guard._guard.write_fd, guard._guard.status_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if guard._guard.guardian is not None:
            guard._guard.guardian.kill()
            guard._guard.guardian.wait()


def _workers_start(until: Callable[[], bool], pid: int, timeout: float = 10) -> None:
    """Register `pid` as workers starting one after the other would, until `until()` holds."""
    end = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < end, "gave up waiting"
        guard.register_worker(pid)
        time.sleep(0.05)


def test_a_guardian_that_cannot_start_is_reported(warnings: list[str]) -> None:
    def no_fork(*_args: object, **_kwargs: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(guard.subprocess, "Popen", no_fork)
        guard.ensure_run_guard()
    assert guard._guard is not None and guard._guard.guardian is None
    guard.register_worker(os.getpid())  # writes to a pipe nobody reads: no second warning
    assert len(warnings) == 1 and "guardian process could not start" in warnings[0], warnings
    assert "Resource temporarily unavailable" in warnings[0]


def test_a_guardian_that_cannot_import_the_package_is_reported_in_one_line(
    warnings: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """python -m ansible_task_timeout.guardian, where psutil is missing: its reason, in one line."""
    (tmp_path / "psutil.py").write_text("raise ImportError('No module named psutil')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the guardian finds this psutil first
    guard.ensure_run_guard()
    _workers_start(lambda: bool(warnings), os.getpid())
    for _ in range(3):
        guard.register_worker(os.getpid())  # the lost guardian is not reported again
    assert warnings == [
        "task_timeout: the run guard's guardian process could not start (ansible_task_timeout: "
        "psutil is not installed (pip install psutil)); if this controller is killed, processes of the run "
        "may outlive it."
    ]


def test_a_guardian_that_starts_is_not_reported(warnings: list[str]) -> None:
    """The real thing: python -s -P -m ansible_task_timeout.guardian finds the package and says so."""
    sleeper = subprocess.Popen(["sleep", "60"])  # the worker it is told about
    try:
        guard.ensure_run_guard()
        the_guard = guard._guard
        assert the_guard is not None and the_guard.guardian is not None
        _workers_start(lambda: the_guard.status_fd is None, sleeper.pid)
        assert warnings == [] and the_guard.guardian.poll() is None
        cmdline = psutil.Process(the_guard.guardian.pid).cmdline()
        assert cmdline[1:5] == ["-s", "-P", "-m", "ansible_task_timeout.guardian"]
        os.write(the_guard.write_fd, b"Q\n")  # a normal end: the guardian leaves without sweeping
        os.close(the_guard.write_fd)
        the_guard.write_fd = -1
        assert the_guard.guardian.wait(timeout=10) == 0
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lost_guardian_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(guard, "warn", warnings.append)
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the guardian is gone: writes fail with EPIPE
    the_guard = guard._Guard("run", os.getpid(), write_fd, None)
    monkeypatch.setattr(guard, "_guard", the_guard)
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        guard.register_worker(os.getpid())
        guard.register_worker(os.getpid())
    finally:
        signal.signal(signal.SIGPIPE, old)
        os.close(write_fd)
    assert len(warnings) == 1 and "guardian" in warnings[0]
