"""Unit tests of src/ansible_task_timeout.py with real signals and real processes (no ansible needed)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
sys.path.insert(0, str(SRC))

import ansible_task_timeout as att  # noqa: E402


class Boom(BaseException):
    """What the test alarms raise."""


@pytest.fixture(autouse=True)
def _no_alarm_left(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test must leave no timer armed and no scope open.

    The pytest process itself must not become a subreaper (tests that need one run a child).
    """
    monkeypatch.setattr(att, "become_subreaper", lambda: False)
    yield
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert not att.limit_in_force()


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "value, expected", [(0, 0), (5, 5), ("7", 7), (" 9 ", 9), (att.MAX_TASK_TIMEOUT, 31536000)]
)
def test_validate_limit_accepts_whole_seconds(value: object, expected: int) -> None:
    assert att.validate_limit(value) == expected


@pytest.mark.parametrize(
    "value", [-1, "-1", "abc", 2.5, 2.0, "1.5", True, None, [3], att.MAX_TASK_TIMEOUT + 1, 100_000_000, ""]
)
def test_validate_limit_refuses_bad_values_naming_keyword_and_value(value: object) -> None:
    with pytest.raises(att.TaskTimeoutValueError) as info:
        att.validate_limit(value)
    assert "task_timeout" in str(info.value)
    assert repr(value) in str(info.value)


def test_resolve_limit_templates_strings_and_reports_undefined() -> None:
    assert att.resolve_limit("{{ x }}", lambda raw: "12") == 12
    assert att.resolve_limit(4, lambda raw: pytest.fail("ints are not templated")) == 4

    def undefined(raw: object) -> object:
        raise NameError("'nope' is undefined")

    with pytest.raises(
        att.TaskTimeoutValueError, match=r"task_timeout: '\{\{ nope \}\}'.*'nope' is undefined"
    ):
        att.resolve_limit("{{ nope }}", undefined)


def test_timed_out_result_shape() -> None:
    assert att.timed_out_result(3) == {
        "failed": True,
        "changed": False,
        "task_timeout": True,
        "msg": "Task execution timed out, limit is: 3 second(s)",
        "timedout": {"period": 3},
    }


# --------------------------------------------------------------------------- the alarm


def test_alarm_interrupts_a_blocking_sleep_and_leaves_sig_dfl() -> None:
    start = time.monotonic()
    with pytest.raises(Boom), att.alarm(0.3, Boom):
        time.sleep(10)
    assert 0.25 < time.monotonic() - start < 2
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL


def test_alarm_refuses_a_foreign_handler_or_timer_like_upstream() -> None:
    """Upstream's alarm_timeout never replaces someone else's alarm: neither does ours.

    What upstream's test_alarm_timeout_bad_state checks, but for nesting: our own scopes nest
    (the whole-task deadline is armed around upstream's per-attempt timeout), see docs/design.md.
    """

    def foreign(_s: int, _f: object) -> None:
        raise AssertionError("the foreign handler must not be called")

    old = signal.signal(signal.SIGALRM, foreign)
    try:
        with pytest.raises(RuntimeError, match="existing alarm handler"), att.alarm(1, Boom):
            pytest.fail("must not run")  # pragma: no cover
        assert signal.getsignal(signal.SIGALRM) is foreign
    finally:
        signal.signal(signal.SIGALRM, old)
    signal.setitimer(signal.ITIMER_REAL, 1000)
    try:
        with pytest.raises(RuntimeError, match="existing alarm was set"), att.alarm(1, Boom):
            pytest.fail("must not run")  # pragma: no cover
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 990  # left as it was
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    ran_inner = False
    with att.alarm(5, Boom), att.alarm(5, Boom):
        ran_inner = True
    assert ran_inner


def test_alarm_zero_is_off() -> None:
    with att.alarm(0, Boom):
        assert not att.limit_in_force()


def test_outer_deadline_wins_over_inner_timeout() -> None:
    with (
        pytest.raises(att.TaskDeadlineExceeded) as info,
        att.task_deadline(1, started=time.monotonic() - 0.7),
        att.alarm(5, Boom),
    ):
        time.sleep(10)
    assert info.value.limit == 1
    assert str(info.value) == "Task execution timed out, limit is: 1 second(s)"


def test_inner_timeout_fires_and_outer_stays_armed() -> None:
    with att.alarm(5, lambda: att.TaskDeadlineExceeded(5)):
        with pytest.raises(Boom), att.alarm(0.2, Boom):
            time.sleep(10)
        remaining, _interval = signal.getitimer(signal.ITIMER_REAL)
        assert 3.5 < remaining <= 5


def test_expired_deadline_refires_during_unwinding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A finally block that hangs after expiry (remote cleanup on a frozen host) is interrupted again."""
    monkeypatch.setattr(att, "UNWIND_GRACE", 0.3)
    start = time.monotonic()
    with pytest.raises(att.TaskDeadlineExceeded), att.task_deadline(1, started=time.monotonic() - 0.8):
        try:
            time.sleep(10)
        finally:
            time.sleep(10)  # the hanging cleanup
    assert time.monotonic() - start < 2


def test_critical_section_defers_the_alarm_until_the_write_is_done() -> None:
    written: list[str] = []
    start = time.monotonic()
    with pytest.raises(Boom), att.alarm(0.1, Boom):
        with att.critical_section():
            time.sleep(0.4)  # SIGALRM is blocked: not interrupted
            written.append("frame")
        pytest.fail("must raise when the section ends")
    assert written == ["frame"]
    assert time.monotonic() - start >= 0.4


def test_alarm_pending_on_entry_to_a_section_is_raised_after_it_and_never_left_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CPython's pthread_sigmask() runs a pending Python handler inside the call, after the mask
    changed. Here the deadline's real SIGALRM is made pending on purpose, then its handler runs
    inside the section's pthread_sigmask exactly as CPython would run it: the alarm must wait for
    the end of the section, and SIGALRM must not stay blocked."""
    real = signal.pthread_sigmask
    handler_ran = []

    def sigmask_running_the_pending_handler(how: int, mask: object) -> object:
        old = real(how, mask)  # type: ignore[arg-type]
        if how == signal.SIG_BLOCK and not handler_ran:
            handler_ran.append(True)
            signal.getsignal(signal.SIGALRM)(signal.SIGALRM, None)  # type: ignore[operator]
        return old

    written: list[str] = []
    real(signal.SIG_BLOCK, {signal.SIGALRM})  # hold the deadline's signal back until we take it
    try:
        with pytest.raises(att.TaskDeadlineExceeded), att.task_deadline(1, started=time.monotonic() - 2):
            end = time.monotonic() + 5
            while signal.SIGALRM not in signal.sigpending():  # the expired deadline's signal
                assert time.monotonic() < end, "the deadline's SIGALRM never came"
            signal.sigtimedwait([signal.SIGALRM], 0)  # taken: from here it is pending in Python only
            real(signal.SIG_UNBLOCK, {signal.SIGALRM})
            monkeypatch.setattr(signal, "pthread_sigmask", sigmask_running_the_pending_handler)
            with att.critical_section():
                written.append("frame")
    finally:
        monkeypatch.setattr(signal, "pthread_sigmask", real)
        blocked = signal.SIGALRM in real(signal.SIG_BLOCK, set())
        real(signal.SIG_UNBLOCK, {signal.SIGALRM})
    assert handler_ran
    assert not blocked, "SIGALRM was left blocked: the deadline is lost for the rest of the worker"
    assert written == ["frame"], "the alarm was raised on entry to the section, not after it"


def test_a_section_in_another_thread_does_not_defer_the_main_threads_alarm() -> None:
    """The handler runs in the main thread; only the main thread's own sections may defer it."""
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with att.critical_section():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert inside.wait(5)
        start = time.monotonic()
        with pytest.raises(Boom), att.alarm(0.2, Boom):
            release.wait(5)
        assert time.monotonic() - start < 2, "the other thread's section deferred the alarm"
        assert not release.is_set()
    finally:
        release.set()
        thread.join(5)


def _queue_torture(guard: str) -> tuple[int, int, int]:
    """Put 1 MiB frames on a multiprocessing queue while alarms fire; return (sent, whole, torn)."""
    code = textwrap.dedent(
        f"""
        import contextlib, sys, threading, time, multiprocessing
        sys.path.insert(0, {str(SRC)!r})
        import ansible_task_timeout as att
        class Boom(BaseException): pass
        q = multiprocessing.get_context("fork").SimpleQueue()
        payload = b"x" * (1024 * 1024)
        counts = dict(whole=0, torn=0)
        def drain():
            while True:
                try:
                    ok = q.get() == payload
                except Exception:
                    ok = False
                counts["whole" if ok else "torn"] += 1
        threading.Thread(target=drain, daemon=True).start()
        sent = 0
        for i in range(60):
            try:
                with att.alarm(0.0003 * (i % 9 + 1), Boom):
                    while True:
                        with {guard}:
                            q.put(payload)
                            sent += 1
            except Boom:
                pass
        time.sleep(1)
        print(sent, counts["whole"], counts["torn"])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    sent, whole, torn = map(int, out.stdout.split())
    return sent, whole, torn


def test_critical_section_keeps_queue_frames_whole() -> None:
    """Large multiprocessing frames are written in two syscalls (W9); none may be torn by the alarm."""
    sent, whole, torn = _queue_torture("att.critical_section()")
    assert sent > 0
    assert (whole, torn) == (sent, 0)


def test_queue_frames_do_get_torn_without_critical_section() -> None:
    """Control experiment: proves the torture above can fail (the race of W9 is real).

    The race depends on where the alarms land, and on a loaded machine one round can miss it:
    up to five rounds, the first that tears a frame proves it.
    """
    rounds = []
    for _ in range(5):
        sent, whole, torn = _queue_torture("contextlib.nullcontext()")
        rounds.append((sent, whole, torn))
        if torn > 0 or whole < sent:
            return
    pytest.fail(f"no frame was torn without the critical section in 5 rounds: {rounds}")


def test_alarm_expiring_at_exit_never_reaches_sig_dfl() -> None:
    """W10: disarming races the timer; a stray SIGALRM with SIG_DFL restored would kill the worker."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(SRC)!r})
        import ansible_task_timeout as att
        class Boom(BaseException): pass
        fired = 0
        for i in range(3000):
            try:
                with att.alarm(0.00002 * (i % 50 + 1), Boom):
                    sum(range(300))
            except Boom:
                fired += 1
        print(fired)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr)  # -14 would be death by SIGALRM


# --------------------------------------------------------------------------- processes


def test_kill_process_tree_kills_and_reaps_a_real_tree() -> None:
    """A worker-like process runs `sh -c 'sleep 300 & sleep 300'` and then kills its own tree."""
    code = textwrap.dedent(
        f"""
        import json, subprocess, sys, time
        sys.path.insert(0, {str(SRC)!r})
        import ansible_task_timeout as att, psutil
        assert att.become_subreaper()
        subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"])
        end = time.monotonic() + 10
        while sum(p.name() == "sleep" for p in psutil.Process().children(recursive=True)) < 2:
            assert time.monotonic() < end, "the tree never formed"
            time.sleep(0.01)
        before = [p.pid for p in psutil.Process().children(recursive=True)]
        start = time.monotonic()
        killed = att.kill_process_tree()
        left = [(p.pid, p.status()) for p in psutil.Process().children(recursive=True)]
        print(json.dumps(dict(before=before, killed=killed, left=left, took=time.monotonic() - start)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads(out.stdout)
    assert len(report["before"]) == 3  # sh, sleep &, sleep
    assert set(report["before"]) <= set(report["killed"])
    assert report["left"] == []  # nothing alive, nothing <defunct>: reaped
    assert report["took"] < att.KILL_GRACE
    for pid in report["before"]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).cmdline()[:1] != ["sleep"]


def test_kill_process_tree_escalates_to_sigkill() -> None:
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300 & trap '' TERM; wait"])
    end = time.monotonic() + 10
    while not any(p.name() == "sleep" for p in psutil.Process(proc.pid).children()):  # traps are set
        assert time.monotonic() < end, "the tree never formed"
        time.sleep(0.01)
    kids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    start = time.monotonic()
    att.kill_process_tree(proc.pid, include_root=True, grace=0.5)
    took = time.monotonic() - start
    assert 0.5 <= took < 3  # SIGTERM was ignored, SIGKILL came after the grace
    assert not psutil.pid_exists(proc.pid)  # dead and reaped (by kill_process_tree's waitpid)
    for pid in kids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# --------------------------------------------------------------------------- ssh ControlPersist


def test_control_paths_from_cmdline() -> None:
    args = ["ssh", "-C", "-o", 'ControlPath="/root/.ansible/cp/abc123"', "-o", "ControlPath=/tmp/x y"]
    assert att.control_paths_from_cmdline(args) == {"/root/.ansible/cp/abc123", "/tmp/x"}


def test_control_path_of_connection_expands_directory(tmp_path: Path) -> None:
    class Conn:
        control_path = "%(directory)s/0123456789"
        control_path_dir = str(tmp_path)

    assert att.control_path_of_connection(Conn()) == f"{tmp_path}/0123456789"
    assert att.control_path_of_connection(object()) is None


def _daemonised_fake_master(control_path: Path) -> int:
    """A process like OpenSSH's mux master: own session, not our child, proctitle `ssh: <cp> [mux]`."""
    serve = (
        "import socket, time, os; s = socket.socket(socket.AF_UNIX); "
        f"s.bind({str(control_path)!r}); s.listen(); time.sleep(300)"
    )
    script = f'exec -a "ssh: {control_path} [mux]" {sys.executable} -c "{serve}"'
    launcher = subprocess.run(
        ["setsid", "-f", "bash", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=10,
    )
    assert launcher.returncode == 0
    for _ in range(100):
        for proc in psutil.process_iter(["cmdline"]):
            if (
                proc.info["cmdline"]
                and str(control_path) in proc.info["cmdline"][0]
                and control_path.exists()
            ):
                return proc.pid
        time.sleep(0.05)
    raise AssertionError("fake master did not start")


def _fake_client(control_path: Path) -> subprocess.Popen[bytes]:
    """A process whose command line names the ControlPath, as another task's live ssh client does."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "-o", f"ControlPath={control_path}", "host"]
    )


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_release_control_master_ends_a_master_nobody_else_uses(tmp_path: Path) -> None:
    control_path = tmp_path / "cp" / "0a1b2c3d4e"
    control_path.parent.mkdir()
    pid = _daemonised_fake_master(control_path)
    assert psutil.Process(pid).ppid() != os.getpid()
    with socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(control_path))
    killed = att.release_control_master(str(control_path), timeout=0.5)
    assert pid in killed
    assert not control_path.exists()
    deadline = time.monotonic() + 5
    while not _gone(pid):
        assert time.monotonic() < deadline, "master survived"
        time.sleep(0.05)


def test_release_control_master_spares_a_master_that_serves_another_task(tmp_path: Path) -> None:
    """One ControlPath, several hosts' sessions (delegate_to one host): the others' master stays."""
    control_path = tmp_path / "cp" / "5f6e7d8c9b"
    control_path.parent.mkdir()
    pid = _daemonised_fake_master(control_path)
    client = _fake_client(control_path)
    try:
        deadline = time.monotonic() + 5
        while not att.control_path_clients(str(control_path)):
            assert time.monotonic() < deadline, "the fake client never showed"
            time.sleep(0.02)
        assert att.release_control_master(str(control_path), timeout=0.5) == []
        assert not _gone(pid), "the master of another live task was killed"
        assert client.poll() is None, "another task's ssh client was killed"
    finally:
        client.kill()
        client.wait()
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def test_mux_master_titles() -> None:
    assert (
        att.mux_master_path(["ssh: /h/.ansible/cp/d0f01bc24b [mux]", "", ""]) == "/h/.ansible/cp/d0f01bc24b"
    )
    assert att.mux_master_path(["ssh: [stopped mux]"]) is None
    assert att.is_mux_master(["ssh: [stopped mux]"]) and att.is_mux_master(["ssh: /x [mux]"])
    assert not att.is_mux_master(["/usr/bin/ssh", "-o", "ControlPath=/x", "host"])


def test_a_timed_out_worker_spares_the_master_it_started(tmp_path: Path) -> None:
    """A worker is a subreaper: the master it started is its child. Its timeout kills its own ssh
    client (and the rest of its tree) but leaves the master to a live session of another task."""
    control_path = tmp_path / "cp" / "1122334455"
    control_path.parent.mkdir()
    code = textwrap.dedent(
        f"""
        import json, subprocess, sys, time
        sys.path.insert(0, {str(SRC)!r})
        import ansible_task_timeout as att, psutil
        assert att.become_subreaper()
        serve = ("import socket, time; s = socket.socket(socket.AF_UNIX); "
                 "s.bind({str(control_path)!r}); s.listen(); time.sleep(300)")
        # like OpenSSH's daemonised master: orphaned, so adopted by this subreaper
        subprocess.run(["setsid", "-f", "bash", "-c",
                        'exec -a "ssh: {control_path} [mux]" ' + sys.executable + ' -c "' + serve + '"'],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                                "-o", "ControlPath={control_path}", "host"])
        end = time.monotonic() + 5
        while not any(att.is_mux_master(p.cmdline()) for p in psutil.Process().children()):
            assert time.monotonic() < end
            time.sleep(0.02)
        master = next(p.pid for p in psutil.Process().children() if att.is_mux_master(p.cmdline()))
        other = int(sys.stdin.readline())
        att.reap_after_timeout(None)
        print(json.dumps(dict(master=master, own=own.pid, own_alive=own.poll() is None,
                              master_alive=psutil.Process(master).status() != psutil.STATUS_ZOMBIE)))
        """
    )
    other = _fake_client(control_path)  # another task's session through the same master
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], input=f"{other.pid}\n", capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        import json

        report = json.loads(out.stdout)
        assert not report["own_alive"], "the worker's own ssh client survived its timeout"
        assert report["master_alive"], "the shared master was killed by one task's timeout"
        assert other.poll() is None, "another task's ssh client was killed"
    finally:
        other.kill()
        other.wait()
        for proc in psutil.process_iter(["cmdline"]):
            if str(control_path) in " ".join(proc.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def test_reap_after_timeout_keeps_to_its_budget() -> None:
    """Processes that ignore SIGTERM and keep forking: the reap ends within REAP_BUDGET anyway."""
    code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        sys.path.insert(0, {str(SRC)!r})
        import ansible_task_timeout as att, psutil
        assert att.become_subreaper()
        spawner = "trap '' TERM; while true; do (trap '' TERM; sleep 300) & sleep 0.05; done"
        subprocess.Popen(["bash", "-c", spawner])
        end = time.monotonic() + 10
        while not any(p.name() == "sleep" for p in psutil.Process().children(recursive=True)):
            assert time.monotonic() < end, "the spawner never forked"
            time.sleep(0.01)
        start = time.monotonic()
        att.reap_after_timeout(None)
        print(time.monotonic() - start)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) <= att.REAP_BUDGET + 0.5


def test_the_bounds_are_derived_from_each_other() -> None:
    """The worker's own timeout path is budgeted to end before the watchdog steps in."""
    assert att.UNWIND_GRACE + att.REAP_BUDGET + att.SEND_MARGIN == att.WATCHDOG_GRACE
    assert att.UNWIND_GRACE + att.REAP_BUDGET < att.WATCHDOG_GRACE
    assert 2 * att.KILL_GRACE <= att.REAP_BUDGET and 3 * att.MASTER_EXIT_TIMEOUT <= att.REAP_BUDGET + 0.5
    assert att.RESULT_BOUND == att.WATCHDOG_GRACE + att.RESULTS_POLL + att.WATCHDOG_KILL_WAIT


# --------------------------------------------------------------------------- guarded cleanup


def test_guarded_cleanup_without_any_limit_is_upstream_behaviour() -> None:
    calls: list[str] = []
    att.guarded_cleanup(lambda: calls.append("rm"), None, 0)
    assert calls == ["rm"]


def test_guarded_cleanup_is_bounded_when_a_limit_is_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(att, "CLEANUP_LIMIT", 0.3)
    start = time.monotonic()
    att.guarded_cleanup(lambda: time.sleep(30), None, attempt_timeout=10)
    assert time.monotonic() - start < 3


def test_guarded_cleanup_skips_remote_cleanup_and_kills_tree_after_a_timeout() -> None:
    code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        sys.path.insert(0, {str(SRC)!r})
        import ansible_task_timeout as att, psutil
        class TaskTimeoutError(BaseException): pass
        calls = []
        try:
            with att.attempt_alarm(1, lambda: TaskTimeoutError(1)):
                try:
                    subprocess.run(["sh", "-c", "sleep 300 & sleep 300"])
                finally:
                    att.guarded_cleanup(lambda: calls.append("rm") or time.sleep(300), None, 1)
        except TaskTimeoutError:
            pass
        print(calls, psutil.Process().children(recursive=True))
        """
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] []"
    assert time.monotonic() - start < 1 + att.KILL_GRACE + 3


def test_once_the_deadline_fired_an_inner_alarm_raises_the_deadline_again() -> None:
    """Upstream code that swallows the deadline (an over-broad except) and then hits its own
    connection or attempt timeout: the result is still the task's timeout, not the inner one's."""
    with pytest.raises(att.TaskDeadlineExceeded), att.task_deadline(1, started=time.monotonic() - 0.9):
        with contextlib.suppress(att.TaskDeadlineExceeded):  # swallowed
            time.sleep(10)
        with att.alarm(0.2, Boom):
            time.sleep(10)
