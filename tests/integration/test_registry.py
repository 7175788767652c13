"""The image through a real registry: push, pull by tag and by digest, navigator pulling it.

The registry is Debian's docker-registry (the CNCF distribution registry), started by the test on
a free loopback port with its storage in a temporary directory; docker (and podman, which `make
test` installs) speak plain HTTP to loopback registries. What `make push REGISTRY=...` does is
scripts/push; this drives the script directly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.labels import oci_label_problems
from harness.navigator import run_frozen_host_play
from harness.scenarios import Lab

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PUSH = REPO / "scripts" / "push"
VERSION = next(
    line.split(":=", 1)[1].strip()
    for line in (REPO / "Makefile").read_text().splitlines()
    if line.startswith("VERSION")
)


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry on 127.0.0.1:<free port>; yields `host:port`."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.fail(
            "docker-registry is not installed (make test installs it): apt-get install docker-registry"
        )
    root = tmp_path_factory.mktemp("registry")
    addr = f"127.0.0.1:{free_port()}"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n"
        f"  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {addr}\n"
    )
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{addr}/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not answer on {addr}: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.1)
        yield addr
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pushed(registry: str, ee_image: str) -> Iterator[dict[str, str]]:
    """`make push` of every tag the build made; {pushed reference: its repo digest}. Local tags removed."""
    repo = f"{registry}/ee"
    images = [ee_image, f"{ee_image.rsplit(':', 1)[0]}:{VERSION}"]
    result = subprocess.run(
        [str(PUSH), "--registry", repo, *images], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    refs = {}
    for line in result.stdout.splitlines():
        assert line.startswith("pushed "), line
        ref, digest = line.removeprefix("pushed ").split(" ", 1)
        refs[ref] = digest.strip("()")
    assert sorted(refs) == sorted(f"{repo}/{i.rsplit('/', 1)[-1]}" for i in images)
    for ref in refs:
        docker("image", "rm", ref)  # only the tag: the image stays under its own name
    try:
        yield refs
    finally:
        for ref in refs:
            docker("image", "rm", ref, check=False)


def test_docker_pulls_the_pushed_image_by_tag_and_by_digest(pushed: dict[str, str], ee_image: str) -> None:
    want = docker("image", "inspect", "-f", "{{.Id}}", ee_image).stdout.strip()
    for ref, digest in pushed.items():
        assert "@sha256:" in digest, digest
        assert docker("image", "inspect", ref, check=False).returncode != 0, f"{ref} was not removed"
        docker("pull", ref)
        assert docker("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip() == want
        docker("pull", digest)
        assert docker("image", "inspect", "-f", "{{.Id}}", digest).stdout.strip() == want
        labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", digest).stdout)
        assert not oci_label_problems(labels), oci_label_problems(labels)
        docker("image", "rm", digest, check=False)


def test_podman_pulls_it_by_tag_and_by_digest(pushed: dict[str, str], ee_image: str) -> None:
    podman = shutil.which("podman")
    if podman is None:
        if os.environ.get("TT_REQUIRE_PODMAN") == "1":
            pytest.fail("podman is not installed, and make test needs it: apt-get install podman")
        pytest.skip("podman is not installed (apt-get install podman)")
    want = docker("image", "inspect", "-f", "{{.Id}}", ee_image).stdout.strip().removeprefix("sha256:")
    ref, digest = next(iter(pushed.items()))
    for name in (ref, digest):
        pull = subprocess.run(
            [podman, "pull", "--tls-verify=false", name], capture_output=True, text=True, timeout=600
        )
        assert pull.returncode == 0, pull.stderr
        got = subprocess.run(
            [podman, "image", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert got == want, f"podman's {name} is {got}, docker's {ee_image} is {want}"
    subprocess.run([podman, "image", "rm", "-f", ref], capture_output=True, timeout=120)


def test_navigator_pulls_it_and_the_frozen_host_times_out(
    lab: Lab, pushed: dict[str, str], ssh_agent: str, tmp_path: Path
) -> None:
    ref = next(iter(pushed))
    docker("image", "rm", ref, check=False)  # an earlier test may have pulled it back
    run_frozen_host_play(lab, ref, ssh_agent, tmp_path, extra_args=("--pp", "missing"))
    assert docker("image", "inspect", ref, check=False).returncode == 0, "navigator did not pull the image"


def test_a_push_to_a_registry_that_is_down_is_one_line(ee_image: str) -> None:
    down = f"127.0.0.1:{free_port()}/ee"
    result = subprocess.run(
        [str(PUSH), "--registry", down, ee_image], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no registry answers at http://127.0.0.1:" in result.stderr


def test_a_push_of_an_image_that_does_not_exist_is_one_line(registry: str) -> None:
    result = subprocess.run(
        [str(PUSH), "--registry", f"{registry}/ee", "task-timeout-ee:no-such-tag"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "push: no local image task-timeout-ee:no-such-tag: run `make image` first"
