"""ansible_task_timeout_controller without ansible: real forked writers, real pipes, real kills."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import ansible_task_timeout_controller as ctl  # noqa: E402

ENSURE_RUN_GUARD = ctl.ensure_run_guard  # the real one: the autouse fixture below replaces it


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
    monkeypatch.setattr(ctl.ansible_task_timeout, "WATCHDOG_GRACE", 0.5)
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


# --------------------------------------------------------------------------- the run guard and ssh masters

SRC = str(Path(__file__).resolve().parents[2] / "src")

# A stand-in for ansible-playbook: starts the run guard (subreaper + guardian) or, with "plain",
# only becomes a subreaper; then obeys one command per stdin line and answers one line.
CONTROLLER = r"""
import os, shutil, subprocess, sys
sys.path.insert(0, SRC)
import ansible_task_timeout, ansible_task_timeout_controller as ctl

if sys.argv[1] == "guard":
    ctl.ensure_run_guard()
    print(ctl._guard.guardian.pid, flush=True)
else:
    ansible_task_timeout.become_subreaper()
    print(0, flush=True)

def daemon(argv0, exe, before=""):
    # OpenSSH's ControlPersist: fork, then daemon() (fork, the middle one exits, setsid); `env -i`
    # because setproctitle() leaves nothing of the run id in the master's /proc environ either
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os.setsid()
            bash = shutil.which("bash")
            script = before + 'exec -a "$1" "$2" 300'
            os.execv("/usr/bin/env", ["env", "-i", bash, "-c", script, "bash", argv0, exe])
        os._exit(0)
    os.waitpid(pid, 0)

for line in sys.stdin:
    cmd, _, arg = line.rstrip("\n").partition(" ")
    if cmd == "master":  # arg: the master's socket path; its executable is called ssh (comm "ssh")
        daemon(f"ssh: {arg} [mux]", SSH)
    elif cmd == "keep":  # a daemonised local job that is not ssh (nohup ... &)
        daemon(arg, shutil.which("sleep"))
    elif cmd == "late-master":  # a daemon that runs a while as bash, then execs into a master in place
        daemon(f"ssh: {arg} [mux]", SSH, "sleep 2; ")
    elif cmd == "interrupt":
        ctl.note_interrupted()
    elif cmd == "sweep":
        ctl.end_of_run_sweep()
    elif cmd == "own":  # the controller's own subprocess, not yet waited for: never to be reaped
        own = subprocess.Popen(["sh", "-c", "exit 7"])
        print(own.pid, flush=True)
        continue
    elif cmd == "own-wait":
        print(own.wait(), flush=True)
        continue
    elif cmd == "zombie?":
        print(ctl._zombie_child(), flush=True)
        continue
    elif cmd == "reap":
        print(" ".join(map(str, ctl.reap_adopted_zombies())), flush=True)
        continue
    print("ok", flush=True)
"""


class Controller:
    def __init__(self, tmp_path: Path, mode: str) -> None:
        ssh = tmp_path / "bin" / "ssh"
        ssh.parent.mkdir(exist_ok=True)
        ssh.symlink_to(shutil.which("sleep") or "/usr/bin/sleep")
        code = re.sub(r"\bSSH\b", repr(str(ssh)), CONTROLLER.replace("SRC", repr(SRC), 1))
        self.popen = subprocess.Popen(
            [sys.executable, "-c", code, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.pid = self.popen.pid
        self.guardian = int(self.ask(""))

    def ask(self, command: str) -> str:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        if command:
            self.popen.stdin.write(command + "\n")
            self.popen.stdin.flush()
        return self.popen.stdout.readline().strip()

    def spawn(self, command: str, argv0: str) -> psutil.Process:
        assert self.ask(f"{command} {argv0}") == "ok"
        title = f"ssh: {argv0} [mux]" if command == "master" else argv0
        return find_by_argv0(title)


def find_by_argv0(title: str, timeout: float = 5.0) -> psutil.Process:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for proc in psutil.process_iter(["cmdline"]):
            if (proc.info["cmdline"] or [""])[0] == title:
                return proc
        time.sleep(0.02)
    raise AssertionError(f"no process {title!r}")


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pid_ended(pid: int, timeout: float = 10) -> bool:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    wait_dead([proc], timeout)
    return not alive(proc)


def wait_dead(procs: list[psutil.Process], timeout: float) -> float:
    start = time.monotonic()
    while any(alive(p) for p in procs) and time.monotonic() - start < timeout:
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def controllers(tmp_path: Path) -> Iterator[Callable[[str], Controller]]:
    """Start stand-in controllers; at teardown kill them and whatever they left under tmp_path."""
    started: list[Controller] = []

    def start(mode: str) -> Controller:
        started.append(Controller(tmp_path, mode))
        return started[-1]

    yield start
    for ctrl in started:
        for pid in (ctrl.pid, ctrl.guardian):
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        ctrl.popen.wait()
    for proc in psutil.process_iter(["cmdline"]):
        if str(tmp_path) in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_mux_master_title_as_psutil_shows_it() -> None:
    # OpenSSH's setproctitle pads the argv+environ area with NULs: psutil gives many empty args
    cmdline = ["ssh: /home/u/.ansible/cp/d0f01bc24b [mux]", "", "", ""]
    assert ctl.ansible_task_timeout.mux_master_path(cmdline) == "/home/u/.ansible/cp/d0f01bc24b"
    assert ctl._mux_socket(cmdline) == {"/home/u/.ansible/cp/d0f01bc24b"}
    assert ctl._is_ssh_cmdline(cmdline)
    assert ctl._is_ssh_cmdline(["/usr/bin/ssh", "-o", "ControlPath=/x/cp/1", "host"])
    assert not ctl._is_ssh_cmdline(["sleep", "300"])


def test_guardian_kills_hidden_mux_masters_when_the_controller_is_sigkilled(
    controllers: Callable[[str], Controller], tmp_path: Path
) -> None:
    ctrl = controllers("guard")
    seen = ctrl.spawn("master", f"{tmp_path}/cp/seen")
    assert seen.ppid() == ctrl.pid  # the controller is its subreaper
    assert os.getsid(seen.pid) == seen.pid and ctl.RUN_ID_ENV not in seen.environ()
    time.sleep(3 * ctl.GUARD_POLL)  # the guardian has listed the controller's tree
    late = ctrl.spawn("master", f"{tmp_path}/cp/late")  # born right before the kill: maybe never listed
    os.kill(ctrl.pid, signal.SIGKILL)
    elapsed = wait_dead([seen, late], 10)
    assert not alive(seen) and not alive(late)
    assert elapsed < ctl.GUARD_POLL + ctl.SWEEP_GRACE + 1.5
    assert pid_ended(ctrl.guardian)  # and the guardian is gone


def test_race_window_master_is_recognised_but_not_another_directory(
    controllers: Callable[[str], Controller], tmp_path: Path
) -> None:
    ctrl = controllers("plain")  # a subreaper without a guardian: the watch is driven by hand
    watch = ctl._RunWatch(ctrl.pid)
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


def test_a_registered_worker_is_told_from_a_later_process_with_its_pid() -> None:
    worker = subprocess.Popen(["sleep", "60"])
    try:
        registered = ctl._now_ticks()  # what register_worker records, right after the fork
        assert ctl._started_by(worker.pid, registered)
        end = time.monotonic() + 5
        while ctl._now_ticks() <= registered and time.monotonic() < end:
            time.sleep(0.001)
        later = subprocess.Popen(["sleep", "60"])  # stands for a process that got a reaped worker's pid
        try:
            assert not ctl._started_by(later.pid, registered)
            assert ctl._live_workers([(worker.pid, registered), (later.pid, registered)]) == [worker.pid]
        finally:
            later.kill()
            later.wait()
    finally:
        worker.kill()
        worker.wait()
    assert not ctl._started_by(worker.pid, registered)


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


def test_guardian_poll_reads_only_what_may_have_changed(
    controllers: Callable[[str], Controller], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctrl = controllers("plain")
    master = ctrl.spawn("master", f"{tmp_path}/cp/m")
    keep = ctrl.spawn("keep", f"{tmp_path}-keep")
    assert {master.pid, keep.pid} <= {child.pid for child in psutil.Process(ctrl.pid).children()}
    stats: list[int] = []
    cmdlines: list[int] = []
    stat, cmdline = ctl._stat, ctl._cmdline
    monkeypatch.setattr(ctl, "_stat", lambda pid: stats.append(pid) or stat(pid))
    monkeypatch.setattr(ctl, "_cmdline", lambda pid: cmdlines.append(pid) or cmdline(pid))
    watch = ctl._RunWatch(ctrl.pid, {keep.pid: ctl._now_ticks()})  # keep stands for a registered worker
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
    watch = ctl._RunWatch(ctrl.pid)
    end = time.monotonic() + 5
    late = None
    while late is None and time.monotonic() < end:  # the daemon, still bash, adopted by the controller
        watch.poll()
        late = next((pid for pid, (_start, comm) in watch.known.items() if comm == b"bash"), None)
    assert late is not None and late not in watch.remembered
    assert find_by_argv0(title).pid == late  # it has exec'd into the master, same pid
    watch.poll()
    assert late in watch.remembered


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_closed_channels_leave_no_descriptor_behind() -> None:
    """One ResultChannels per TaskQueueManager, and ansible-console makes one per command."""
    before = _open_fds()
    for _ in range(200):
        channels = ctl.ResultChannels(is_task_result=lambda obj: False)
        channels.put_local("x")
        assert channels.get(timeout=1) == "x"
        channels.close()
    assert _open_fds() <= before


def test_a_reader_in_get_closes_the_wake_pipe_when_the_channels_close() -> None:
    import threading

    before = _open_fds()
    channels = ctl.ResultChannels(is_task_result=lambda obj: False)
    errors: list[BaseException] = []

    def reader() -> None:
        while True:
            try:
                channels.get(timeout=0.2)
            except queue.Empty:
                continue
            except EOFError as ex:
                errors.append(ex)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    channels.close()
    thread.join(5)
    assert errors and _open_fds() <= before


def test_a_templated_limit_is_learnt_from_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller never templates task_timeout: the worker resolves it and sends the integer."""
    monkeypatch.setattr(ctl.ansible_task_timeout, "WATCHDOG_GRACE", 0.5)
    channels = ctl.ResultChannels(is_task_result=lambda obj: isinstance(obj, Result))

    def resolves_then_hangs() -> None:
        ctl.ansible_task_timeout.announce_limit("{{ 60 | random }}", 1, channels.send)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM})
        time.sleep(600)

    start = time.monotonic()
    fork_worker(channels, resolves_then_hangs, limit="{{ 60 | random }}")  # type: ignore[arg-type]
    items = collect(channels, 1, 20)
    assert len(items) == 1 and isinstance(items[0], ctl.WorkerLost), items  # the notice is not an item
    assert items[0].timed_out and items[0].limit == 1
    assert time.monotonic() - start < 1.5 + 5  # the real limit, not the provisional RESOLVE_LIMIT


def test_a_literal_limit_needs_no_notice() -> None:
    sent: list[object] = []
    ctl.ansible_task_timeout.announce_limit(12, 12, sent.append)
    ctl.ansible_task_timeout.announce_limit("12", 12, sent.append)
    assert sent == []
    ctl.ansible_task_timeout.announce_limit("{{ x }}", 7, sent.append)
    assert sent == [ctl.ansible_task_timeout.LimitNotice(7)]


def test_a_guardian_that_cannot_start_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(ctl.ansible_task_timeout, "warn", warnings.append)
    monkeypatch.setattr(ctl, "_guard", None)
    monkeypatch.setattr(ctl.ansible_task_timeout, "become_subreaper", lambda: False)
    monkeypatch.setenv(ctl.RUN_ID_ENV, "outer")

    def no_fork(*_args: object, **_kwargs: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(ctl.subprocess, "Popen", no_fork)
    ENSURE_RUN_GUARD()
    assert ctl._guard is not None and ctl._guard.guardian is None
    os.close(ctl._guard.write_fd)
    assert len(warnings) == 1 and "guardian process could not start" in warnings[0], warnings


def test_a_lost_guardian_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(ctl.ansible_task_timeout, "warn", warnings.append)
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the guardian is gone: writes fail with EPIPE
    guard = ctl._Guard("run", os.getpid(), write_fd, None)
    monkeypatch.setattr(ctl, "_guard", guard)
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        ctl.register_worker(os.getpid())
        ctl.register_worker(os.getpid())
    finally:
        signal.signal(signal.SIGPIPE, old)
        os.close(write_fd)
    assert len(warnings) == 1 and "guardian" in warnings[0]


def test_a_worker_ended_by_the_interrupt_is_not_reported_as_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    channels = ctl.ResultChannels(is_task_result=lambda obj: isinstance(obj, Result))
    monkeypatch.setattr(ctl, "_interrupted", True)
    fork_worker(channels, lambda: os.kill(os.getpid(), signal.SIGINT))
    items = collect(channels, 1, 20)
    assert len(items) == 1 and isinstance(items[0], ctl.WorkerLost)
    assert items[0].interrupted and not items[0].timed_out
