"""What a person sees, and the image's configuration defaults and how users override them.

The image ships /etc/ansible/ansible.cfg (image/ansible.cfg): a one-hour `task_deadline` backstop,
ssh keepalives, and the `task_timeout.ee.task_timeout_summary` callback that prints a one-line
notice when a host times out and a TASK TIMEOUTS section after the recap. These tests check the
defaults as ansible itself resolves them, that the two usual overrides (a project ansible.cfg, an
env var) win over them in a real frozen-host run, and that the summary appears with the default
stdout callback and under ansible-runner (awx_display: navigator, AWX).
"""

from __future__ import annotations

import itertools
import re

import pytest
from harness import hang
from harness.dockerctl import docker
from harness.runner import KEY_IN_EE, EEContainer, RunResult, base_env, run_playbook, stage_project
from harness.scenarios import HUNG, Lab
from harness.targets import inventory_ini, start_target
from harness.verdict import guarantee_problems, timeout_problems

pytestmark = pytest.mark.integration

IMAGE_DEADLINE_S = 3600
SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=60s -o ServerAliveInterval=15 -o ServerAliveCountMax=3"
SUMMARY_CALLBACK = "task_timeout.ee.task_timeout_summary"
HEALTHY = 3
ENV_DEADLINE_S = 11
PROJECT_DEADLINE_S = 12
"""Limits the overrides set: distinct from each other and from the image's, and long enough to leave a
margin to a healthy host's first task (ssh handshake + module), which on a loaded 2-core machine took
over 6 s now and then."""
OUTER_LIMIT_S = 90.0
_n = itertools.count(1)


def config_dump(image: str, shell: str = "") -> str:
    """`ansible-config dump --only-changed -t all` in a fresh EE container (after `shell`, if any)."""
    script = f"{shell} ansible-config dump --only-changed -t all"
    return docker("run", "--rm", image, "sh", "-c", script, timeout=60).stdout


def test_image_defaults(ee_image: str) -> None:
    """/etc/ansible/ansible.cfg is the config in force and sets deadline, keepalives and the summary."""
    dump = config_dump(ee_image)
    assert "CONFIG_FILE() = /etc/ansible/ansible.cfg" in dump, dump
    assert f"TASK_DEADLINE(/etc/ansible/ansible.cfg) = {IMAGE_DEADLINE_S}" in dump, dump
    assert f"ssh_args(/etc/ansible/ansible.cfg) = {SSH_ARGS}" in dump, dump
    assert f"CALLBACKS_ENABLED(/etc/ansible/ansible.cfg) = ['{SUMMARY_CALLBACK}']" in dump, dump


def test_overrides_resolve(ee_image: str) -> None:
    """ansible's own view: env beats the image file; a project ansible.cfg replaces it; ANSIBLE_CONFIG too."""
    env = config_dump(ee_image, "export ANSIBLE_TASK_DEADLINE=5;")
    assert "TASK_DEADLINE(env: ANSIBLE_TASK_DEADLINE) = 5" in env, env
    project = "mkdir -p /tmp/p && chmod 755 /tmp/p && cd /tmp/p"
    project += " && printf '[defaults]\\ntask_deadline = 4\\n' > ansible.cfg;"
    proj = config_dump(ee_image, project)
    assert "CONFIG_FILE() = /tmp/p/ansible.cfg" in proj, proj
    assert "TASK_DEADLINE(/tmp/p/ansible.cfg) = 4" in proj, proj
    assert "ServerAliveInterval" not in proj, "a project ansible.cfg replaces the image's file as a whole"
    cfg = "printf '[defaults]\\ntask_deadline = 7\\n' > /tmp/c.cfg; export ANSIBLE_CONFIG=/tmp/c.cfg;"
    assert "TASK_DEADLINE(/tmp/c.cfg) = 7" in config_dump(ee_image, cfg)


def frozen_run(lab: Lab, image: str, env: dict[str, str], files: dict[str, bytes] | None = None) -> RunResult:
    """hang_remote.yml with `hung` frozen (docker pause) while its module runs; always cleaned up."""
    n = next(_n)
    tag = f"cfg-{n}"
    alias = f"hung-cfg-{n}"
    healthy = lab.healthy(HEALTHY)
    project = lab.workdir / tag
    stage_project(
        project, "hang_remote.yml", inventory_ini({**healthy, HUNG: alias}, KEY_IN_EE, hung=[HUNG]), files
    )
    victim = start_target(lab.session, lab.network, lab.key, f"{lab.session}-victim-{tag}", [alias])
    ee: EEContainer | None = None
    try:
        ee = EEContainer.start(lab.session, image, lab.network, project, lab.key, tag=tag)
        trigger = hang.PhaseTrigger(victim, hang.module_running, hang.freeze, f"freeze-{tag}").start()
        try:
            run = run_playbook(ee, "hang_remote.yml", env=env, outer_limit_s=OUTER_LIMIT_S)
        finally:
            trigger.stop()
        trigger.assert_fired()
        return run
    finally:
        if ee is not None:
            ee.remove()
        victim.remove()


def test_default_stdout_shows_the_timeout_and_the_summary(lab: Lab, ee_image: str) -> None:
    """Image config in force (only the deadline set by env): the fatal line, the notice, the section."""
    env = base_env("linear", forks=HEALTHY + 1)
    for key in ("ANSIBLE_CALLBACK_PLUGINS", "ANSIBLE_CALLBACKS_ENABLED"):
        del env[key]  # keep the image's callbacks_enabled in force
    env["ANSIBLE_TASK_DEADLINE"] = str(ENV_DEADLINE_S)  # env beats the image's 3600
    run = frozen_run(lab, ee_image, env)
    out = run.stdout
    assert run.rc == 2, run.describe()
    fatal = [line for line in out.splitlines() if line.startswith(f"fatal: [{HUNG}]: FAILED!")]
    limit = ENV_DEADLINE_S
    assert fatal and f"Task execution timed out, limit is: {limit} second(s)" in fatal[0], run.describe()
    assert f'TASK TIMEOUT: [{HUNG}] "hang" exceeded its limit of {limit} s' in out, run.describe()
    recap = out.find("PLAY RECAP")
    section = out.find("TASK TIMEOUTS")
    assert 0 <= recap < section, f"no TASK TIMEOUTS section after the recap\n{run.describe()}"
    lines = [line for line in out[section:].splitlines()[1:] if line.strip()]
    assert re.match(rf'^{HUNG}\s+: task "hang" \(limit {limit} s\) in play ".+"$', lines[0]), lines
    assert lines[1] == "1 task(s) timed out", lines
    assert not any(h in "\n".join(lines) for h in lab.healthy(HEALTHY)), lines


def test_project_ansible_cfg_overrides_image_deadline(lab: Lab, ee_image: str) -> None:
    """A project ansible.cfg's task_deadline is the limit the frozen host actually gets."""
    env = base_env("linear", forks=HEALTHY + 1)  # no ANSIBLE_TASK_DEADLINE: the file decides
    cfg = f"[defaults]\ntask_deadline = {PROJECT_DEADLINE_S}\n".encode()
    run = frozen_run(lab, ee_image, env, {"ansible.cfg": cfg})
    problems, elapsed = timeout_problems(run, HUNG, "hang", PROJECT_DEADLINE_S)
    assert not problems, "\n".join(problems) + "\n" + run.describe()
    rest, _ = guarantee_problems(run, HUNG, list(lab.healthy(HEALTHY)), "hang", PROJECT_DEADLINE_S)
    assert not [p for p in rest if not p.startswith("leftover")], run.describe()
    assert "TASK TIMEOUTS" not in run.stdout, "the project file replaced the image's, callbacks included"
    print(f"project ansible.cfg: frozen host failed {elapsed:.2f} s after its task started")


def test_summary_under_ansible_runner(ee_image: str) -> None:
    """Under ansible-runner (awx_display stdout, runner's own ANSIBLE_CALLBACK_PLUGINS) the section shows.

    This is why the plugin is a collection callback: a callback_plugins directory in ansible.cfg
    would be hidden by the ANSIBLE_CALLBACK_PLUGINS that runner sets.
    """
    play = (
        "- hosts: localhost\\n  gather_facts: false\\n  tasks:\\n"
        "    - name: slow\\n      command: sleep 30\\n      task_timeout: 2\\n"
    )
    script = (
        f"mkdir -p /tmp/pd/project && printf -- '{play}' > /tmp/pd/project/p.yml"
        " && ansible-runner run /tmp/pd -p p.yml; echo rc=$?"
    )
    out = docker("run", "--rm", ee_image, "sh", "-c", script, timeout=90).stdout
    assert "rc=2" in out, out
    assert "Skipping callback plugin" not in out, out
    assert 'TASK TIMEOUT: [localhost] "slow" exceeded its limit of 2 s' in out, out
    section = out[out.find("PLAY RECAP") :]
    assert re.search(r'TASK TIMEOUTS \*+\nlocalhost : task "slow" \(limit 2 s\)', section), out
