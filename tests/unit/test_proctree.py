"""ansible_task_timeout.proctree with real process trees: walk, spare, kill, reap."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
from standins import SRC, gone

from ansible_task_timeout import bounds, proctree


def _tree(argv: list[str], sleeps: int) -> subprocess.Popen[bytes]:
    """Start `argv` and wait until its tree holds `sleeps` sleep processes."""
    proc = subprocess.Popen(argv)
    end = time.monotonic() + 10
    while sum(p.name() == "sleep" for p in psutil.Process(proc.pid).children(recursive=True)) < sleeps:
        assert time.monotonic() < end, "the tree never formed"
        time.sleep(0.01)
    return proc


def test_kill_tree_kills_and_reaps_a_real_tree() -> None:
    """A worker-like process runs `sh -c 'sleep 300 & sleep 300'` and then kills its own tree."""
    code = textwrap.dedent(
        f"""
        import json, subprocess, sys, time
        sys.path.insert(0, {SRC!r})
        from ansible_task_timeout import proctree
        import psutil
        assert proctree.become_subreaper()
        subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"])
        end = time.monotonic() + 10
        while sum(p.name() == "sleep" for p in psutil.Process().children(recursive=True)) < 2:
            assert time.monotonic() < end, "the tree never formed"
            time.sleep(0.01)
        before = [p.pid for p in psutil.Process().children(recursive=True)]
        start = time.monotonic()
        killed = proctree.kill_tree()
        left = [(p.pid, p.status()) for p in psutil.Process().children(recursive=True)]
        print(json.dumps(dict(before=before, killed=killed, left=left, took=time.monotonic() - start)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert len(report["before"]) == 3  # sh, sleep &, sleep
    assert set(report["before"]) <= set(report["killed"])
    assert report["left"] == []  # nothing alive, nothing <defunct>: reaped
    assert report["took"] < bounds.KILL_GRACE
    for pid in report["before"]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).cmdline()[:1] != ["sleep"]


def test_kill_tree_escalates_to_sigkill_and_leaves_the_roots_exit_status() -> None:
    """SIGTERM ignored: SIGKILL after the grace. The root, frozen and killed last, is not reaped
    by the controller's wait: its parent (here the test, in ansible multiprocessing) reaps it."""
    proc = _tree(["sh", "-c", "trap '' TERM; sleep 300 & trap '' TERM; wait"], 1)
    kids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    start = time.monotonic()
    killed = proctree.kill_tree(proc.pid, include_root=True, grace=0.5, wait=proctree.wait_for)
    took = time.monotonic() - start
    assert 0.5 <= took < 3  # SIGTERM was ignored, SIGKILL came after the grace
    assert set(kids) | {proc.pid} <= set(killed)
    assert proc.wait(timeout=5) == -signal.SIGKILL  # its exit status is still there for its parent
    for pid in kids:
        assert gone(pid)


def test_kill_tree_with_no_grace_sends_sigkill_at_once() -> None:
    proc = _tree(["sh", "-c", "trap '' TERM; sleep 300 & trap '' TERM; wait"], 1)
    start = time.monotonic()
    proctree.kill_tree(proc.pid, include_root=True, grace=0, kill_wait=1.0, wait=proctree.wait_for)
    assert time.monotonic() - start < 0.5
    assert proc.wait(timeout=5) == -signal.SIGKILL


def test_kill_tree_spares_a_subtree_and_what_runs_below_it() -> None:
    """The spared process (a master) keeps its children: the walk does not even go below it."""
    script = "sleep 300 & (exec -a spared-master bash -c 'sleep 301 & wait') & wait"
    proc = _tree(["bash", "-c", script], 2)
    spared = next(
        p for p in psutil.Process(proc.pid).children(recursive=True) if p.cmdline()[0] == "spared-master"
    )
    asked: list[int] = []

    def spare(pid: int) -> bool:
        asked.append(pid)
        return pid == spared.pid

    try:
        killed = proctree.kill_tree(proc.pid, grace=0.5, spare=spare, wait=proctree.wait_for)
        assert spared.pid not in killed and spared.is_running()
        assert [p.cmdline()[:2] for p in spared.children()] == [["sleep", "301"]]
        assert len(asked) == len(set(asked))  # asked once per pid, and never about the spared one's children
        assert not set(asked) & {p.pid for p in spared.children()}
    finally:
        proctree.kill_tree(proc.pid, include_root=True, grace=0, wait=proctree.wait_for)
        proc.wait(timeout=5)


def test_descendants_lists_parents_before_children_and_prunes_subtrees() -> None:
    proc = _tree(["sh", "-c", "sh -c 'sleep 300 & wait' & sleep 300 & wait"], 2)
    try:
        tree = proctree.descendants(proc.pid)
        assert set(tree) == {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        for pid in tree:
            parent = psutil.Process(pid).ppid()
            assert parent == proc.pid or tree.index(parent) < tree.index(pid)
        inner = next(p.pid for p in psutil.Process(proc.pid).children() if p.name() == "sh")
        pruned = proctree.descendants(proc.pid, prune=lambda pid: pid == inner)
        assert inner not in pruned and not set(pruned) & set(proctree.descendants(inner))
        assert len(pruned) == 1  # the other sleep
    finally:
        proctree.kill_tree(proc.pid, include_root=True, grace=0, wait=proctree.wait_for)
        proc.wait(timeout=5)


def test_stat_reads_a_comm_with_spaces_and_parentheses(tmp_path: Path) -> None:
    """comm is the executable's name, which may hold ") (": the fields start after the last ")"."""
    odd = tmp_path / "a) b (c"
    odd.symlink_to(shutil.which("sleep") or "/usr/bin/sleep")
    proc = subprocess.Popen([str(odd), "300"])
    try:
        end = time.monotonic() + 5
        while (stat := proctree.stat(proc.pid)) is None or stat.comm != b"a) b (c":
            assert time.monotonic() < end, stat
            time.sleep(0.01)
        assert stat.ppid == os.getpid() and stat.state in "RS"
        assert stat.session == os.getsid(0) and stat.starttime <= proctree.now_ticks()
    finally:
        proc.kill()
        proc.wait()
    assert proctree.stat(proc.pid) is None


def test_set_parent_death_signal_fires_at_once_for_an_orphan() -> None:
    """The parent died before prctl took effect: the signal is sent at once, nothing is left waiting."""
    code = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path.insert(0, {SRC!r})
        from ansible_task_timeout import proctree
        proctree.set_parent_death_signal(signal.SIGTERM, os.getppid() + 1)
        time.sleep(5)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == -signal.SIGTERM, out.stderr
