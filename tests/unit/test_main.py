"""`python3 -m ansible_task_timeout --version`: the core, the patch set and its digest, or one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def run(pythonpath: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-s", "-m", "ansible_task_timeout", *args]
    env = {"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def installed(tmp_path: Path, record: str | None) -> Path:
    """A site dir as the wheel leaves it: the package (with RECORD), ansible, ansible-core's metadata."""
    site = tmp_path / "site"
    shutil.copytree(SRC / "ansible_task_timeout", site / "ansible_task_timeout")
    if record is not None:
        (site / "ansible_task_timeout" / "patches.txt").write_text(record)
    (site / "ansible").mkdir()
    (site / "ansible" / "__init__.py").write_text("")
    (site / "ansible" / "release.py").write_text("__version__ = '2.21.5'\n")
    meta = site / "ansible_core-2.21.5+tasktimeout.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(
        "Metadata-Version: 2.4\nName: ansible-core\nVersion: 2.21.5+tasktimeout.1\n"
    )
    return site


def test_version_names_the_core_and_the_patch_set(tmp_path: Path) -> None:
    record = (
        "# patches applied to ansible-core 2.21.5 by scripts/apply-patches (sha256  name)\n"
        "# series sha256: "
        + "ab" * 32
        + "\n"
        + "11" * 32
        + "  0001-first.patch\n"
        + "22" * 32
        + "  0002-second.patch\n"
    )
    result = run(installed(tmp_path, record), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ansible-core 2.21.5+tasktimeout.1 (ansible 2.21.5 as released, patched by task-timeout-ee)",
        "patch set: 2 patches (0001..0002), sha256 " + "ab" * 32,
    ]


def test_without_a_patch_record_it_says_so_in_one_line(tmp_path: Path) -> None:
    result = run(installed(tmp_path, None), "--version")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("ansible_task_timeout: no patched ansible-core here")
