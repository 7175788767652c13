"""scripts/build-wheel: the patched ansible-core as a wheel, checked as a file.

These run on the host (any Python >= 3.11 with the `wheel` package; the released wheel comes from
the package index once and is cached in .cache/upstream). Installing the wheel and running it is
tests/integration/test_wheel_venv.py's part: that needs a Python ansible-core 2.21 supports.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from harness.labels import CORE, LINE, LINES, LOCAL, PATCHED_CORE
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
BUILD = [sys.executable, str(REPO / "scripts" / "build-wheel")]
NAME = f"ansible_core-{PATCHED_CORE}-py3-none-any.whl"
DIST_INFO = f"ansible_core-{PATCHED_CORE}.dist-info"


def build(dest: Path, *args: str, line: str = LINE) -> subprocess.CompletedProcess[str]:
    cmd = [*BUILD, "--dest", str(dest), *(() if "--core-version" in args else ("--line", line)), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("dist")
    result = build(dest)
    assert result.returncode == 0, result.stderr
    return dest / NAME


def read(whl: Path, member: str) -> str:
    with zipfile.ZipFile(whl) as zf:
        return zf.read(member).decode()


def test_the_version_is_a_local_version_of_the_released_core(wheel: Path) -> None:
    metadata = read(wheel, f"{DIST_INFO}/METADATA")
    assert f"\nVersion: {PATCHED_CORE}\n" in metadata
    # what collections' requires_ansible and ansible_version compare stays the released one
    assert f"__version__ = '{CORE}'" in read(wheel, "ansible/release.py")
    version = Version(PATCHED_CORE)
    major, minor, _ = CORE.split(".")
    for spec in (f"=={CORE}", f"~={CORE}", f">={major}.{int(minor) - 1}", f"<{major}.{int(minor) + 1}"):
        assert SpecifierSet(spec).contains(version), spec


def test_psutil_is_a_declared_dependency_beside_upstreams(wheel: Path) -> None:
    metadata = read(wheel, f"{DIST_INFO}/METADATA")
    head = metadata.split("\n\n", 1)[0]
    requires = [
        line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Requires-Dist:")
    ]
    assert "psutil>=5.9" in requires
    assert any(r.startswith("jinja2") for r in requires), requires


def test_record_lists_every_file_with_its_hash(wheel: Path) -> None:
    record_name = f"{DIST_INFO}/RECORD"
    with zipfile.ZipFile(wheel) as zf:
        rows = list(csv.reader(io.StringIO(zf.read(record_name).decode())))
        listed = {row[0]: row for row in rows}
        members = [i.filename for i in zf.infolist() if not i.is_dir()]
        assert sorted(listed) == sorted(members)
        for name in members:
            if name == record_name:
                continue
            data = zf.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert listed[name][1:] == [f"sha256={digest}", str(len(data))], name


def test_the_patches_and_the_package_are_in_it(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert any(n.startswith("ansible_task_timeout") for n in names)
    assert "task_timeout" in read(wheel, "ansible/executor/task_executor.py")
    top = read(wheel, f"{DIST_INFO}/top_level.txt").split()
    assert {"ansible", "ansible_test"} <= set(top)
    assert any(t.startswith("ansible_task_timeout") for t in top)


def test_two_builds_are_byte_identical(wheel: Path, tmp_path: Path) -> None:
    again = build(tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / NAME).read_bytes() == wheel.read_bytes()


def test_install_requirements_pin_this_wheel_by_its_hash(wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "install.txt"
    result = build(tmp_path, "--install-requirements", str(out))
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f"ansible-core=={PATCHED_CORE} --hash=sha256:{digest}" in lines
    assert not any(line.startswith("wheel==") for line in lines), "a build-only tool would be installed"
    assert all("--hash=sha256:" in line for line in lines)
    assert any(line.startswith("psutil==") for line in lines)


def test_a_core_version_this_tree_does_not_build_is_refused(tmp_path: Path) -> None:
    other = f"{CORE.rsplit('.', 1)[0]}.99"  # the same line, another release
    result = build(tmp_path, "--core-version", other)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"builds ansible-core {PATCHED_CORE}" in result.stderr and other in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args", [("--line", "2.19"), ("--line", "banana"), ("--core-version", "2.19.0")])
def test_an_unsupported_line_is_refused_naming_the_supported_ones(
    tmp_path: Path, args: tuple[str, str]
) -> None:
    result = subprocess.run(
        [*BUILD, "--dest", str(tmp_path), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "unsupported ansible-core line" in result.stderr and ", ".join(sorted(LINES)) in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("line", sorted(set(LINES) - {LINE}))
def test_every_other_line_builds_its_own_core(tmp_path: Path, line: str) -> None:
    result = build(tmp_path, line=line)
    assert result.returncode == 0, result.stderr
    (whl,) = tmp_path.iterdir()
    assert whl.name == f"ansible_core-{LINES[line]}+{LOCAL}-py3-none-any.whl"
    assert f"__version__ = '{LINES[line]}'" in read(whl, "ansible/release.py")
    assert f"patches applied to ansible-core {LINES[line]}" in read(whl, "ansible_task_timeout/patches.txt")


def test_stock_passes_the_released_wheel_through(tmp_path: Path) -> None:
    result = build(tmp_path, "--core-version", CORE)
    assert result.returncode == 0, result.stderr
    (whl,) = tmp_path.iterdir()
    assert whl.name == f"ansible_core-{CORE}-py3-none-any.whl"
    with zipfile.ZipFile(whl) as zf:
        assert not any(n.startswith("ansible_task_timeout") for n in zf.namelist())


def test_an_upstream_wheel_the_lock_does_not_know_is_refused(wheel: Path, tmp_path: Path) -> None:
    fake = tmp_path / f"ansible_core-{CORE}-py3-none-any.whl"
    shutil.copyfile(wheel, fake)
    result = build(tmp_path / "out", "--upstream", str(fake))
    assert result.returncode == 1
    assert re.search(r"sha256 [0-9a-f]{64} is not the lock's", result.stderr), result.stderr


def test_a_lock_without_hashes_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / f"{LINE}.lock"
    lock.write_text(f"ansible-core=={CORE}\n")
    result = build(tmp_path / "out", "--lock", str(lock))
    assert result.returncode == 1
    assert f"ansible-core=={CORE} has no --hash" in result.stderr
