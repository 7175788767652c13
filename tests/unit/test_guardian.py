"""ansible_task_timeout.guardian: what it learns while the controller lives, what it sweeps after."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from standins import Controller, alive, find_by_argv0, pid_ended, wait_dead

from ansible_task_timeout import bounds, guard, guardian, proctree


def test_guardian_kills_hidden_mux_masters_when_the_controller_is_sigkilled(
    controllers: Callable[[str], Controller], tmp_path: Path
) -> None:
    ctrl = controllers("guard")
    seen = ctrl.spawn("master", f"{tmp_path}/cp/seen")
    assert seen.ppid() == ctrl.pid  # the controller is its subreaper
    assert os.getsid(seen.pid) == seen.pid and guard.RUN_ID_ENV not in seen.environ()
    time.sleep(3 * bounds.GUARD_POLL)  # the guardian has listed the controller's tree
    late = ctrl.spawn("master", f"{tmp_path}/cp/late")  # born right before the kill: maybe never listed
    os.kill(ctrl.pid, signal.SIGKILL)
    elapsed = wait_dead([seen, late], 10)
    assert not alive(seen) and not alive(late)
    assert elapsed < bounds.GUARD_POLL + bounds.SWEEP_GRACE + 1.5
    assert pid_ended(ctrl.guardian)  # and the guardian is gone


def test_race_window_master_is_recognised_but_not_another_directory(
    controllers: Callable[[str], Controller], tmp_path: Path
) -> None:
    ctrl = controllers("plain")  # a subreaper without a guardian: the watch is driven by hand
    watch = guardian._RunWatch(ctrl.pid)
    seen = ctrl.spawn("master", f"{tmp_path}/cp/seen")
    watch.poll()
    watch.poll()
    assert seen.pid in watch.remembered and f"{tmp_path}/cp" in watch.dirs
    late = ctrl.spawn("master", f"{tmp_path}/cp/late")  # after the last poll: never listed
    stranger = ctrl.spawn("master", f"{tmp_path}/other/x")  # same window, unknown directory
    keep = ctrl.spawn("keep", f"{tmp_path}-keep")
    os.kill(ctrl.pid, signal.SIGKILL)
    ctrl.popen.wait()
    watch.controller_died()
    end = time.monotonic() + 5
    while late.ppid() == ctrl.pid and time.monotonic() < end:
        time.sleep(0.01)  # re-parenting to the next reaper up happens as the controller exits
    assert late.pid not in watch.remembered
    assert watch.belongs(seen.pid) and watch.belongs(late.pid)
    assert not watch.belongs(stranger.pid) and not watch.belongs(keep.pid)
    assert not watch.belongs(os.getpid()) and not watch.belongs(1)


def test_guardian_poll_reads_only_what_may_have_changed(
    controllers: Callable[[str], Controller], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctrl = controllers("plain")
    master = ctrl.spawn("master", f"{tmp_path}/cp/m")
    keep = ctrl.spawn("keep", f"{tmp_path}-keep")
    assert {master.pid, keep.pid} <= {child.pid for child in psutil.Process(ctrl.pid).children()}
    stats: list[int] = []
    cmdlines: list[int] = []
    stat, cmdline = proctree.stat, proctree.cmdline
    monkeypatch.setattr(proctree, "stat", lambda pid: stats.append(pid) or stat(pid))
    monkeypatch.setattr(proctree, "cmdline", lambda pid: cmdlines.append(pid) or cmdline(pid))
    watch = guardian._RunWatch(
        ctrl.pid, {keep.pid: proctree.now_ticks()}
    )  # keep stands for a registered worker
    stats.clear()
    watch.poll()
    assert {master.pid, keep.pid} <= set(stats) and cmdlines == [master.pid]  # keep's comm is sleep
    assert master.pid in watch.remembered and keep.pid not in watch.remembered
    stats.clear()
    watch.poll()
    assert stats == [] and cmdlines == [master.pid]  # a remembered master and a worker are not read again
    assert set(watch.known) >= {master.pid, keep.pid}


def test_guardian_remembers_a_child_that_execs_into_a_master_later(
    controllers: Callable[[str], Controller], tmp_path: Path
) -> None:
    ctrl = controllers("plain")
    title = f"ssh: {tmp_path}/cp/late [mux]"
    assert ctrl.ask(f"late-master {tmp_path}/cp/late") == "ok"
    watch = guardian._RunWatch(ctrl.pid)
    end = time.monotonic() + 5
    late = None
    while late is None and time.monotonic() < end:  # the daemon, still bash, adopted by the controller
        watch.poll()
        late = next((pid for pid, (_start, comm) in watch.known.items() if comm == b"bash"), None)
    assert late is not None and late not in watch.remembered
    assert find_by_argv0(title).pid == late  # it has exec'd into the master, same pid
    watch.poll()
    assert late in watch.remembered
