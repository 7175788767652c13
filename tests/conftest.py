"""Fixtures shared by every layer of the suite.

The suite's layers, fastest first:
- tests/unit: the task-timeout modules, nothing but Python (stdlib, psutil) needed;
- tests/patched: the patched ansible-core itself (real ansible-playbook runs), in the container of
  scripts/core-tests (Python 3.13); skipped elsewhere;
- tests/bench: the benchmarks' arithmetic and report (host only: bench/ needs matplotlib);
- tests/image: the built EE image, checked with pytest-testinfra;
- tests/integration: real ansible-playbook runs inside the image against
  sshd targets that hang on purpose.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness.labels import DEFAULT_LINE, LINE

# The Makefile exports the images of the line under test; run by hand, the same defaults.
_ON_DEFAULT = LINE == DEFAULT_LINE
EE_IMAGE = os.environ.get("EE_IMAGE", "task-timeout-ee:dev" if _ON_DEFAULT else f"task-timeout-ee:core{LINE}")
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


# --- integration harness: targets, EE runs, hang scenarios --------------------------------------
# The helpers live in the package tests/harness (dockerctl, targets, hang, runner, scenarios,
# verdict); the fixtures below own the lifetime of what they create (labelled, removed at
# teardown even on failure).

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/harness, the package

if TYPE_CHECKING:
    from harness.scenarios import Lab
    from harness.targets import Network, SshKey

STOCK_IMAGE = os.environ.get(
    "STOCK_IMAGE", "task-timeout-ee:stock" if _ON_DEFAULT else f"task-timeout-ee:stock-core{LINE}"
)
POOL_SIZE = int(os.environ.get("TT_POOL_SIZE", "40"))
"""Network aliases (= inventory hosts) served by the per-session pool container."""


def pytest_configure(config: pytest.Config) -> None:
    """Register the `stock` marker (stock reference runs; deselect with -m "not stock")."""
    config.addinivalue_line(
        "markers", "stock: stock-ansible reference runs (evidence, not a check of the patches)"
    )


@pytest.fixture(scope="session")
def session_id() -> str:
    """Names and labels everything this session (this xdist worker) creates."""
    from harness.targets import new_session_id

    return new_session_id()


@pytest.fixture(scope="session")
def swept(engine: str, session_id: str) -> list[str]:
    """Remove labelled containers/networks of sessions that are over, before creating ours."""
    from harness.dockerctl import sweep_stale

    return sweep_stale(session_id)


@pytest.fixture(scope="session")
def target_image(engine: str) -> str:
    """The sshd target image (TARGET_IMAGE, default task-timeout-ee-target:dev; top-level Containerfile)."""
    from harness.targets import TARGET_IMAGE

    if subprocess.run([engine, "image", "inspect", TARGET_IMAGE], capture_output=True).returncode != 0:
        pytest.fail(f"image {TARGET_IMAGE} not found: build the top-level Containerfile first", pytrace=False)
    return TARGET_IMAGE


@pytest.fixture(scope="session")
def stock_image(engine: str) -> str:
    """The EE built without the patches (STOCK_IMAGE, default task-timeout-ee:stock)."""
    if subprocess.run([engine, "image", "inspect", STOCK_IMAGE], capture_output=True).returncode != 0:
        pytest.fail(f"image {STOCK_IMAGE} not found: build the stock EE first", pytrace=False)
    return STOCK_IMAGE


@pytest.fixture(scope="session")
def venv_image(engine: str) -> str:
    """Plain Debian with the wheel in a virtualenv (VENV_IMAGE, default task-timeout-ee-venv:core<line>)."""
    image = os.environ.get("VENV_IMAGE", f"task-timeout-ee-venv:core{LINE}")
    if subprocess.run([engine, "image", "inspect", image], capture_output=True).returncode != 0:
        pytest.fail(f"image {image} not found: run `make venv-image` first", pytrace=False)
    return image


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshKey]:
    """A fresh ed25519 keypair for this session (targets.SshKey); the key dir is deleted afterwards."""
    from harness.targets import make_ssh_key

    directory = tmp_path_factory.mktemp("ssh")
    yield make_ssh_key(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def session_network(swept: list[str], session_id: str) -> Iterator[Network]:
    """A private docker network for this session."""
    from harness.targets import Network

    net = Network.create(session_id)
    yield net
    net.remove()


@pytest.fixture(scope="session")
def lab(
    target_image: str,
    session_id: str,
    session_network: Network,
    ssh_key: SshKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Lab]:
    """Network + key + one pool container answering for POOL_SIZE healthy hosts (ok01, ok02, ...)."""
    from harness.scenarios import Lab
    from harness.targets import start_target

    aliases = [f"ok{i:02d}" for i in range(1, POOL_SIZE + 1)]
    pool = start_target(session_id, session_network, ssh_key, f"{session_id}-pool", aliases)
    try:
        yield Lab(session_id, session_network, ssh_key, pool, tmp_path_factory.mktemp("runs"))
    finally:
        pool.remove()


@pytest.fixture
def ssh_agent(lab: Lab, tmp_path: Path) -> Iterator[str]:
    """A private ssh-agent holding the lab key; yields its socket path, kills the agent by pid."""
    sock = tmp_path / "agent" / "agent.sock"
    sock.parent.mkdir()
    out = subprocess.run(
        ["ssh-agent", "-s", "-a", str(sock)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    pid = int(out.split("SSH_AGENT_PID=", 1)[1].split(";", 1)[0])
    try:
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(
            ["ssh-add", str(lab.key.private)], env=env, check=True, capture_output=True, timeout=30
        )
        yield str(sock)
    finally:
        os.kill(pid, signal.SIGTERM)
