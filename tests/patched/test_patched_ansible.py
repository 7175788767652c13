"""Real ansible-playbook runs against the patched ansible-core (run by scripts/core-tests, Python 3.13).

Skipped on the host, where the patched ansible-core (Python >= 3.12) is not importable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

errors = pytest.importorskip("ansible.errors")
if not hasattr(errors, "AnsibleTaskTimeoutError"):
    # e.g. the host venv, where ansible-navigator brings a stock ansible-core 2.19
    pytest.skip(
        "this ansible-core is not the patched one: scripts/core-tests runs these", allow_module_level=True
    )

SLEEP = "313"  # a sleep length no one else uses, to find leftovers


def _leftover_sleeps() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == ["sleep", SLEEP]:
            found.append(proc)
    return found


def run_playbook(
    tmp_path: Path, tasks: str, env: dict[str, str] | None = None, hosts: str = "a", play_extra: str = ""
) -> tuple[dict[str, dict[str, object]], float, subprocess.CompletedProcess[str]]:
    """Run `tasks` on local hosts; tasks register rN; return {host: {rN: result}} and the elapsed time."""
    (tmp_path / "inventory").write_text(
        "[all]\n"
        + "\n".join(f"{h} ansible_connection=local ansible_python_interpreter={sys.executable}" for h in "ab")
        + "\n"
    )
    playbook = textwrap.dedent(
        """
        - hosts: {hosts}
          gather_facts: false
        {play_extra}
          tasks:
        {tasks}
            - name: dump
              copy:
                dest: "{out}/{{{{ inventory_hostname }}}}.json"
                content: "{{{{ hostvars[inventory_hostname] | dict2items
                  | selectattr('key', 'match', '^r[0-9]+$') | items2dict | to_json }}}}"
              task_timeout: 60  # wins over the play/config limit a test sets: the results must not be lost
        """
    ).format(
        hosts=hosts,
        play_extra=textwrap.indent(textwrap.dedent(play_extra), "  "),
        tasks=textwrap.indent(textwrap.dedent(tasks), "    "),
        out=tmp_path,
    )
    (tmp_path / "play.yml").write_text(playbook)
    full_env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOST_KEY_CHECKING": "0", **(env or {})}
    start = time.monotonic()
    ansible_playbook = str(Path(sys.executable).parent / "ansible-playbook")
    proc = subprocess.run(
        [ansible_playbook, "-i", str(tmp_path / "inventory"), "play.yml"],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    elapsed = time.monotonic() - start
    results = {}
    for host in "ab":
        if (tmp_path / f"{host}.json").exists():
            results[host] = json.loads((tmp_path / f"{host}.json").read_text())
    return results, elapsed, proc


def test_task_timeout_kills_the_command_and_fails_only_that_task(tmp_path: Path) -> None:
    results, elapsed, proc = run_playbook(
        tmp_path,
        f"""
        - command: sleep {SLEEP}
          task_timeout: 2
          register: r1
          ignore_errors: true
        - command: "true"
          register: r2
        """,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r1 = results["a"]["r1"]
    assert r1["failed"] is True
    assert r1["task_timeout"] is True
    assert r1["msg"] == "Task execution timed out, limit is: 2 second(s)"
    assert r1["timedout"]["period"] == 2
    assert not r1.get("unreachable")
    assert results["a"]["r2"]["rc"] == 0  # the play went on
    assert elapsed < 2 + 25  # ansible start-up + 2 s + kill grace, far from 313 s
    assert _leftover_sleeps() == []


def test_other_hosts_go_on_and_is_timedout_works(tmp_path: Path) -> None:
    results, elapsed, proc = run_playbook(
        tmp_path,
        f"""
        - command: "{{{{ 'sleep {SLEEP}' if inventory_hostname == 'a' else 'true' }}}}"
          task_timeout: 5
          register: r1
        - assert:
            that: r1 is not timedout
          register: r2
        """,
        hosts="all",
    )
    assert "a" not in results  # a failed (not ignored): it stops, as any failed host
    assert results["b"]["r1"]["rc"] == 0 and "r2" in results["b"]
    assert "failed=1" in proc.stdout and "unreachable=0" in proc.stdout
    assert _leftover_sleeps() == []


def test_deadline_covers_all_loop_items_unlike_upstream_timeout(tmp_path: Path) -> None:
    results, _elapsed, proc = run_playbook(
        tmp_path,
        """
        - command: sleep 2
          loop: [1, 2, 3]
          timeout: 5
          register: r1
        - command: sleep 2
          loop: [1, 2, 3]
          task_timeout: 5
          register: r2
          ignore_errors: true
        - assert:
            that: r2 is timedout
          register: r3
        """,
    )
    assert results["a"]["r1"]["changed"] is True and not results["a"]["r1"].get("failed")
    assert results["a"]["r2"]["task_timeout"] is True
    assert "r3" in results["a"]


def test_inherited_from_block_and_play_and_config_default(tmp_path: Path) -> None:
    results, _elapsed, proc = run_playbook(
        tmp_path,
        f"""
        - block:
            - command: sleep {SLEEP}
              register: r1
              ignore_errors: true
          task_timeout: 1
        - command: sleep {SLEEP}
          register: r2
          ignore_errors: true
        """,
        play_extra="task_timeout: 2",
    )
    assert results["a"]["r1"]["msg"] == "Task execution timed out, limit is: 1 second(s)"
    assert results["a"]["r2"]["msg"] == "Task execution timed out, limit is: 2 second(s)"

    results, _elapsed, proc = run_playbook(
        tmp_path,
        f"""
        - command: sleep {SLEEP}
          register: r1
          ignore_errors: true
        """,
        env={"ANSIBLE_TASK_DEADLINE": "1"},
    )
    assert results["a"]["r1"]["timedout"]["period"] == 1
    assert _leftover_sleeps() == []


def test_roles_imports_and_includes_follow_keyword_inheritance(tmp_path: Path) -> None:
    """Set on a role or an import, the limit reaches every task in it; an include needs ``apply``.

    On an include itself task_timeout is accepted, as upstream ``timeout`` is, and reaches the
    included tasks exactly as far as ``timeout`` does (r5 shows what upstream does). The default
    (ANSIBLE_TASK_DEADLINE=3 here) covers included tasks in any case.
    """

    def sleeper(register: str) -> str:
        return f"- command: sleep {SLEEP}\n  register: {register}\n  ignore_errors: true\n"

    (tmp_path / "roles" / "slow" / "tasks").mkdir(parents=True)
    (tmp_path / "roles" / "slow" / "tasks" / "main.yml").write_text(sleeper("r1"))
    for n in (2, 3, 4, 5):
        (tmp_path / f"slow{n}.yml").write_text(sleeper(f"r{n}"))
    results, elapsed, proc = run_playbook(
        tmp_path,
        """
        - import_tasks: slow2.yml
          task_timeout: 1
        - include_tasks: slow3.yml
          args:
            apply:
              task_timeout: 1
        - include_tasks: slow4.yml
          task_timeout: 1
        - include_tasks: slow5.yml
          timeout: 1
        """,
        env={"ANSIBLE_TASK_DEADLINE": "3"},
        play_extra="""
        roles:
          - role: slow
            task_timeout: 1
        """,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = results["a"]
    assert {r: a[r]["timedout"]["period"] for r in ("r1", "r2", "r3")} == {"r1": 1, "r2": 1, "r3": 1}
    assert all(a[r]["task_timeout"] is True for r in ("r1", "r2", "r3", "r4"))
    upstream_inherits = a["r5"]["timedout"]["period"] == 1 and not a["r5"].get("task_timeout")
    assert a["r4"]["timedout"]["period"] == (1 if upstream_inherits else 3), (a["r4"], a["r5"])
    assert elapsed < 10 + 15, "five limits of 1 to 3 s, plus start-up"
    assert _leftover_sleeps() == []


@pytest.mark.parametrize("value", ["-1", "'abc'", "2.5", "'{{ nope_undefined }}'", "100000000"])
def test_bad_values_fail_that_task_only(tmp_path: Path, value: str) -> None:
    results, _elapsed, proc = run_playbook(
        tmp_path,
        f"""
        - command: "true"
          task_timeout: {value}
          register: r1
          ignore_errors: true
        - command: "true"
          register: r2
        """,
    )
    r1 = results["a"]["r1"]
    assert r1["failed"] is True
    assert "task_timeout" in r1["msg"]
    assert value.strip("'") in r1["msg"]
    assert "rc" not in r1  # the command did not run
    assert results["a"]["r2"]["rc"] == 0


def test_upstream_timeout_keeps_its_shape_and_leaves_nothing_running(tmp_path: Path) -> None:
    results, elapsed, proc = run_playbook(
        tmp_path,
        f"""
        - command: sleep {SLEEP}
          timeout: 1
          register: r1
          ignore_errors: true
        """,
    )
    r1 = results["a"]["r1"]
    assert r1["failed"] is True
    assert r1["timedout"]["period"] == 1
    assert "task_timeout" not in r1
    assert r1["msg"] == "Task failed: Timed out after 1 second(s)."
    assert _leftover_sleeps() == []


def test_a_templated_limit_is_resolved_once_per_host(tmp_path: Path) -> None:
    """Resolved in the worker only: a lookup in the value runs once per host, not also in the controller."""
    count = tmp_path / "resolved"
    results, _elapsed, proc = run_playbook(
        tmp_path,
        f"""
        - command: sleep {SLEEP}
          task_timeout: "{{{{ lookup('pipe', 'echo {{{{ inventory_hostname }}}} >> {count}; echo 2') }}}}"
          register: r1
          ignore_errors: true
        """,
        hosts="all",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(count.read_text().split()) == ["a", "b"]
    for host in "ab":
        assert results[host]["r1"]["msg"] == "Task execution timed out, limit is: 2 second(s)"
    assert _leftover_sleeps() == []


def test_many_task_queue_managers_leak_no_descriptor() -> None:
    """ansible-console makes a TaskQueueManager per command: each must give back what it opened."""
    from ansible.executor.task_queue_manager import TaskQueueManager
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources="localhost,")
    variables = VariableManager(loader=loader, inventory=inventory)

    def one() -> None:
        tqm = TaskQueueManager(inventory=inventory, variable_manager=variables, loader=loader, passwords={})
        tqm.cleanup()

    one()  # the first one opens what stays for the process (plugin loaders, caches)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        one()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_a_lost_worker_with_no_queued_task_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The strategy may be waiting for that result: said in one warning line, not swallowed."""
    from ansible.plugins.strategy import StrategyBase
    from ansible.utils.display import Display

    from ansible_task_timeout.channels import WorkerLost

    warnings: list[str] = []
    monkeypatch.setattr(Display(), "warning", lambda msg, *a, **k: warnings.append(msg))
    strategy = StrategyBase.__new__(StrategyBase)
    strategy._queued_task_cache = {}
    lost = WorkerLost(0, 4242, "web1", "uuid-1", 0, False, "The worker process of host web1 died.")
    strategy._record_lost_worker(lost)
    assert len(warnings) == 1 and "web1" in warnings[0] and "cannot be recorded" in warnings[0]
