"""The controller sleeps while its workers run (the strategy hook of ansible_task_timeout.waiting).

Run by scripts/core-tests (Python 3.13, patched ansible); skipped on the host. A real
ansible-playbook with the linear strategy runs a task that keeps every worker busy for a while
without using CPU; meanwhile the test reads the controller's own CPU time (all its threads, not its
children's) over a window in which every slot is busy. Upstream's controller spends that window
polling: with more hosts than forks it calls is_alive() on every worker every 0.1 ms, and with
every host queued it polls for results every 1 ms. TT_STOCK_CONTROLLER=1 runs this module on a stock
ansible-core too, where it fails: the proof that it tells the two apart.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from playbook_runs import ansible_playbook, start_run, wait_for, workers_of

errors = pytest.importorskip("ansible.errors")
if not hasattr(errors, "AnsibleTaskTimeoutError") and os.environ.get("TT_STOCK_CONTROLLER") != "1":
    pytest.skip("needs the patched ansible-core (scripts/core-tests runs this)", allow_module_level=True)

NAP_S = 15
"""How long each task keeps its worker busy (an action plugin that sleeps in the worker)."""
WINDOW_S = 4.0
"""The measured window, inside the naps: all slots stay busy throughout."""

NAP_PLUGIN = """
from __future__ import annotations
import time
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        time.sleep(int(self._task.args["seconds"]))
        return {"changed": False}
"""

# Upstream's controller in these windows, measured on 2 cores: 30 % of a core waiting for a slot
# (40 hosts, forks 20), 6.5 % waiting for results (forks 30). The bounds sit well below those and
# well above what the patched controller uses (the results thread's watchdog passes, a wake-up per
# bounds.CONTROLLER_WAIT).
BOUNDS = {"slot": 0.15, "results": 0.03}
WHAT = {"slot": "a free worker slot", "results": "results"}


@pytest.mark.parametrize(("wait", "hosts", "forks"), [("slot", 40, 20), ("results", 30, 30)])
def test_the_controller_sleeps_while_every_worker_is_busy(
    tmp_path: Path, wait: str, hosts: int, forks: int
) -> None:
    (tmp_path / "action_plugins").mkdir()
    (tmp_path / "action_plugins" / "nap.py").write_text(NAP_PLUGIN)
    (tmp_path / "inventory").write_text(
        "".join(
            f"h{i} ansible_connection=local ansible_python_interpreter={sys.executable}\n"
            for i in range(hosts)
        )
    )
    (tmp_path / "play.yml").write_text(
        textwrap.dedent(f"""\
        - hosts: all
          gather_facts: false
          tasks:
            - nap:
                seconds: {NAP_S}
        """)
    )
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORKS": str(forks),
        "ANSIBLE_ACTION_PLUGINS": str(tmp_path / "action_plugins"),
    }
    argv = [ansible_playbook(), "-i", str(tmp_path / "inventory"), str(tmp_path / "play.yml")]
    proc = start_run(argv, tmp_path, env)
    try:
        controller = psutil.Process(proc.pid)
        wait_for(lambda: len(workers_of(proc.pid)) == forks, 60, f"{forks} busy workers")
        before, start = controller.cpu_times(), time.monotonic()
        time.sleep(WINDOW_S)  # the measured window itself, not a wait for anything
        after, elapsed = controller.cpu_times(), time.monotonic() - start
        busy = len(workers_of(proc.pid))
        out, _ = proc.communicate(timeout=4 * NAP_S + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert len(re.findall(r"^h\d+ +: ok=1 ", out, re.MULTILINE)) == hosts, out
    assert busy == forks, (
        f"the window left the busy phase ({busy} of {forks} workers at its end): make NAP_S longer"
    )
    share = (after.user + after.system - before.user - before.system) / elapsed
    assert share < BOUNDS[wait], f"the controller used {share:.1%} of a core waiting for {WHAT[wait]}"
