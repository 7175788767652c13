"""ansible-navigator runs of the demo play with a frozen host, and their verdict.

Most users meet an EE through navigator, which runs ansible-runner on the host and starts the EE
with `docker run` itself (its own mounts, `--user=$(id -u)`, the awx_display callback copied in).
The runs use the committed settings file as it is and add only what belongs to the lab: the image
under test, the targets' docker network (`--co=--network=...`), and the key, handed in the way
navigator documents, through an ssh-agent socket (SSH_AUTH_SOCK). The verdict comes from the
playbook artifact navigator writes: the frozen host failed with task_timeout, every other host
completed every task.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness import hang
from harness.dockerctl import docker
from harness.runner import PLAYBOOKS_DIR
from harness.scenarios import Lab
from harness.targets import inventory_ini, start_target
from harness.verdict import DEADLINE_SLACK_S, EARLY_MARGIN_S, timeout_msg_ok

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "ansible-navigator.yml"
DEMO_LIMIT_S = 10
"""The demo play's `task_timeout` (tests/playbooks/demo.yml): room for a healthy host's `sleep 2`
on two loaded cores."""
FROZEN = "demo3"
OUTER_LIMIT_S = 150.0
_n = itertools.count(1)


def navigator_cli() -> str:
    """ansible-navigator from the host venv (requirements-test.txt pins it)."""
    exe = REPO / ".venv" / "bin" / "ansible-navigator"
    path = str(exe) if exe.exists() else shutil.which("ansible-navigator")
    if path is None:
        pytest.fail("ansible-navigator is not installed: pip install -r requirements-test.txt")
    return path


def host_results(artifact: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(host, task name) -> the last result event navigator recorded for it."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for play in artifact.get("plays", []):
        for task in play.get("tasks", []):
            if "host" in task and "task" in task:
                found[(task["host"], task["task"])] = task
    return found


def run_frozen_host_play(
    lab: Lab, image: str, ssh_agent: str, tmp_path: Path, extra_args: tuple[str, ...] = ()
) -> None:
    """The demo play through navigator with IMAGE (EXTRA_ARGS: e.g. a pull policy); asserts the verdict."""
    n = next(_n)
    hosts = {"demo1": "ok01", "demo2": "ok02", FROZEN: f"hung-nav-{n}", "demo4": "ok03", "demo5": "ok04"}
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PLAYBOOKS_DIR / "demo.yml", project / "demo.yml")
    inventory = "\n".join(
        line
        for line in inventory_ini(hosts, "unused").splitlines()
        if not line.startswith("ansible_ssh_private_key_file=")
    )
    (project / "inventory.ini").write_text(inventory)
    home = tmp_path / "home"  # navigator/runner read ~/.ssh and write caches: keep the real HOME out
    home.mkdir()
    artifact_path = project / "artifacts" / "demo.json"
    victim = start_target(lab.session, lab.network, lab.key, f"{lab.session}-victim-nav-{n}", [hosts[FROZEN]])
    nav: subprocess.Popen[str] | None = None
    try:
        trigger = hang.PhaseTrigger(victim, hang.module_running, hang.freeze, "freeze-navigator").start()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "SSH_"))},
            "HOME": str(home),
            "SSH_AUTH_SOCK": ssh_agent,
            "ANSIBLE_NAVIGATOR_CONFIG": str(SETTINGS),
            "ANSIBLE_HOST_KEY_CHECKING": "False",  # runner passes ANSIBLE_* of the host into the EE
        }
        cmd = [
            navigator_cli(), "run", "demo.yml", "-i", "inventory.ini",
            "--eei", image, f"--co=--network={lab.network.name}",
            "--pas", str(artifact_path), "--lf", str(tmp_path / "navigator.log"), *extra_args,
        ]  # fmt: skip
        t0 = time.monotonic()
        nav = subprocess.Popen(
            cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            out, _ = nav.communicate(timeout=OUTER_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ansible-navigator did not finish within {OUTER_LIMIT_S} s")
        wall = time.monotonic() - t0
        trigger.stop()
        context = f"navigator rc {nav.returncode}, wall {wall:.1f} s\n{out[-4000:]}"
        assert trigger.acted_at is not None, f"{FROZEN} was never frozen ({trigger.error!r})\n{context}"
        assert nav.returncode == 2, context
        assert artifact_path.exists(), f"no playbook artifact at {artifact_path}\n{context}"
        results = host_results(json.loads(artifact_path.read_text()))

        frozen = results.get((FROZEN, "work"))
        assert frozen is not None, f"no result for {FROZEN}/work in the artifact\n{context}"
        res = frozen.get("res", {})
        assert frozen.get("__result") == "Failed", frozen
        assert res.get("task_timeout") is True, res
        assert res.get("timedout") == {"period": DEMO_LIMIT_S}, res
        assert timeout_msg_ok(res.get("msg", ""), DEMO_LIMIT_S), res
        assert DEMO_LIMIT_S - EARLY_MARGIN_S <= frozen["duration"] <= DEMO_LIMIT_S + DEADLINE_SLACK_S, frozen
        assert (FROZEN, "report") not in results, "the frozen host went on after failing"
        for host in hosts:
            if host == FROZEN:
                continue
            for task in ("hello", "work", "report"):
                got = results.get((host, task))
                assert got is not None and got.get("__result") == "Ok", f"{host}/{task}: {got}"
            assert results[(host, "report")]["res"]["stdout"] == f"{host} finished"
        print(f"navigator: wall {wall:.1f} s")
    finally:
        if nav is not None and nav.poll() is None:
            nav.kill()
        # navigator names its container ansible_runner_<uuid>; remove any left on our network
        left = docker(
            "ps", "-aq", "--filter", f"network={lab.network.name}", "--filter", "name=ansible_runner_"
        )
        for cid in left.stdout.split():
            docker("rm", "-f", cid, check=False)
        victim.remove()
