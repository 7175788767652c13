"""The wheel without the EE: plain Debian trixie, `python3 -m venv`, `pip install` of the wheel.

The container (tests/venv/Containerfile, `make venv-image`) is a controller as many run it at
fleet scale: no container image of ours, no ansible.cfg of ours, only the wheel and its locked
dependencies pip-installed from a local wheelhouse. It must give the verdict the EE gives on the
frozen-host scenario, and pip must know exactly what it installed there.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from harness import hang
from harness.distcheck import RECORD_SCRIPT
from harness.labels import CORE, LINE, patch_series_digest
from harness.labels import PATCHED_CORE as PATCHED
from harness.scenarios import HUNG, Lab, Scenario, run_scenario
from harness.verdict import guarantee_problems

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 12


def venv_run(image: str, script: str) -> subprocess.CompletedProcess[str]:
    """`bash -c script` in a fresh container of the venv image; $RECORD_SCRIPT holds the checker."""
    cmd = [
        "docker",
        "run",
        "--rm",
        "--label",
        "task-timeout-ee.test=venv",
        "-e",
        f"RECORD_SCRIPT={RECORD_SCRIPT}",
    ]
    return subprocess.run([*cmd, image, "bash", "-c", script], capture_output=True, text=True, timeout=120)


def test_pip_installed_exactly_the_wheel_and_its_locked_dependencies(venv_image: str) -> None:
    result = venv_run(venv_image, 'python -c "$RECORD_SCRIPT" && pip check && pip list --format=freeze')
    assert result.returncode == 0, result.stderr
    report_line, *rest = result.stdout.splitlines()
    report = json.loads(report_line)
    assert not report["bad"], f"files that differ from their RECORD: {report['bad'][:20]}"
    assert report["counts"].get("ansible-core", 0) > 1000, report["counts"]
    freeze = [line for line in rest if "==" in line]
    assert f"ansible-core=={PATCHED}" in freeze, freeze
    locked = (ROOT / "locks" / f"{LINE}.lock").read_text().lower()
    for line in freeze:  # every package in the venv is the lock's version, nothing else came in
        name, version = line.lower().split("==")
        if name not in ("ansible-core", "pip"):  # pip: the venv's own, from python3-venv
            assert f"\n{name}=={version} " in locked, f"{line} is not in locks/{LINE}.lock"


def test_a_requirement_on_the_released_core_keeps_the_wheel(venv_image: str) -> None:
    result = venv_run(
        venv_image,
        f"pip install --no-index --find-links /wheelhouse 'ansible-core=={CORE}' && pip show ansible-core"
        " && ansible --version",
    )
    assert result.returncode == 0, result.stderr
    assert f"Requirement already satisfied: ansible-core=={CORE}" in result.stdout
    assert f"Version: {PATCHED}" in result.stdout
    assert f"ansible [core {CORE}]" in result.stdout  # ansible.release.__version__ stays upstream's


def test_the_version_command_names_the_core_and_the_patch_set(venv_image: str) -> None:
    result = venv_run(venv_image, "python -m ansible_task_timeout --version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ansible-core {PATCHED} ")
    assert f"sha256 {patch_series_digest()}" in result.stdout


def test_the_frozen_host_fails_alone_as_in_the_ee(lab: Lab, venv_image: str) -> None:
    scenario = Scenario(
        "venv-keyword",
        "keyword_task_timeout.yml",
        "target frozen while the module runs",
        phase=hang.module_running,
        action=hang.freeze,
    )
    outcome = run_scenario(
        lab, scenario, image=venv_image, limit_s=LIMIT_S, outer_limit_s=90, limit_env="TT_UNUSED"
    )
    assert outcome.trigger is not None
    outcome.trigger.assert_fired()
    problems, _ = guarantee_problems(outcome.run, HUNG, outcome.healthy, "hang", LIMIT_S)
    assert len(outcome.healthy) == 5
    assert not problems, "\n".join(problems) + "\n" + outcome.run.describe()
