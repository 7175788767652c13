"""The frozen-host guarantee with the EE run by podman (AWX execution nodes, navigator's default).

Podman runs the EE differently from docker: its own runtime setup, `--user=root` from navigator
and AWX, no docker DNS. The targets stay docker containers (the freeze is `docker pause`); the EE
runs under podman in the host's network namespace and reaches them by address. The image is
EE_IMAGE copied from docker (`docker save | podman load`), or PODMAN_EE_IMAGE, an image built by
podman itself (`scripts/build-image --engine podman`), when that is set.

On hosts without CAP_SYS_RESOURCE (this CI's sandbox) podman's default rlimits cannot be applied
("error setting rlimit type 7: operation not permitted"), so the EE gets explicit, lower ones.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import hang
from harness.dockerctl import label_args
from harness.runner import (
    _PS_SCRIPT,
    KEY_IN_EE,
    PLUGINS_DIR,
    PLUGINS_IN_EE,
    PROJECT_IN_EE,
    RunResult,
    base_env,
    is_expected_process,
    parse_events,
    stage_project,
)
from harness.scenarios import HUNG, Lab
from harness.targets import inventory_ini, start_target
from harness.verdict import guarantee_problems

pytestmark = pytest.mark.integration

PODMAN = shutil.which("podman")
EE_IMAGE = os.environ.get("EE_IMAGE", "task-timeout-ee:dev")
PODMAN_EE_IMAGE = os.environ.get("PODMAN_EE_IMAGE", "")
"""An image built by podman itself (scripts/build-image --engine podman); empty: copy EE_IMAGE."""
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
LIMIT_S = int(os.environ.get("TT_LIMIT_S", "10"))
"""Also bounds a healthy host's first task (ssh handshake + module): over 6 s now and then on 2 busy cores."""
OUTER_LIMIT_S = 90.0
HEALTHY = 2
_n = itertools.count(1)


def podman(*args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS` bounded; fail with its stderr."""
    assert PODMAN is not None
    proc = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def leftovers(name: str, settle_s: float = 5.0) -> list[dict]:
    """Unexpected processes in the podman EE, polled until none are left or `settle_s` passed."""
    deadline = time.monotonic() + settle_s
    while True:
        table = json.loads(podman("exec", name, "python3", "-c", _PS_SCRIPT).stdout)
        left = [p for p in table if not is_expected_process(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="module")
def podman_image(ee_image: str) -> str:
    """The EE in podman's store: PODMAN_EE_IMAGE if set, else EE_IMAGE copied over from docker.

    The copy is refreshed whenever its id differs from docker's (a rebuilt EE_IMAGE), so podman
    never runs a stale image under the name of the one under test.
    """
    if PODMAN is None:
        # `make test` installs podman (host-deps): missing there is a failure, not a skip
        if os.environ.get("TT_REQUIRE_PODMAN") == "1":
            pytest.fail(
                "podman is not installed, and make test needs it: apt-get install podman", pytrace=False
            )
        pytest.skip("podman is not installed (apt-get install podman)")
    if PODMAN_EE_IMAGE:
        if podman("image", "inspect", PODMAN_EE_IMAGE, check=False).returncode != 0:
            pytest.fail(f"PODMAN_EE_IMAGE={PODMAN_EE_IMAGE} is not in podman's store", pytrace=False)
        return PODMAN_EE_IMAGE
    want = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", ee_image], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    copy = f"localhost/{ee_image}"
    have = podman("image", "inspect", "-f", "{{.Id}}", copy, check=False).stdout.strip()
    if not want or want.removeprefix("sha256:") != have.removeprefix("sha256:"):
        save = subprocess.Popen(["docker", "save", ee_image], stdout=subprocess.PIPE)
        try:
            subprocess.run([PODMAN, "load"], stdin=save.stdout, capture_output=True, check=True, timeout=300)
        finally:
            save.kill()
            save.wait()
        podman("tag", ee_image, copy)
    return copy


@pytest.fixture
def podman_ee(lab: Lab, podman_image: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A long-lived podman EE (host network, lab key installed); removed afterwards."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "out").mkdir()
    os.chmod(project, 0o755)
    os.chmod(project / "out", 0o777)
    name = f"{lab.session}-podman-ee-{next(_n)}"
    podman(
        "run", "-d", "--name", name, *label_args(lab.session), "--network", "host", *ULIMITS,
        "-v", f"{project}:{PROJECT_IN_EE}", "-v", f"{PLUGINS_DIR}:{PLUGINS_IN_EE}:ro",
        "-v", f"{lab.key.private}:/tmp/tt-key-src:ro",
        podman_image, "sleep", "infinity",
        timeout=120,
    )  # fmt: skip
    try:
        uid = podman("exec", name, "id", "-u").stdout.strip()
        install = (
            f"install -d -m 0700 -o {uid} /tmp/tt-ssh && install -m 0600 -o {uid} /tmp/tt-key-src {KEY_IN_EE}"
        )
        podman("exec", "-u", "0", name, "sh", "-c", install)
        yield name, project
    finally:
        podman("rm", "-f", name, check=False, timeout=60)


def test_podman_frozen_host(lab: Lab, podman_ee: tuple[str, Path]) -> None:
    """Under podman: the frozen host fails with task_timeout in time; the others finish."""
    name, project = podman_ee
    n = next(_n)
    victim = start_target(
        lab.session, lab.network, lab.key, f"{lab.session}-victim-podman-{n}", [f"hung-pm-{n}"]
    )
    try:
        pool_ip = lab.pool.ip
        healthy = {f"ok{i:02d}": pool_ip for i in range(1, HEALTHY + 1)}
        inventory = inventory_ini({**healthy, HUNG: victim.ip}, KEY_IN_EE, hung=[HUNG])
        stage_project(project, "hang_remote.yml", inventory)
        env = base_env("linear", forks=HEALTHY + 1)
        env["ANSIBLE_TASK_DEADLINE"] = str(LIMIT_S)
        env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
        trigger = hang.PhaseTrigger(victim, hang.module_running, hang.freeze, "freeze-podman").start()
        inner = str(int(OUTER_LIMIT_S) - 5)
        cmd = [
            PODMAN, "exec", "-w", PROJECT_IN_EE, *env_args, name,
            "timeout", "-k", "3", inner, "ansible-playbook", "-i", "inventory.ini", "hang_remote.yml",
        ]  # fmt: skip
        started, t0 = time.time(), time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=OUTER_LIMIT_S)
        finally:
            trigger.stop()
        wall = time.monotonic() - t0
        trigger.assert_fired()
        hit = proc.returncode in (124, 137)
        events = parse_events(project / "out" / "results.jsonl")
        left = leftovers(name)
        run = RunResult(
            None if hit else proc.returncode, hit, wall, proc.stdout, proc.stderr, events, left, started
        )
        problems, elapsed = guarantee_problems(run, HUNG, list(healthy), "hang", LIMIT_S)
        assert not problems, "\n".join(problems) + "\n" + run.describe()
        print(f"podman: wall {wall:.1f} s, frozen host failed {elapsed:.2f} s after its task started")
    finally:
        victim.remove()
