"""A user's own EE on this one: examples/custom-ee built with ansible-builder, as docs/using.md says.

The example is built as it stands, with what the test's machine adds: the image under test as its
base (`--build-arg EE_BASE_IMAGE`, where a user names a registry), the proxy's CA in ca/ (CA_BUNDLE,
as `make image` has it), the collection's tarball that `ansible-galaxy collection build` makes from
the example's acme_demo/ (built with the EE's own ansible-galaxy), and one more requirement:
`ansible-core==<the released core>`, which the patched core satisfies. jmespath comes from PyPI.
A requirement that another ansible-core would satisfy must fail the build, naming the patched core.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import hang
from harness.labels import CORE, PATCHED_CORE, patch_series_digest
from harness.scenarios import HUNG, Lab, Scenario, run_scenario
from harness.verdict import guarantee_problems

# one build for the module: under `--dist loadgroup` every test of it runs on one xdist worker
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("custom_ee")]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "custom-ee"
BUILDER = REPO / ".venv" / "bin" / "ansible-builder"
CONSTRAINT_LINE = f"The user requested (constraint) ansible-core=={PATCHED_CORE}"
LIMIT_S = 12


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def stage_example(dest: Path, ee_image: str, extra_requirements: str) -> Path:
    """examples/custom-ee copied to DEST with the collection's tarball and the CA in place."""
    shutil.copytree(EXAMPLE, dest)
    build = docker(
        "run", "--rm", "--user", f"{os.getuid()}:0", "-v", f"{dest}:/src", "-w", "/src", ee_image,
        "ansible-galaxy", "collection", "build", "acme_demo", "--output-path", "collections",
    )  # fmt: skip
    assert (dest / "collections" / "acme-demo-1.0.0.tar.gz").is_file(), build.stdout + build.stderr
    ca = os.environ.get("CA_BUNDLE")
    if ca:
        shutil.copy(ca, dest / "ca" / "proxy.pem")
    with (dest / "requirements.txt").open("a") as reqs:
        reqs.write(extra_requirements)
    return dest


def builder_build(project: Path, tag: str, ee_image: str) -> subprocess.CompletedProcess[str]:
    """`ansible-builder build` of PROJECT's execution-environment.yml on EE_IMAGE, tagged TAG."""
    if not BUILDER.exists():
        pytest.fail(f"{BUILDER} is missing: make venv")
    cmd = [
        str(BUILDER), "build", "--file", "execution-environment.yml", "--context", "context",
        "--tag", tag, "--container-runtime", "docker", "--build-arg", f"EE_BASE_IMAGE={ee_image}",
        "--verbosity", "3",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def custom_ee(tmp_path_factory: pytest.TempPathFactory, ee_image: str, session_id: str) -> Iterator[str]:
    """The example built on the image under test; yields its tag, removed afterwards."""
    tag = f"task-timeout-ee-custom:{session_id}"
    project = stage_example(
        tmp_path_factory.mktemp("custom-ee") / "custom-ee", ee_image, f"ansible-core=={CORE}\n"
    )
    result = builder_build(project, tag, ee_image)
    try:
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
        assert f"Requirement already satisfied: ansible-core=={CORE}" in result.stdout, result.stdout[-6000:]
        yield tag
    finally:
        docker("image", "rm", "-f", tag, check=False)


def run_in(image: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return docker("run", "--rm", image, *cmd, check=False, timeout=120)


def test_it_keeps_the_patched_core(custom_ee: str) -> None:
    version = run_in(custom_ee, "python3", "-m", "ansible_task_timeout", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"ansible-core {PATCHED_CORE} "), version.stdout
    assert f"sha256 {patch_series_digest()}" in version.stdout
    show = run_in(custom_ee, "pip", "show", "ansible-core")
    assert f"Version: {PATCHED_CORE}\n" in show.stdout, show.stdout + show.stderr
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", custom_ee).stdout)
    assert config["Entrypoint"] == ["/opt/builder/bin/entrypoint", "tini", "--"], config["Entrypoint"]
    assert "PIP_CONSTRAINT=/etc/task-timeout-ee/pip-constraints.txt" in config["Env"], config["Env"]


def test_the_collection_module_runs_with_the_python_requirement(custom_ee: str) -> None:
    listed = run_in(custom_ee, "ansible-galaxy", "collection", "list", "acme.demo")
    assert "acme.demo" in listed.stdout and "1.0.0" in listed.stdout, listed.stdout + listed.stderr
    result = run_in(custom_ee, "ansible", "localhost", "-m", "acme.demo.hello", "-a", "name=ee", "-o")
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"msg": "hello, ee"' in result.stdout and '"jmespath": "1.0.1"' in result.stdout, result.stdout


def test_the_frozen_host_fails_alone_in_it(lab: Lab, custom_ee: str) -> None:
    scenario = Scenario(
        "custom-ee-keyword",
        "keyword_task_timeout.yml",
        "target frozen while the module runs",
        phase=hang.module_running,
        action=hang.freeze,
    )
    outcome = run_scenario(
        lab, scenario, image=custom_ee, limit_s=LIMIT_S, outer_limit_s=90, limit_env="TT_UNUSED"
    )
    assert outcome.trigger is not None
    outcome.trigger.assert_fired()
    problems, _ = guarantee_problems(outcome.run, HUNG, outcome.healthy, "hang", LIMIT_S)
    assert len(outcome.healthy) == 5
    assert not problems, "\n".join(problems) + "\n" + outcome.run.describe()


@pytest.mark.parametrize("requirement", ["ansible-core==2.21.4", "ansible-core>=2.22"])
def test_a_requirement_for_another_core_fails_the_build_naming_the_patched_one(
    tmp_path: Path, ee_image: str, session_id: str, requirement: str
) -> None:
    tag = f"task-timeout-ee-custom:{session_id}-replaced"
    project = stage_example(tmp_path / "custom-ee", ee_image, f"{requirement}\n")
    result = builder_build(project, tag, ee_image)
    try:
        assert result.returncode != 0, "the build replaced the patched core:\n" + result.stdout[-4000:]
        assert CONSTRAINT_LINE in result.stdout + result.stderr, result.stdout[-4000:] + result.stderr[-2000:]
        assert docker("image", "inspect", tag, check=False).returncode != 0
    finally:
        docker("image", "rm", "-f", tag, check=False)
