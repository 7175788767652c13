"""Running the patched ansible-playbook from a test, and watching its processes."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def ansible_playbook() -> str:
    found = Path(sys.executable).parent / "ansible-playbook"
    return str(found) if found.exists() else (shutil.which("ansible-playbook") or "ansible-playbook")


def start_run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """An ansible command in its own process group and session, its output merged and captured."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def workers_of(pid: int) -> list[psutil.Process]:
    """The controller's forked workers: its children running the controller's own command line."""
    try:
        parent = psutil.Process(pid)
        cmdline = parent.cmdline()
        children = parent.children()
    except psutil.Error:
        return []
    found = []
    for child in children:  # one child gone or defunct (cmdline() raises) must not hide the others
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE and child.cmdline() == cmdline:
                found.append(child)
    return found


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `condition` until truthy; fail naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
