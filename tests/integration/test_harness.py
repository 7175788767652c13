"""Self-tests of the hang harness: the ways to hang are real before anything is judged by them.

These do not depend on the patches (they pass on any EE image), so a red matrix can be told apart
from a broken harness.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from harness import hang
from harness.dockerctl import LABEL, OWNER_LABEL, docker, sweep_stale
from harness.runner import KEY_IN_EE, EEContainer, base_env, run_playbook, stage_project
from harness.scenarios import Lab
from harness.targets import TARGET_IMAGE, inventory_ini, start_target

pytestmark = pytest.mark.integration


def test_frozen_target_keeps_tcp_open_but_never_answers(lab: Lab) -> None:
    """docker pause = a host alive at the TCP level and dead above it (connect works, no banner)."""
    victim = start_target(lab.session, lab.network, lab.key, f"{lab.session}-frz", ["frz"])
    try:
        ip = victim.ip
        hang.freeze(victim)
        with socket.create_connection((ip, 22), timeout=5) as sock:
            sock.settimeout(2.0)
            with pytest.raises(socket.timeout):
                sock.recv(64)
    finally:
        victim.remove()


def test_memory_hog_really_exhausts_the_target(lab: Lab) -> None:
    """Under --memory 128m --oom-kill-disable the hog drives the cgroup into a real OOM stall."""
    victim = start_target(
        lab.session, lab.network, lab.key, f"{lab.session}-mem", ["mem"], memory_limit="128m"
    )
    try:
        hang.start_memory_hog(victim)
        evidence = hang.wait_for_memory_stall(victim, timeout=30)
        assert evidence.real, evidence
        assert evidence.oom_kill_disable
        assert evidence.limit_bytes == 128 * 1024 * 1024
    finally:
        victim.remove()


def test_sweep_removes_objects_of_dead_sessions(engine: str, session_id: str) -> None:
    """A labelled container whose owner process is gone is removed; our own are kept."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = f"{session_id}-stale"
    docker(
        "create", "--name", name, "--label", f"{LABEL}=old-session", "--label", f"{OWNER_LABEL}={dead.pid}",
        TARGET_IMAGE,
    )  # fmt: skip
    try:
        removed = sweep_stale(session_id)
        assert name in removed
        assert docker("inspect", name, check=False).returncode != 0
    finally:
        docker("rm", "-f", name, check=False)


def test_pool_serves_dozens_of_hosts(
    lab: Lab, ee_image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One pool container answers for 30 inventory hosts, each with its own connection and become."""
    hosts = lab.healthy(30)
    project = tmp_path_factory.mktemp("pool30")
    stage_project(project, "smoke.yml", inventory_ini(hosts, KEY_IN_EE))
    ee = EEContainer.start(lab.session, ee_image, lab.network, project, lab.key, tag="pool30")
    try:
        t0 = time.monotonic()
        run = run_playbook(ee, "smoke.yml", env=base_env("linear", forks=10), outer_limit_s=120, settle_s=0)
        wall = time.monotonic() - t0
    finally:
        ee.remove()
    assert run.rc == 0, run.describe()
    for host in hosts:
        whoami = run.results(host=host, task="whoami via sudo")
        assert whoami and whoami[-1]["result"]["stdout"] == "root", (host, whoami)
    assert wall < 90, f"30 hosts x 2 tasks took {wall:.0f} s"
    assert os.environ.get("PYTEST_XDIST_WORKER", "main") in lab.session
