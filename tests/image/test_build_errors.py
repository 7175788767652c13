"""Bad input to the image build: one clear line each, and the :dev image is never replaced."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness.labels import LINE, PATCHED_CORE

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-image"
LOCAL_BASE = "localhost/debian:trixie"
LABEL = "task-timeout-ee.test"  # tests/harness/dockerctl.py: what the suite and the benchmarks create


def build(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUILD), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def image_id(engine: str, ref: str) -> str | None:
    out = subprocess.run([engine, "image", "inspect", "-f", "{{.Id}}", ref], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def unlabelled_containers(engine: str) -> list[str]:
    """Containers in any state that no test or benchmark labelled: what a build may leave behind."""
    out = subprocess.run(
        [engine, "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Labels}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.split()[0] for line in out.stdout.splitlines() if line and LABEL not in line]


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--engine", "nerdctl"], {}, "unknown CONTAINER_ENGINE 'nerdctl'"),
        ([], {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}, "docker does not answer"),
        (["--base", "localhost/no-such-base:1"], {}, "run `make base`"),
        (["--ca-bundle", "/nonexistent/ca.pem"], {}, "CA bundle '/nonexistent/ca.pem' does not exist"),
        (["--ca-bundle", "/etc/hostname"], {}, "holds no PEM certificate"),
    ],
    ids=["unknown-engine", "engine-down", "missing-base", "missing-ca", "not-a-ca"],
)
def test_bad_input_gives_one_clear_line(
    engine: str, ee_image: str, args: list[str], env: dict[str, str], expected: str
) -> None:
    before = image_id(engine, ee_image)
    result = build("--tag", ee_image, *args, env=env)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, f"more than one line: {result.stderr!r}"
    assert expected in last_line(result)
    assert last_line(result).startswith("build-image: ")
    assert image_id(engine, ee_image) == before


def test_make_reports_an_unknown_engine() -> None:
    result = subprocess.run(
        ["make", "-s", "image", "CONTAINER_ENGINE=nerdctl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "nerdctl" in result.stderr


def test_a_patch_that_does_not_apply_fails_the_build(engine: str, ee_image: str, tmp_path: Path) -> None:
    """A broken patch stops the build naming itself; :dev keeps the last good image, no tag is left."""
    context = tmp_path / "context"
    shutil.copytree(ROOT / "context", context, ignore=shutil.ignore_patterns("*.pem", "*.whl"))
    (context / "_build" / "task-timeout" / "patches" / LINE / "9999-does-not-apply.patch").write_text(
        "Why: a hunk whose context is not in ansible-core.\n\n"
        "--- a/ansible/release.py\n+++ b/ansible/release.py\n"
        "@@ -1,3 +1,3 @@\n-no such line\n+replacement\n no such context\n no such context either\n"
    )
    before = image_id(engine, ee_image)
    containers_before = set(unlabelled_containers(engine))
    probe = "task-timeout-ee:broken-patch-probe"
    # The same CA as `make image`, so every layer before the patches comes from the cache.
    ca = ["--ca-bundle", os.environ["CA_BUNDLE"]] if os.environ.get("CA_BUNDLE") else []
    line = ("--line", LINE, "--build-arg", f"ANSIBLE_CORE_VERSION={PATCHED_CORE}")
    result = build(
        "--context", str(context), "--base", LOCAL_BASE, *ca, *line, "--tag", probe, "--tag", ee_image
    )
    assert result.returncode != 0
    assert "9999-does-not-apply.patch does not apply to ansible-core" in result.stdout + result.stderr
    assert "no tag was changed" in last_line(result)
    assert image_id(engine, probe) is None
    assert image_id(engine, ee_image) == before
    leftovers = subprocess.run(
        [engine, "image", "ls", "-q", "localhost/task-timeout-ee-build"], capture_output=True, text=True
    ).stdout.split()
    assert not leftovers, "the temporary build tag was left behind"
    left = set(unlabelled_containers(engine)) - containers_before
    assert not left, f"the failed build left its step's container(s) behind: {left}"
