"""Stand-ins for what ansible and OpenSSH would start, shared by the unit tests of several modules.

A controller process (it starts the run guard and daemonises ssh-like masters on command), an ssh
ControlPersist master, another task's ssh client, and the waits on real processes around them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

SRC = str(Path(__file__).resolve().parents[2] / "src")

# A stand-in for ansible-playbook: starts the run guard (subreaper + guardian) or, with "plain",
# only becomes a subreaper; then obeys one command per stdin line and answers one line.
CONTROLLER = r"""
import os, shutil, subprocess, sys
sys.path.insert(0, SRC)
from ansible_task_timeout import guard, proctree

if sys.argv[1] == "guard":
    guard.ensure_run_guard()
    print(guard._guard.guardian.pid, flush=True)
else:
    proctree.become_subreaper()
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
        guard.note_interrupted()
    elif cmd == "sweep":
        guard.end_of_run_sweep()
    elif cmd == "own":  # the controller's own subprocess, not yet waited for: never to be reaped
        own = subprocess.Popen(["sh", "-c", "exit 7"])
        print(own.pid, flush=True)
        continue
    elif cmd == "own-wait":
        print(own.wait(), flush=True)
        continue
    elif cmd == "zombie?":
        print(guard._zombie_child(), flush=True)
        continue
    elif cmd == "reap":
        print(" ".join(map(str, guard.reap_adopted_zombies())), flush=True)
        continue
    print("ok", flush=True)
"""


class Controller:
    """A stand-in controller process (:data:`CONTROLLER`), driven one command at a time."""

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


def gone(pid: int) -> bool:
    """Dead (a zombie counts) or reaped."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_dead(procs: list[psutil.Process], timeout: float) -> float:
    start = time.monotonic()
    while any(alive(p) for p in procs) and time.monotonic() - start < timeout:
        time.sleep(0.02)
    return time.monotonic() - start


def pid_ended(pid: int, timeout: float = 10) -> bool:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    wait_dead([proc], timeout)
    return not alive(proc)


def daemonised_fake_master(control_path: Path) -> int:
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


def fake_client(control_path: Path) -> subprocess.Popen[bytes]:
    """A process whose command line names the ControlPath, as another task's live ssh client does."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "-o", f"ControlPath={control_path}", "host"]
    )
