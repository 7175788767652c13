"""Fixtures for checks of the built EE image: running containers of it, as testinfra hosts."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import testinfra

LABEL = "task-timeout-ee.test"


def start_container(engine: str, image: str, *args: str) -> str:
    """Start IMAGE detached with a long-lived command, so its entrypoint (and tini) is PID 1's tree.

    `docker exec` bypasses the entrypoint; checks run that way see the container the way a
    job does, with tini as PID 1 and orphans re-parented to it.
    """
    name = f"tt-image-{uuid.uuid4().hex[:8]}"
    cmd = [
        engine,
        "run",
        "-d",
        "--name",
        name,
        "--label",
        f"{LABEL}=image",
        *args,
        image,
        "sleep",
        "infinity",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    _wait_for_entrypoint(engine, name)
    return name


def _wait_for_entrypoint(engine: str, name: str, timeout: float = 60.0) -> None:
    """Until the entrypoint has exec'd the command: before that, /etc/passwd may lack the uid it adds,
    and a `docker exec` then runs with HOME=/ (seen once under load on the 2.22 image). Not the
    harness's passwd check: some of these containers run without the builder entrypoint."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        probe = subprocess.run([engine, "exec", name, "pgrep", "-x", "sleep"], capture_output=True)
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(
        f"container {name}: its entrypoint did not start `sleep infinity` within {timeout} s"
    )


def remove_container(engine: str, name: str) -> None:
    subprocess.run([engine, "rm", "-f", name], capture_output=True)


@pytest.fixture
def container(engine: str, ee_image: str) -> Iterator[Callable[..., Any]]:
    """Start more containers of the EE with extra `run` options; all removed at teardown."""
    names: list[str] = []

    def start(*args: str) -> Any:
        names.append(start_container(engine, ee_image, *args))
        return testinfra.get_host(f"{engine}://{names[-1]}")

    yield start
    for name in names:
        remove_container(engine, name)


@pytest.fixture(scope="module")
def host(engine: str, ee_image: str) -> Iterator[Any]:
    """The EE as its default user (uid 1000), as a testinfra host."""
    name = start_container(engine, ee_image)
    try:
        yield testinfra.get_host(f"{engine}://{name}")
    finally:
        remove_container(engine, name)


@pytest.fixture(scope="module", params=["1000", "4242:0", "0"], ids=["uid1000", "arbitrary-uid-gid0", "root"])
def host_as(request: pytest.FixtureRequest, engine: str, ee_image: str) -> Iterator[Any]:
    """The EE as each user it must work as: the builder default, OpenShift-style, and root."""
    name = start_container(engine, ee_image, "--user", request.param)
    try:
        yield testinfra.get_host(f"{engine}://{name}")
    finally:
        remove_container(engine, name)


@pytest.fixture(scope="session")
def image_config(engine: str, ee_image: str) -> dict[str, Any]:
    """`docker image inspect` of the EE image."""
    out = subprocess.run([engine, "image", "inspect", ee_image], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)[0]
