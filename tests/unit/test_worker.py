"""ansible_task_timeout.worker: the limit resolved once, and a timed-out worker that cleans up alone."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from standins import SRC, fake_client

from ansible_task_timeout import bounds, limit, worker


def test_resolve_limit_templates_strings_and_reports_undefined() -> None:
    assert worker.resolve_limit("{{ x }}", lambda raw: "12") == 12
    assert worker.resolve_limit(4, lambda raw: pytest.fail("ints are not templated")) == 4

    def undefined(raw: object) -> object:
        raise NameError("'nope' is undefined")

    with pytest.raises(
        limit.TaskTimeoutValueError, match=r"task_timeout: '\{\{ nope \}\}'.*'nope' is undefined"
    ):
        worker.resolve_limit("{{ nope }}", undefined)


def test_a_timed_out_worker_spares_the_master_it_started(tmp_path: Path) -> None:
    """A worker is a subreaper: the master it started is its child. Its timeout kills its own ssh
    client (and the rest of its tree) but leaves the master to a live session of another task."""
    control_path = tmp_path / "cp" / "1122334455"
    control_path.parent.mkdir()
    code = textwrap.dedent(
        f"""
        import json, subprocess, sys, time
        sys.path.insert(0, {SRC!r})
        from ansible_task_timeout import proctree, sshmux, worker
        import psutil
        assert proctree.become_subreaper()
        serve = ("import socket, time; s = socket.socket(socket.AF_UNIX); "
                 "s.bind({str(control_path)!r}); s.listen(); time.sleep(300)")
        # like OpenSSH's daemonised master: orphaned, so adopted by this subreaper
        subprocess.run(["setsid", "-f", "bash", "-c",
                        'exec -a "ssh: {control_path} [mux]" ' + sys.executable + ' -c "' + serve + '"'],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                                "-o", "ControlPath={control_path}", "host"])
        end = time.monotonic() + 5
        while not any(sshmux.parse_cmdline(p.cmdline()).master for p in psutil.Process().children()):
            assert time.monotonic() < end
            time.sleep(0.02)
        master = next(p.pid for p in psutil.Process().children() if sshmux.parse_cmdline(p.cmdline()).master)
        other = int(sys.stdin.readline())
        worker.reap_after_timeout(None)
        print(json.dumps(dict(master=master, own=own.pid, own_alive=own.poll() is None,
                              master_alive=psutil.Process(master).status() != psutil.STATUS_ZOMBIE)))
        """
    )
    other = fake_client(control_path)  # another task's session through the same master
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], input=f"{other.pid}\n", capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
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
        sys.path.insert(0, {SRC!r})
        from ansible_task_timeout import proctree, sshmux, worker
        import psutil
        assert proctree.become_subreaper()
        spawner = "trap '' TERM; while true; do (trap '' TERM; sleep 300) & sleep 0.05; done"
        subprocess.Popen(["bash", "-c", spawner])
        end = time.monotonic() + 10
        while not any(p.name() == "sleep" for p in psutil.Process().children(recursive=True)):
            assert time.monotonic() < end, "the spawner never forked"
            time.sleep(0.01)
        start = time.monotonic()
        worker.reap_after_timeout(None)
        print(time.monotonic() - start)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) <= bounds.REAP_BUDGET + 0.5


def test_guarded_cleanup_without_any_limit_is_upstream_behaviour() -> None:
    calls: list[str] = []
    worker.guarded_cleanup(lambda: calls.append("rm"), None, 0)
    assert calls == ["rm"]


def test_guarded_cleanup_is_bounded_when_a_limit_is_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bounds, "CLEANUP_LIMIT", 0.3)
    start = time.monotonic()
    worker.guarded_cleanup(lambda: time.sleep(30), None, attempt_timeout=10)
    assert time.monotonic() - start < 3


def test_guarded_cleanup_skips_remote_cleanup_and_kills_tree_after_a_timeout() -> None:
    code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        sys.path.insert(0, {SRC!r})
        from ansible_task_timeout import alarm, worker
        import psutil
        class TaskTimeoutError(BaseException): pass
        calls = []
        try:
            with alarm.attempt_alarm(1, lambda: TaskTimeoutError(1)):
                try:
                    subprocess.run(["sh", "-c", "sleep 300 & sleep 300"])
                finally:
                    worker.guarded_cleanup(lambda: calls.append("rm") or time.sleep(300), None, 1)
        except TaskTimeoutError:
            pass
        print(calls, psutil.Process().children(recursive=True))
        """
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] []"
    assert time.monotonic() - start < 1 + bounds.KILL_GRACE + 3


def test_a_hanging_template_fails_the_limit_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup in the value that never returns: the task fails with a bad-value message, on time."""
    monkeypatch.setattr(bounds, "RESOLVE_LIMIT", 0.3)
    start = time.monotonic()
    with pytest.raises(limit.TaskTimeoutValueError, match=r"could not be resolved within 0.3 s"):
        worker.resolve_limit("{{ lookup('pipe', 'sleep 30') }}", lambda raw: time.sleep(30))
    assert time.monotonic() - start < 2
