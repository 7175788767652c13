"""What every unit test of the package shares: the package on sys.path, and no alarm left behind.

The package is imported from src/ (and tests/unit, for the stand-ins module) whether pytest runs
from the repository (make unit) or from a copy of tests/ and src/ (scripts/core-tests).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
for path in (str(SRC), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from standins import Controller  # noqa: E402

from ansible_task_timeout import alarm, proctree  # noqa: E402


@pytest.fixture(autouse=True)
def _no_alarm_left(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test must leave no timer armed and no scope open.

    The pytest process itself must not become a subreaper (tests that need one run a child).
    """
    monkeypatch.setattr(proctree, "become_subreaper", lambda: False)
    yield
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert not alarm.limit_in_force()


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
