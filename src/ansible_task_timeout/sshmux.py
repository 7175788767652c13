"""ssh ControlPersist masters: tell them from clients, find who uses them, let go of them.

A timeout ends only what is its own. ansible's ssh plugin derives its ControlPath from host, port
and user only, so one master can carry the sessions of several live tasks (hosts that
``delegate_to`` one bastion, two inventory names for one machine). So a timed-out task's tree is
killed but for its masters (:func:`kill_tree_keeping_masters`), and each master is then released
(:func:`release_control_master`): told to accept no new session, and ended only once nobody else
uses it.

Every ControlPath is read from a command line by one parser, :func:`parse_cmdline`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence

import psutil

from ansible_task_timeout import bounds, proctree

SSH_NAMES = frozenset({"ssh", "sshpass"})
"""Executable names of an ssh client."""
SSH_COMMS = frozenset(name.encode() for name in SSH_NAMES)
"""The same as /proc/<pid>/stat's comm: a ControlPersist master keeps "ssh" as its comm."""

_CONTROL_PATH_RE = re.compile(r"ControlPath=(?:\"([^\"]+)\"|'([^']+)'|(\S+))")


@dataclasses.dataclass(frozen=True)
class SshCmdline:
    """What one command line says about ControlPersist."""

    master: bool
    """A ControlPersist master: live (``ssh: <path> [mux]``) or stopped (``ssh: [stopped mux]``)."""
    paths: frozenset[str]
    """The sockets it names: a live master's own; the ``-o ControlPath=`` values of anything else."""

    @property
    def live_master(self) -> str | None:
        """The socket of a live master; None for a stopped master or a client."""
        return next(iter(self.paths)) if self.master and self.paths else None


def parse_cmdline(cmdline: Sequence[str]) -> SshCmdline:
    """The ControlPersist role and ControlPaths of one process's command line.

    A master is told by its proctitle: OpenSSH's setproctitle() writes ``ssh: <path> [mux]`` over
    argv (``ssh: [stopped mux]`` after ``ssh -O stop``) and pads the rest of the argv+environ area
    with NULs, so psutil shows ``["ssh: <path> [mux]", "", ...]``: the first word says it all. Any
    other command line (ssh, sshpass, a wrapper) names its ControlPaths in ``ControlPath=`` options.
    """
    title = cmdline[0].strip() if cmdline else ""
    if title.startswith("ssh: ") and title.endswith("mux]"):
        path = title[len("ssh: ") : -len(" [mux]")].strip() if title.endswith(" [mux]") else ""
        return SshCmdline(master=True, paths=frozenset({path} if path else ()))
    found = set()
    for arg in cmdline:
        for match in _CONTROL_PATH_RE.finditer(arg):
            found.add(next(group for group in match.groups() if group))
    return SshCmdline(master=False, paths=frozenset(found))


def is_ssh(cmdline: Sequence[str]) -> bool:
    """An ssh client or a ControlPersist master (what a normal end of run closes)."""
    return bool(cmdline) and (os.path.basename(cmdline[0]) in SSH_NAMES or parse_cmdline(cmdline).master)


def control_path_of_connection(connection: object) -> str | None:
    """The expanded ControlPath of an ansible ssh connection plugin object, if it has one.

    The ssh plugin stores ``control_path`` with a ``%(directory)s`` placeholder and expands it
    with ``control_path_dir`` only when building the command line; do the same here.
    """
    path = getattr(connection, "control_path", None)
    if not isinstance(path, str) or not path:
        return None
    if "%(directory)s" in path:
        directory = getattr(connection, "control_path_dir", None) or "~/.ansible/cp"
        directory = os.path.realpath(os.path.expandvars(os.path.expanduser(str(directory))))
        path = path % {"directory": directory}
    return path


def kill_tree_keeping_masters(
    root: int | None = None,
    *,
    include_root: bool = False,
    grace: float = bounds.KILL_GRACE,
    kill_wait: float | None = None,
    deadline: float | None = None,
    wait: proctree.Wait = proctree.wait_reaping,
) -> set[str]:
    """Kill the tree of `root` but its live ControlPersist masters; return the ControlPaths to release.

    :func:`proctree.kill_tree` with the masters spared (and what they run, such as a ProxyCommand):
    other tasks' sessions may go through them. A master in the tree is one the task started: a
    worker is a subreaper, so the master OpenSSH daemonised is its child until the worker exits.
    The paths are those of the masters and of the ssh clients, read as the tree is walked, before
    anything in it is signalled. A process whose command line cannot be read is no master we can
    tell, so it is killed like the rest.
    """
    paths: set[str] = set()

    def is_master(pid: int) -> bool:
        cmdline = proctree.cmdline(pid)
        if cmdline is None:
            return False
        ssh = parse_cmdline(cmdline)
        paths.update(ssh.paths)
        return ssh.live_master is not None

    proctree.kill_tree(
        root,
        include_root=include_root,
        grace=grace,
        kill_wait=kill_wait,
        spare=is_master,
        deadline=deadline,
        wait=wait,
    )
    return paths


def _masters_of(control_path: str) -> list[psutil.Process]:
    """The live ControlPersist masters listening on `control_path`."""
    return [
        proc
        for proc in psutil.process_iter(["cmdline"])
        if parse_cmdline(proc.info.get("cmdline") or []).live_master == control_path and proctree.alive(proc)
    ]


def control_path_clients(control_path: str, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Live ssh clients (not masters) whose command line names `control_path`: another task's session."""
    skip = {os.getpid(), *exclude}
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.pid in skip or proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        ssh = parse_cmdline(proc.info.get("cmdline") or [])
        if not ssh.master and control_path in ssh.paths:
            found.append(proc)
    return found


def _ssh_control(command: str, control_path: str, timeout: float) -> None:
    """``ssh -O <command>`` to the master of `control_path`: answered locally, bounded all the same."""
    ssh = shutil.which("ssh")
    if ssh is None or not os.path.exists(control_path):
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [ssh, "-O", command, "-o", f"ControlPath={control_path}", "ansible-task-timeout"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )


def release_control_master(
    control_path: str,
    timeout: float = bounds.MASTER_EXIT_TIMEOUT,
    wait: proctree.Wait = proctree.wait_reaping,
) -> list[int]:
    """Let go of the ControlPersist master of `control_path` after a timeout; return the pids ended.

    The master is first told to accept no new session (``ssh -O stop``: the next task opens a fresh
    master, and one stuck on a frozen host takes nobody new with it), and is ended only if no other
    process's command line still names its ControlPath. Otherwise it serves the live sessions to
    their end and then exits by itself (or at the end of the run). Stop first, look second: a
    client that attaches after the look cannot exist, since the socket is gone. The caller has
    killed its own clients already. `wait` as in :func:`proctree.end_processes`.
    """
    masters = _masters_of(control_path)  # found by path now: ``-O stop`` retitles it "[stopped mux]"
    _ssh_control("stop", control_path, timeout)
    if control_path_clients(control_path, exclude=[m.pid for m in masters]):
        return []
    proctree.end_processes(masters, timeout, wait=wait)
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        os.unlink(control_path)
    return [proc.pid for proc in masters]


def release_masters(
    paths: Iterable[str],
    deadline: float | None = None,
    wait: proctree.Wait = proctree.wait_reaping,
) -> None:
    """:func:`release_control_master` for each of `paths`; none is begun after `deadline` (monotonic).

    Within a deadline a release gets at most a third of what is left: its ``-O stop`` and its two
    waits (after SIGTERM, after SIGKILL) may each take that long, and together still fit.
    """
    for path in sorted(paths):
        timeout = bounds.MASTER_EXIT_TIMEOUT
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            timeout = min(timeout, remaining / 3)
        release_control_master(path, timeout=timeout, wait=wait)
