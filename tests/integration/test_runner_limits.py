"""ansible-runner's whole-job limits and cancel, with runner inside the EE (as on AWX-on-k8s).

On AWX-on-k8s `ansible-runner worker` runs inside the EE and enforces the job template's timeout
(`job_timeout`), the global idle timeout (`idle_timeout`) and a user's Cancel (`cancel_callback`)
the only way it can: `os.killpg(ansible-playbook's group, SIGKILL)`. Since ansible-core 2.19 every
forked worker calls setsid(), so the worker, its ssh client and the module survive that kill,
reparented to PID 1 (notes/ee-build-and-tools.md §4.2). In a pod they die only with the pod; in a
long-lived EE (a podman execution node, a CI container, this test) they stay.

Each test drives `ansible_runner.run()` from a small Python driver inside a long-lived EE
container while one target is frozen (docker pause) mid-module and no task limit is set, so only
runner's limit can end the job. Then the job must have ended with runner's status (`timeout`,
`canceled`) in time, and nothing of the run may be alive in the container (psutil inside it).
The run guard (patches 0003 and 0008 of each line, a guardian process that ends everything of the
run when ansible-playbook dies) is what makes that last part hold.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest
from harness import hang
from harness.dockerctl import docker
from harness.runner import KEY_IN_EE, PROJECT_IN_EE, EEContainer, stage_project
from harness.scenarios import HUNG, Lab
from harness.targets import Target, inventory_ini, start_target

pytestmark = pytest.mark.integration

HEALTHY = 2
JOB_TIMEOUT_S = 15
IDLE_TIMEOUT_S = 10
RUNNER_POLL_S = 5.0
"""ansible-runner checks its limits once per pexpect wait (5 s): its own slack."""
OUTER_LIMIT_S = 120.0
_n = itertools.count(1)

DRIVER = r'''
"""Runs hang_remote.yml with ansible_runner.run() and prints one JSON line: status, rc, wall."""
import json, os, sys, time
import ansible_runner

mode, project = sys.argv[1], sys.argv[2]
cancel_file = os.path.join(project, "out", "cancel")
settings = {"job_timeout": {job}} if mode == "job_timeout" else {}
if mode == "idle_timeout":
    settings = {"idle_timeout": {idle}}
envvars = {
    "ANSIBLE_TASK_DEADLINE": "0",  # no task limit: only runner's limit may end the job
    "ANSIBLE_HOST_KEY_CHECKING": "False",
    "ANSIBLE_FORKS": "{forks}",
}
pdd = "/tmp/tt-runner-" + mode
os.makedirs(pdd, exist_ok=True)
t0 = time.monotonic()
r = ansible_runner.run(
    private_data_dir=pdd,
    project_dir=project,
    playbook="hang_remote.yml",
    inventory=os.path.join(project, "inventory.ini"),
    envvars=envvars,
    settings=settings,
    quiet=True,
    cancel_callback=(lambda: os.path.exists(cancel_file)) if mode == "cancel" else None,
)
print(json.dumps({"status": r.status, "rc": r.rc, "wall": time.monotonic() - t0}))
'''


def run_with_frozen_host(lab: Lab, image: str, mode: str) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Run the driver in `mode` against a target frozen mid-module; return (result, leftovers, note).

    For `cancel`, the cancel file is created as soon as the target is frozen (a polled condition),
    so runner cancels a job that is really stuck on the frozen host.
    """
    n = next(_n)
    tag = f"rl-{mode}-{n}"
    alias = f"hung-rl-{n}"
    project = lab.workdir / tag
    inventory = inventory_ini({**lab.healthy(HEALTHY), HUNG: alias}, KEY_IN_EE, hung=[HUNG])
    driver = DRIVER.replace("{job}", str(JOB_TIMEOUT_S)).replace("{idle}", str(IDLE_TIMEOUT_S))
    driver = driver.replace("{forks}", str(HEALTHY + 1))
    stage_project(project, "hang_remote.yml", inventory, {"driver.py": driver.encode()})
    victim = start_target(lab.session, lab.network, lab.key, f"{lab.session}-victim-{tag}", [alias])
    ee: EEContainer | None = None
    try:
        ee = EEContainer.start(lab.session, image, lab.network, project, lab.key, tag=tag)

        def freeze_then_cancel(target: Target) -> None:
            hang.freeze(target)
            if mode == "cancel":
                (project / "out" / "cancel").write_text("cancel\n")

        trigger = hang.PhaseTrigger(victim, hang.module_running, freeze_then_cancel, f"freeze-{mode}").start()
        try:
            proc = docker(
                "exec", "-w", PROJECT_IN_EE, ee.name, "python3", "driver.py", mode, PROJECT_IN_EE,
                timeout=OUTER_LIMIT_S,
            )  # fmt: skip
        finally:
            trigger.stop()
        trigger.assert_fired()
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        leftovers = ee.leftovers(settle_s=5.0)
        note = f"result {result}\nleftovers:\n" + "\n".join(
            f"  {p['pid']} ppid={p['ppid']} {p['status']} {p['cmdline'][:100]!r}" for p in leftovers
        )
        return result, leftovers, note
    finally:
        if ee is not None:
            ee.remove()
        victim.remove()


def assert_nothing_left(leftovers: list[dict[str, Any]], note: str) -> None:
    """Nothing of the run survives: first the setsid'd workers (the known leak), then anything."""
    workers = [p for p in leftovers if "ansible-playbook" in p["cmdline"] or "ansible-playboo" in p["name"]]
    assert not workers, f"ansible-playbook worker(s) outlived runner's killpg:\n{note}"
    assert not leftovers, f"processes of the run are still alive in the EE:\n{note}"


@pytest.mark.parametrize(
    ("mode", "status", "lower_s", "upper_s"),
    [
        ("job_timeout", "timeout", JOB_TIMEOUT_S, JOB_TIMEOUT_S + RUNNER_POLL_S + 5),
        ("idle_timeout", "timeout", IDLE_TIMEOUT_S, 60.0),
        ("cancel", "canceled", 0.0, 30.0),
    ],
)
def test_runner_limit_leaves_nothing_behind(
    lab: Lab, ee_image: str, mode: str, status: str, lower_s: float, upper_s: float
) -> None:
    """Runner ends the stuck job with its own status in time, and the EE holds nothing of the run."""
    t0 = time.monotonic()
    result, leftovers, note = run_with_frozen_host(lab, ee_image, mode)
    print(f"{mode}: {note} (test wall {time.monotonic() - t0:.1f} s)")
    assert result["status"] == status, note
    assert lower_s <= result["wall"] <= upper_s, f"runner ended after {result['wall']:.1f} s\n{note}"
    assert_nothing_left(leftovers, note)
