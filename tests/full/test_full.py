"""task-timeout-ee-full: the ansible community package on the EE, built as a user's own EE is.

`make test-full` builds it (`make image-full`: full-ee/ through ansible-builder on the EE image)
and runs these. The `ansible==14.5.0` requirement is one that the patched core satisfies: the
build must keep it, not replace it with the released 2.21.5.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from harness import hang
from harness.dockerctl import docker
from harness.labels import PATCHED_CORE, patch_series_digest
from harness.runner import KEY_IN_EE, EEContainer, base_env, run_playbook, stage_project
from harness.scenarios import HUNG, Lab, Scenario, run_scenario
from harness.targets import inventory_ini
from harness.verdict import guarantee_problems

pytestmark = pytest.mark.integration

ANSIBLE = "14.5.0"
COLLECTIONS = ("community.general", "ansible.posix", "ansible.utils", "community.docker", "task_timeout.ee")
LIMIT_S = 12


@pytest.fixture(scope="session")
def full_image(engine: str) -> str:
    """The full EE (FULL_IMAGE, default task-timeout-ee-full:dev)."""
    image = os.environ.get("FULL_IMAGE", "task-timeout-ee-full:dev")
    if subprocess.run([engine, "image", "inspect", image], capture_output=True).returncode != 0:
        pytest.fail(f"image {image} not found: run `make image-full` first", pytrace=False)
    return image


def run_in(image: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return docker("run", "--rm", image, *cmd, check=False, timeout=180)


def test_the_collections_are_there(full_image: str) -> None:
    listed = run_in(full_image, "ansible-galaxy", "collection", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    found = {name for path in json.loads(listed.stdout).values() for name in path}
    missing = [c for c in COLLECTIONS if c not in found]
    assert not missing, f"missing collections: {missing} (found {len(found)})"
    show = run_in(full_image, "pip", "show", "ansible")
    assert f"Version: {ANSIBLE}\n" in show.stdout, show.stdout + show.stderr


def test_the_core_is_still_the_patched_one(full_image: str) -> None:
    version = run_in(full_image, "python3", "-m", "ansible_task_timeout", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"ansible-core {PATCHED_CORE} "), version.stdout
    assert f"sha256 {patch_series_digest()}" in version.stdout
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", full_image).stdout)
    assert labels["org.opencontainers.image.title"] == "task-timeout-ee-full", labels
    assert labels["io.github.task-timeout-ee.ansible-core"] == PATCHED_CORE, labels
    check = run_in(full_image, "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_community_modules_run_against_sshd_targets(lab: Lab, full_image: str) -> None:
    healthy = lab.healthy(3)
    project = lab.workdir / "full-collections"
    stage_project(project, "full_collections.yml", inventory_ini(healthy, KEY_IN_EE))
    ee = EEContainer.start(lab.session, full_image, lab.network, project, lab.key, tag="full")
    try:
        run = run_playbook(ee, "full_collections.yml", env=base_env("linear", forks=3), outer_limit_s=150)
    finally:
        ee.remove()
    assert run.rc == 0, run.describe()
    for host in healthy:
        for task in ("ini", "authorized key"):
            (result,) = run.results(host, task)
            assert result["event"] == "ok" and result["result"].get("changed") is True, result
        (paths,) = run.results(host, "paths")
        assert paths["result"]["msg"] == {"a.b": 1}, paths


def test_the_frozen_host_fails_alone_in_it(lab: Lab, full_image: str) -> None:
    scenario = Scenario(
        "full-keyword",
        "keyword_task_timeout.yml",
        "target frozen while the module runs",
        phase=hang.module_running,
        action=hang.freeze,
    )
    outcome = run_scenario(
        lab, scenario, image=full_image, limit_s=LIMIT_S, outer_limit_s=90, limit_env="TT_UNUSED"
    )
    assert outcome.trigger is not None
    outcome.trigger.assert_fired()
    problems, _ = guarantee_problems(outcome.run, HUNG, outcome.healthy, "hang", LIMIT_S)
    assert len(outcome.healthy) == 5
    assert not problems, "\n".join(problems) + "\n" + outcome.run.describe()
