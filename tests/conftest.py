"""Fixtures shared by every layer of the suite.

The suite has three layers, fastest first:
- tests/unit: the task-timeout module and the patches, no container needed;
- tests/image: the built EE image, checked with pytest-testinfra;
- tests/integration: real ansible-playbook runs inside the image against
  sshd targets that hang on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

EE_IMAGE = os.environ.get("EE_IMAGE", "task-timeout-ee:dev")
CONTAINER_ENGINE = os.environ.get("CONTAINER_ENGINE", "docker")


@pytest.fixture(scope="session")
def engine() -> str:
    """The container engine CLI; fails (never skips) when it does not answer.

    A suite that silently skips its container tests on a machine without an
    engine would report green while proving nothing.
    """
    if shutil.which(CONTAINER_ENGINE) is None:
        pytest.fail(f"container engine {CONTAINER_ENGINE!r} is not installed", pytrace=False)
    probe = subprocess.run([CONTAINER_ENGINE, "info"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"{CONTAINER_ENGINE} does not answer: {probe.stderr.strip()}", pytrace=False)
    return CONTAINER_ENGINE


@pytest.fixture(scope="session")
def ee_image(engine: str) -> str:
    """The EE image under test (EE_IMAGE, default task-timeout-ee:dev); `make test` builds it."""
    probe = subprocess.run([engine, "image", "inspect", EE_IMAGE], capture_output=True)
    if probe.returncode != 0:
        pytest.fail(f"image {EE_IMAGE} not found: run `make image` first", pytrace=False)
    return EE_IMAGE
