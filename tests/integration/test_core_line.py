"""What a core line changed in the files the patches hook, proven on the image of that line.

ansible-core 2.22 sends the secrets a worker or a module registered back to the controller with the
worker's messages (ansible/ansible#87457), and registers a SIGUSR1 handler that writes a stack dump
in the controller and every worker (ansible/ansible#87149). The per-worker result channels carry
upstream's messages whole, and nothing of ours takes or blocks SIGUSR1: on 2.22 a secret from a
worker is masked exactly as stock masks it, and a worker under a deadline that gets SIGUSR1 writes
its dump and still ends at its limit. Before 2.22, SIGUSR1 ends a worker (its default action): the
host then fails alone, and the play goes on.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from harness.dockerctl import docker
from harness.labels import CORE, LINE
from harness.runner import (
    KEY_IN_EE,
    PLUGINS_IN_EE,
    EEContainer,
    RunResult,
    base_env,
    run_playbook,
    stage_project,
)
from harness.scenarios import Lab
from harness.targets import inventory_ini

pytestmark = pytest.mark.integration

AT_LEAST_2_22 = tuple(int(n) for n in LINE.split(".")) >= (2, 22)
SEED = "a7c3e9"
TOKEN = f"tt-secret-{SEED}"
LIMIT_S = 15
_n = itertools.count(1)


@contextmanager
def ee_for(lab: Lab, image: str, playbook: str, hosts: int, extra: str = "") -> Iterator[EEContainer]:
    tag = f"line-{next(_n)}-{extra}".rstrip("-")
    project = lab.workdir / tag
    stage_project(project, playbook, inventory_ini(lab.healthy(hosts), KEY_IN_EE))
    ee = EEContainer.start(lab.session, image, lab.network, project, lab.key, tag=tag)
    try:
        yield ee
    finally:
        ee.remove()


def env_for(hosts: int, **extra: str) -> dict[str, str]:
    env = base_env("linear", forks=hosts)
    env["ANSIBLE_LIBRARY"] = f"{PLUGINS_IN_EE}/modules"
    env.update(extra)
    return env


def shown_lines(stdout: str) -> list[str]:
    """The task output of the default callback, without timings and the recap's counters."""
    return [line for line in stdout.splitlines() if line.startswith(("ok:", "changed:", "fatal:", '    "'))]


def masked_run(lab: Lab, image: str) -> RunResult:
    with ee_for(lab, image, "secret_from_worker.yml", hosts=2) as ee:
        return run_playbook(
            ee, "secret_from_worker.yml", env=env_for(2), extra_args=("-e", f"tt_seed={SEED}")
        )


@pytest.mark.skipif(
    not AT_LEAST_2_22, reason=f"ansible-core {CORE} keeps a worker's secrets in the worker (2.22 sends them)"
)
@pytest.mark.stock
def test_a_secret_registered_in_a_worker_is_masked_as_stock_masks_it(
    lab: Lab, ee_image: str, stock_image: str
) -> None:
    stock = masked_run(lab, stock_image)
    patched = masked_run(lab, ee_image)
    for run in (stock, patched):
        assert run.rc == 0, run.describe()
        assert TOKEN not in run.stdout, f"the secret is shown in the controller's output\n{run.describe()}"
    shown = [line for line in shown_lines(patched.stdout) if "token=" in line]
    assert len(shown) == 2, patched.describe()  # the later task's message, masked, on both hosts
    # the same lines (the hosts' order is a race on both)
    assert sorted(shown_lines(patched.stdout)) == sorted(shown_lines(stock.stdout)), (
        f"stock:\n{stock.stdout}\npatched:\n{patched.stdout}"
    )


def controller_and_workers(ee: EEContainer) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    procs = ee.processes()
    controller = next(
        (p for p in procs if "ansible-playbook" in p["cmdline"] and not p["cmdline"].startswith("timeout")
         and all(q["pid"] != p["ppid"] or q["cmdline"].startswith("timeout") for q in procs)),
        None,
    )  # fmt: skip
    if controller is None:
        return None, []
    workers = [p for p in procs if p["ppid"] == controller["pid"] and "ansible-playbook" in p["cmdline"]]
    # a worker that runs its task has its ssh client as a child
    busy = [w for w in workers if any(q["ppid"] == w["pid"] and q["name"] == "ssh" for q in procs)]
    return controller, busy


def test_sigusr1_to_a_worker_under_a_deadline(lab: Lab, ee_image: str) -> None:
    with ee_for(lab, ee_image, "sleep_under_deadline.yml", hosts=2, extra="usr1") as ee:
        box: dict[str, RunResult] = {}
        env = env_for(2)
        args = ("-e", f"tt_limit={LIMIT_S}")
        runner = threading.Thread(
            target=lambda: box.setdefault(
                "run", run_playbook(ee, "sleep_under_deadline.yml", env=env, extra_args=args)
            )
        )
        runner.start()
        deadline = time.monotonic() + LIMIT_S - 3
        controller, busy = None, []
        while time.monotonic() < deadline and len(busy) < 2:
            controller, busy = controller_and_workers(ee)
            time.sleep(0.2)
        assert controller is not None and len(busy) == 2, f"no two busy workers: {ee.processes()}"
        victim = busy[0]
        signalled_at = time.monotonic()
        # before 2.22 SIGUSR1 would end the controller too: only the worker gets it there
        pids = [victim["pid"], controller["pid"]] if AT_LEAST_2_22 else [victim["pid"]]
        docker("exec", ee.name, "kill", "-USR1", *map(str, pids))
        runner.join(LIMIT_S + 60)
        assert not runner.is_alive(), "the run did not end"
        run = box["run"]
        assert run.rc == 2, run.describe()
        results = {e["host"]: e for e in run.results(task="sleep")}
        assert set(results) == {"ok01", "ok02"}, run.describe()
        home = docker("exec", ee.name, "sh", "-c", "echo $HOME").stdout.strip()
        dumps = docker(
            "exec", ee.name, "sh", "-c", f"ls {home}/.ansible/debug/ 2>/dev/null", check=False
        ).stdout
        if AT_LEAST_2_22:
            # both dumped their stacks and went on: every host timed out at its limit, nothing else
            for pid in (victim["pid"], controller["pid"]):
                assert f"ansible-{pid}.debug" in dumps, f"no stack dump of {pid}: {dumps!r}"
            text = docker(
                "exec", ee.name, "cat", f"{home}/.ansible/debug/ansible-{victim['pid']}.debug"
            ).stdout
            assert "stacktrace" in text, text
            for host, result in results.items():
                assert result["event"] == "failed" and result["result"].get("task_timeout") is True, (
                    host,
                    result,
                )
                assert re.search(rf"limit is: {LIMIT_S} second", result["result"].get("msg", "")), result
            assert run.wall_s < LIMIT_S + 20, run.describe()
        else:
            # SIGUSR1's default action ends the worker: its host fails alone, the other times out
            timed_out = {h for h, r in results.items() if r["result"].get("task_timeout") is True}
            assert len(timed_out) == 1 and all(r["event"] == "failed" for r in results.values()), results
            (lost,) = set(results) - timed_out
            assert "SIGUSR1" in results[lost]["result"].get("msg", ""), results[lost]
            assert time.monotonic() - signalled_at < LIMIT_S + 20
        assert not run.leftovers, run.describe()


# In a forked worker of the image's own FinalQueue: the deadline fires while the worker flushes the
# secrets it registered (a stand-in TaskContext whose flush takes longer than the deadline), so
# without one SIGALRM-free section around the flush and the write, the alarm raises between the two
# and the message goes, with its secrets, nowhere.
FLUSH_RACE = """
import os, queue, time
from ansible.executor import task_queue_manager as tqm
from ansible.module_utils.secrets import mask_secrets
from ansible_task_timeout import alarm

class Flushing:
    def flush_new_secrets(self):
        time.sleep(0.5)
        return frozenset({"tt-flush-race-secret"})

class Worker:
    def __init__(self, pid):
        self.pid, self.exitcode = pid, None

q = tqm.FinalQueue()
token = q.open_worker_channel()
pid = os.fork()
if pid == 0:
    q.bind_worker_channel(token)
    tqm.TaskContext.current = staticmethod(lambda optional=False: Flushing())
    try:
        with alarm.alarm(0.1, lambda: TimeoutError("deadline")):
            q.put("the message")
            time.sleep(10)
    except TimeoutError:
        os._exit(0)
    os._exit(3)
q.worker_started(token, Worker(pid), "h1", "uuid", 0, 0)
end = time.monotonic() + 10
while time.monotonic() < end:
    try:
        print("received:", q.get())
        break
    except queue.Empty:
        pass
print("masked:", mask_secrets("tt-flush-race-secret"))
print("worker:", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.skipif(
    not AT_LEAST_2_22, reason=f"ansible-core {CORE} keeps a worker's secrets in the worker (2.22 sends them)"
)
def test_a_deadline_during_the_secrets_flush_keeps_them_with_the_message(ee_image: str) -> None:
    out = docker("run", "--rm", ee_image, "python3", "-c", FLUSH_RACE, timeout=60).stdout
    assert "received: the message" in out, out
    assert "masked: $REDACTED$" in out, out
    assert "worker: 0" in out, out  # the deadline still raised in the worker, right after the write
