"""ansible_task_timeout.sshmux: ControlPaths read from command lines, masters released or spared."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import psutil
from standins import daemonised_fake_master, fake_client, gone

from ansible_task_timeout import sshmux


def test_control_paths_of_a_client() -> None:
    args = ["ssh", "-C", "-o", 'ControlPath="/root/.ansible/cp/abc123"', "-o", "ControlPath=/tmp/x y"]
    ssh = sshmux.parse_cmdline(args)
    assert not ssh.master and ssh.live_master is None
    assert ssh.paths == {"/root/.ansible/cp/abc123", "/tmp/x"}
    assert sshmux.parse_cmdline(["sshpass", "-d", "5", "ssh", "-o", "ControlPath='/c p/1'"]).paths == {
        "/c p/1"
    }


def test_mux_master_titles() -> None:
    live = sshmux.parse_cmdline(["ssh: /h/.ansible/cp/d0f01bc24b [mux]", "", ""])
    assert live.master and live.live_master == "/h/.ansible/cp/d0f01bc24b"
    assert live.paths == {"/h/.ansible/cp/d0f01bc24b"}
    stopped = sshmux.parse_cmdline(["ssh: [stopped mux]"])
    assert stopped.master and stopped.live_master is None and not stopped.paths
    client = sshmux.parse_cmdline(["/usr/bin/ssh", "-o", "ControlPath=/x", "host"])
    assert not client.master and client.paths == {"/x"}
    assert sshmux.parse_cmdline([]) == sshmux.SshCmdline(master=False, paths=frozenset())


def test_mux_master_title_as_psutil_shows_it() -> None:
    # OpenSSH's setproctitle pads the argv+environ area with NULs: psutil gives many empty args
    cmdline = ["ssh: /home/u/.ansible/cp/d0f01bc24b [mux]", "", "", ""]
    assert sshmux.parse_cmdline(cmdline).live_master == "/home/u/.ansible/cp/d0f01bc24b"
    assert sshmux.parse_cmdline(cmdline).paths == {"/home/u/.ansible/cp/d0f01bc24b"}
    assert sshmux.is_ssh(cmdline)
    assert sshmux.is_ssh(["ssh: [stopped mux]"])
    assert sshmux.is_ssh(["/usr/bin/ssh", "-o", "ControlPath=/x/cp/1", "host"])
    assert not sshmux.is_ssh(["sleep", "300"]) and not sshmux.is_ssh([])


def test_control_path_of_connection_expands_directory(tmp_path: Path) -> None:
    class Conn:
        control_path = "%(directory)s/0123456789"
        control_path_dir = str(tmp_path)

    assert sshmux.control_path_of_connection(Conn()) == f"{tmp_path}/0123456789"
    assert sshmux.control_path_of_connection(object()) is None


def test_release_control_master_ends_a_master_nobody_else_uses(tmp_path: Path) -> None:
    control_path = tmp_path / "cp" / "0a1b2c3d4e"
    control_path.parent.mkdir()
    pid = daemonised_fake_master(control_path)
    assert psutil.Process(pid).ppid() != os.getpid()
    with socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(control_path))
    killed = sshmux.release_control_master(str(control_path), timeout=0.5)
    assert pid in killed
    assert not control_path.exists()
    deadline = time.monotonic() + 5
    while not gone(pid):
        assert time.monotonic() < deadline, "master survived"
        time.sleep(0.05)


def test_release_control_master_spares_a_master_that_serves_another_task(tmp_path: Path) -> None:
    """One ControlPath, several hosts' sessions (delegate_to one host): the others' master stays."""
    control_path = tmp_path / "cp" / "5f6e7d8c9b"
    control_path.parent.mkdir()
    pid = daemonised_fake_master(control_path)
    client = fake_client(control_path)
    try:
        deadline = time.monotonic() + 5
        while not sshmux.control_path_clients(str(control_path)):
            assert time.monotonic() < deadline, "the fake client never showed"
            time.sleep(0.02)
        assert sshmux.release_control_master(str(control_path), timeout=0.5) == []
        assert not gone(pid), "the master of another live task was killed"
        assert client.poll() is None, "another task's ssh client was killed"
    finally:
        client.kill()
        client.wait()
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def test_release_masters_begins_none_after_its_deadline(tmp_path: Path) -> None:
    control_path = tmp_path / "cp" / "9e8d7c6b5a"
    control_path.parent.mkdir()
    pid = daemonised_fake_master(control_path)
    try:
        sshmux.release_masters([str(control_path)], deadline=time.monotonic())
        assert not gone(pid) and control_path.exists()
        sshmux.release_masters([str(control_path)], deadline=time.monotonic() + 3)
        assert not control_path.exists()
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
