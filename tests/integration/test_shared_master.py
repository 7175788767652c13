"""A timeout ends only what is its own: hosts that share one ControlPersist master.

ansible derives a ControlPath from the delegated-to host, port and user, so six hosts that
delegate a task to one shared host (a bastion, a load balancer in a rolling update) all talk
through one ssh master. One of them, `hung`, runs a command that never returns and passes its
8 s limit while the five others are in the middle of a 14 s command under a larger limit. The
five commands must complete with their own output and every host must run the later tasks: a
timeout may end its own ssh session, never the shared master that serves the others. Both
limits are checked: this image's `task_timeout`, and upstream's `timeout`, hardened the same way.
"""

from __future__ import annotations

import pytest
from harness.dockerctl import docker
from harness.runner import KEY_IN_EE, EEContainer, base_env, run_playbook, stage_project
from harness.scenarios import HUNG, Lab
from harness.targets import BECOME_PASSWORD, SSH_USER, inventory_ini
from harness.verdict import AFTER_TASKS

pytestmark = pytest.mark.integration

HUNG_LIMIT_S = 8
BUSY_S = 14
"""Long enough that the five are mid-command when `hung` times out, on a loaded machine too."""
HEALTHY_LIMIT_S = 60


def _inventory(lab: Lab) -> tuple[str, list[str]]:
    healthy = lab.healthy(5)
    hosts = {**healthy, HUNG: lab.pool.aliases[5]}
    text = inventory_ini(hosts, KEY_IN_EE, hung=[HUNG])
    text += "\n".join(
        [
            "[gateway]",
            f"shared ansible_host={lab.pool.aliases[-1]} ansible_user={SSH_USER}"
            f" ansible_ssh_private_key_file={KEY_IN_EE} ansible_python_interpreter=/usr/bin/python3"
            f" ansible_become_password={BECOME_PASSWORD}",
            "",
        ]
    )
    return text, list(healthy)


@pytest.mark.parametrize("keyword", ["task_timeout", "timeout"])
def test_timeout_spares_the_shared_master(lab: Lab, ee_image: str, keyword: str) -> None:
    inventory, healthy = _inventory(lab)
    project = lab.workdir / f"shared-master-{keyword}"
    stage_project(project, "shared_master.yml", inventory)
    ee = EEContainer.start(lab.session, ee_image, lab.network, project, lab.key, tag=f"shared-{keyword}")
    try:
        env = base_env("linear", forks=len(healthy) + 1)
        env.update(
            TT_KEYWORD=keyword,
            TT_HUNG_LIMIT=str(HUNG_LIMIT_S),
            TT_HEALTHY_LIMIT=str(HEALTHY_LIMIT_S),
            TT_BUSY_S=str(BUSY_S),
            ANSIBLE_TASK_DEADLINE="0",
        )
        run = run_playbook(ee, "shared_master.yml", env=env, outer_limit_s=120)
    finally:
        ee.remove()
        # the hung command runs on the shared (pool) target: it is that host's, end it for the next tests
        docker("exec", lab.pool.name, "pkill", "-f", "^sleep 3599$", check=False, timeout=30)

    problems: list[str] = []
    if run.rc != 2:
        problems.append(f"ansible-playbook rc {run.rc}, expected 2 (one host failed)")
    hung = run.results(host=HUNG, task="hang")
    if not hung or hung[-1]["event"] != "failed":
        problems.append(f"{HUNG}: 'hang' did not fail: {[e['event'] for e in hung]}")
    elif keyword == "task_timeout" and (hung[-1].get("result") or {}).get("task_timeout") is not True:
        problems.append(f"{HUNG}: no task_timeout: true in {hung[-1].get('result')}")
    for host in healthy:
        finals = run.results(host=host, task="hang")
        event = finals[-1] if finals else {}
        got = (event.get("result") or {}).get("stdout")
        if event.get("event") != "ok" or got != f"start-{host}\ndone-{host}":
            msg = (event.get("result") or {}).get("msg")
            problems.append(f"{host}: 'hang' ended {event.get('event')!r}, stdout {got!r}, msg {msg!r}")
        for task in AFTER_TASKS:
            finals = run.results(host=host, task=task)
            if not finals or finals[-1]["event"] != "ok":
                problems.append(f"{host}: {task!r} did not end ok: {[e['event'] for e in finals]}")
    if run.leftovers:
        problems.append(f"leftover processes in the EE: {[p['cmdline'][:80] for p in run.leftovers]}")
    assert not problems, "\n".join(problems) + "\n" + run.describe()
