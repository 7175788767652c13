"""The built EE image: init, users, contents, metadata, and what the build must not leave behind."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from harness.distcheck import RECORD_SCRIPT
from harness.labels import CORE, LINE, PATCHED_CORE, oci_label_problems, patch_series_digest, patches

ROOT = Path(__file__).resolve().parents[2]

# Reads the process table with psutil, as a job inside the EE would see it.
PS_SCRIPT = (
    "import json, psutil; print(json.dumps([p.info for p in "
    "psutil.process_iter(['pid', 'ppid', 'name', 'status', 'cmdline'])]))"
)


def processes(host: Any) -> list[dict[str, Any]]:
    return json.loads(host.check_output("python3 -c %s", PS_SCRIPT))


LOCK = (ROOT / "locks" / f"{LINE}.lock").read_text()


def pinned(name: str) -> str:
    """The version the line's lock (locks/<line>.lock) pins NAME to."""
    m = re.search(rf"^{re.escape(name)}==([^\s;]+)", LOCK, re.M | re.I)
    assert m, f"{name} is not pinned in locks/{LINE}.lock"
    return m[1]


def test_image_size_is_reported(image_config: dict[str, Any]) -> None:
    size_mb = image_config["Size"] / 1e6
    print(f"\nEE image size: {size_mb:.0f} MB uncompressed")
    assert size_mb <= 300, f"image is {size_mb:.0f} MB, over the 300 MB budget"


def test_pid1_is_tini(host: Any) -> None:
    assert host.file("/proc/1/comm").content_string.strip() == "tini"


def test_orphans_are_reaped(host: Any) -> None:
    """A process orphaned inside the container ends without leaving a zombie."""
    pid = int(host.check_output("sh -c 'sleep 1 >/dev/null 2>&1 & echo $!'"))
    assert any(p["pid"] == pid and p["ppid"] == 1 for p in processes(host)), "orphan was not re-parented"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not any(p["pid"] == pid for p in processes(host)):
            break
        time.sleep(0.2)
    else:
        leftover = [p for p in processes(host) if p["pid"] == pid]
        pytest.fail(f"orphan {pid} was not reaped by PID 1: {leftover}")
    assert not [p for p in processes(host) if p["status"] == "zombie"]


def test_without_tini_the_orphan_stays_a_zombie(container: Any) -> None:
    """The control for the test above: with sleep as PID 1, nothing reaps, so that test can fail."""
    host = container("--entrypoint", "env")  # env execs sleep: sleep is PID 1
    pid = int(host.check_output("sh -c 'sleep 0.2 >/dev/null 2>&1 & echo $!'"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        states = {p["pid"]: p["status"] for p in processes(host)}
        if states.get(pid) == "zombie":
            break
        time.sleep(0.2)
    assert states.get(pid) == "zombie"


def test_psutil_imports(host: Any) -> None:
    assert host.run("python3 -c 'import psutil; psutil.Process().children(recursive=True)'").rc == 0


def test_ansible_core_is_the_pinned_version(host: Any) -> None:
    out = host.check_output("ansible --version")
    assert f"ansible [core {pinned('ansible-core')}]" in out
    assert pinned("ansible-runner") in host.check_output("ansible-runner --version")


def test_pip_knows_the_patched_core(host: Any, image_config: dict[str, Any]) -> None:
    """pip and the image's label both say which core this is: no longer the core as released."""
    show = host.check_output("python3 -m pip show ansible-core")
    assert f"Version: {PATCHED_CORE}" in show.splitlines()
    assert "psutil" in next(line for line in show.splitlines() if line.startswith("Requires:"))
    assert image_config["Config"]["Labels"]["io.github.task-timeout-ee.ansible-core"] == PATCHED_CORE


def test_the_version_command_names_the_core_and_the_patch_set(host: Any) -> None:
    out = host.check_output("python3 -m ansible_task_timeout --version")
    series = patch_series_digest()
    assert out.splitlines()[0].startswith(f"ansible-core {PATCHED_CORE} ")
    assert f"sha256 {series}" in out, f"{out}\n(patches/ as checked out: {series})"


def test_every_installed_file_matches_its_record(host: Any) -> None:
    report = json.loads(host.check_output("python3 -c %s", RECORD_SCRIPT))
    assert not report["bad"], f"files that differ from their RECORD: {report['bad'][:20]}"
    assert report["counts"].get("ansible-core", 0) > 1000, report["counts"]
    assert report["counts"].get("psutil", 0) > 0, report["counts"]


def test_pip_check_is_clean(host: Any) -> None:
    result = host.run("python3 -m pip check")
    assert result.rc == 0, result.stdout + result.stderr


def test_a_requirement_on_the_released_core_keeps_the_patched_one(container: Any) -> None:
    """A derived image's `pip install ansible-core==<core>` (the `ansible` package's pin) is a no-op."""
    root = container("--user", "0")
    result = root.run(
        "PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-index 'ansible-core==%s' 'ansible-core~=%s'",
        CORE,
        CORE,
    )
    assert result.rc == 0, result.stdout + result.stderr
    assert f"Requirement already satisfied: ansible-core=={CORE}" in result.stdout
    assert f"({PATCHED_CORE})" in result.stdout
    assert PATCHED_CORE in root.check_output("python3 -m pip show ansible-core")


def test_patch_record_lists_every_patch(host: Any) -> None:
    """The image says which patches it carries, with their checksums, in the order applied."""
    site = host.check_output(
        "python3 -c %s", "import ansible, os; print(os.path.dirname(os.path.dirname(ansible.__file__)))"
    )
    record = host.file(f"{site}/ansible_task_timeout/patches.txt")
    assert record.exists
    series = patches(LINE)
    assert series, f"patches/{LINE}/ is empty"
    text = record.content_string
    for patch in series:
        digest = hashlib.sha256(patch.read_bytes()).hexdigest()
        assert patch.name in text and digest in text, f"{patch.name} (sha256 {digest}) not in the record"
    # the package the patches call, every module of it (the guardian is started as `python -m`)
    modules = "alarm, bounds, channels, guard, guardian, limit, proctree, sshmux, worker"
    assert host.run(f"python3 -c 'from ansible_task_timeout import {modules}'").rc == 0


def test_tools_an_ee_needs(host: Any) -> None:
    for tool in (
        "ssh",
        "ssh-agent",
        "ssh-add",
        "sshpass",
        "rsync",
        "tini",
        "ansible-playbook",
        "ansible-runner",
    ):
        assert host.exists(tool), f"{tool} is missing"


@pytest.mark.parametrize("path", ["/runner", "$HOME"])
def test_writable_as_every_user(host_as: Any, path: str) -> None:
    assert host_as.run(f'touch "{path}/.probe" && rm "{path}/.probe"').rc == 0, host_as.check_output("id")


def test_ansible_runs_as_every_user(host_as: Any) -> None:
    """A real module run: temp dirs, the module's Python and the result path all work for this user."""
    out = host_as.run("ansible localhost -m ansible.builtin.ping -o")
    assert out.rc == 0 and '"ping": "pong"' in out.stdout, out.stdout + out.stderr


def test_user_has_a_passwd_entry(host_as: Any) -> None:
    """ssh refuses to run for a uid without a passwd entry; the builder entrypoint adds one."""
    assert host_as.run("getent passwd $(id -u)").rc == 0


def test_metadata(image_config: dict[str, Any]) -> None:
    config = image_config["Config"]
    assert config["Labels"]["ansible-execution-environment"] == "true"
    assert config["WorkingDir"] == "/runner"
    assert config["User"] == "1000"
    assert config["Entrypoint"] == ["/opt/builder/bin/entrypoint", "tini", "--"]


def test_oci_labels(image_config: dict[str, Any]) -> None:
    problems = oci_label_problems(image_config["Config"]["Labels"])
    assert not problems, problems


def test_no_build_settings_in_the_environment(image_config: dict[str, Any]) -> None:
    env = dict(e.split("=", 1) for e in image_config["Config"]["Env"])
    leaked = {
        k
        for k in env
        if re.search(r"proxy|PIP_(CERT|INDEX|FIND|NO_INDEX|TRUSTED)|CA_BUNDLE|SSL_CERT", k, re.I)
    }
    assert not leaked, f"build-time settings left in the image's environment: {leaked}"


def test_no_build_leftovers_on_disk(container: Any) -> None:
    host = container("--user", "0")  # root, to see into /root
    for path in (
        "/output",
        "/build",
        "/tmp/wheels",
        "/tmp/build-ca",
        "/tmp/task-timeout",
        "/root/.cache/pip",
    ):
        assert not host.file(path).exists, f"{path} is left in the image"
    assert not host.run("ls /var/lib/apt/lists/ | grep _Packages").stdout.strip(), "apt lists left behind"


def _certificates(pem: str) -> set[str]:
    """The base64 bodies of the certificates in a PEM bundle, one line each."""
    return {
        "".join(m.split())
        for m in re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S)
    }


def test_build_time_ca_is_in_no_layer(engine: str, ee_image: str, host: Any, tmp_path: Path) -> None:
    """The CA bundle handed to the build (CA_BUNDLE) is in no layer, nor in the image's config or history.

    The extra CAs are those of the handed-in bundle that Debian's ca-certificates does not
    ship; each must appear nowhere in the saved image, in any of its forms (PEM lines).
    """
    bundle = os.environ.get("CA_BUNDLE", "")
    if not bundle:
        pytest.skip("the image was built without CA_BUNDLE: there is no build-time CA to look for")
    # Public trust anchors that Debian and pip ship anyway, in the image and on the host.
    shipped = "/usr/share/ca-certificates/mozilla/*.crt"
    shipped += " /usr/lib/python3/dist-packages/pip/_vendor/certifi/*.pem"
    public = _certificates(host.check_output(f"cat {shipped}"))
    for crt in Path("/usr/share/ca-certificates").glob("mozilla/*.crt"):
        public |= _certificates(crt.read_text())
    extra = _certificates(Path(bundle).read_text()) - public
    assert extra, "the handed-in bundle holds no CA beyond the public ones; nothing would prove the check"
    # Match on a 64-character PEM line of each CA: the way it would sit in any file.
    needles = [body[64:128].encode() for body in extra]
    archive = tmp_path / "image.tar"
    subprocess.run([engine, "save", "-o", str(archive), ee_image], check=True)
    hits: list[str] = []
    with tarfile.open(archive) as outer:
        for member in outer:
            if not member.isfile():
                continue
            data = outer.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    for f in layer:
                        if f.isfile():
                            content = layer.extractfile(f).read()  # type: ignore[union-attr]
                            hits += [f"{member.name}:{f.name}" for n in needles if n in content]
            else:
                hits += [member.name for n in needles if n in data]
    assert not hits, f"the build-time CA is left in the image: {hits}"


def test_check_context_passes() -> None:
    out = subprocess.run(["make", "-s", "check-context"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
