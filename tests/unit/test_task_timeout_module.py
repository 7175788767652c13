"""Unit tests of src/ansible_task_timeout.py with real signals and real processes (no ansible needed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
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


def test_alarm_interrupts_a_blocking_sleep_and_restores_previous_handler() -> None:
    def previous(_s: int, _f: object) -> None:
        raise AssertionError("previous handler must not be called")

    old = signal.signal(signal.SIGALRM, previous)
    try:
        start = time.monotonic()
        with pytest.raises(Boom), att.alarm(0.3, Boom):
            time.sleep(10)
        assert 0.25 < time.monotonic() - start < 2
        assert signal.getsignal(signal.SIGALRM) is previous
    finally:
        signal.signal(signal.SIGALRM, old)


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
    """Control experiment: proves the torture above can fail (the race of W9 is real)."""
    sent, whole, torn = _queue_torture("contextlib.nullcontext()")
    assert torn > 0 or whole < sent


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
        time.sleep(0.5)
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
    time.sleep(0.3)
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


def test_close_control_master_kills_the_daemonised_master_and_removes_socket(tmp_path: Path) -> None:
    control_path = tmp_path / "cp" / "0a1b2c3d4e"
    control_path.parent.mkdir()
    pid = _daemonised_fake_master(control_path)
    assert psutil.Process(pid).ppid() != os.getpid()
    with socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(control_path))
    killed = att.close_control_master(str(control_path), timeout=1)
    assert pid in killed
    assert not control_path.exists()
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "master survived"
        time.sleep(0.05)


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
