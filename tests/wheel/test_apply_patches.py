"""scripts/apply-patches applies the series exactly, or fails naming the patch.

A hunk whose context changed (plain `patch` would apply it with fuzz), or that lands at an offset
from the line it names, means the function it hooks changed upstream; the build must stop there
rather than patch "close enough".
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from harness.labels import CORE

REPO = Path(__file__).resolve().parents[2]
APPLY = REPO / "scripts" / "apply-patches"
PATCHES = sorted((REPO / "patches").glob("*.patch"))


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The released wheel, as build-wheel fetches and checks it against the lock."""
    dest = tmp_path_factory.mktemp("released")
    cmd = [sys.executable, str(REPO / "scripts" / "build-wheel"), "--core-version", CORE, "--dest", str(dest)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return dest / f"ansible_core-{CORE}-py3-none-any.whl"


@pytest.fixture
def tree(released: Path, tmp_path: Path) -> Path:
    with zipfile.ZipFile(released) as zf:
        zf.extractall(tmp_path / "site")
    return tmp_path / "site"


def apply(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(APPLY), str(tree)], capture_output=True, text=True, timeout=60)


def first_unique_context(tree: Path) -> tuple[str, Path, str]:
    """(patch name, file, line): a first-hunk context line found exactly once in its pristine file."""
    for patch in PATCHES:
        text = patch.read_text()
        target = re.search(r"^\+\+\+ b/(\S+)", text, re.M)
        hunk = re.search(r"^@@ .*\n((?:[ +-].*\n)+)", text, re.M)
        if not target or not hunk:
            continue
        context = next(
            (line[1:] for line in hunk[1].splitlines() if line.startswith(" ") and line.strip()), None
        )
        path = tree / target[1]
        if context and path.exists() and path.read_text().splitlines().count(context) == 1:
            return patch.name, path, context
    raise AssertionError("no patch has a first-hunk context line that is unique in its file")


def test_the_series_applies_to_the_released_core(tree: Path) -> None:
    result = apply(tree)
    assert result.returncode == 0, result.stderr
    assert f"applied {len(PATCHES)} patches to ansible-core {CORE}" in result.stdout
    assert not list(tree.rglob("*.orig")) and not list(tree.rglob("*.rej"))


def test_a_hunk_whose_context_changed_fails_naming_its_patch(tree: Path) -> None:
    name, path, context = first_unique_context(tree)
    lines = path.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if line.rstrip("\n") == context)
    lines[index] = context + "  # changed upstream\n"
    path.write_text("".join(lines))
    result = apply(tree)
    assert result.returncode == 1
    assert "apply-patches:" in result.stderr and ".patch does not apply" in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0, "one line, not a patch log"
    # named: the patch whose hunk holds the edited line (or an earlier one whose hunk holds it too)
    touching = [p.name for p in PATCHES if f"+++ b/{path.relative_to(tree)}" in p.read_text()]
    named = [n for n in touching if n in result.stderr]
    assert named and touching.index(named[0]) <= touching.index(name), result.stderr


def test_a_hunk_at_an_offset_fails_naming_its_patch(tree: Path) -> None:
    _, path, _ = first_unique_context(tree)
    lines = path.read_text().splitlines(keepends=True)
    # blank lines after the module's first line move every hunk of this file by three lines
    path.write_text("".join([lines[0], "\n\n\n", *lines[1:]]))
    result = apply(tree)
    assert result.returncode == 1
    assert "does not apply exactly" in result.stderr and "offset" in result.stderr, result.stderr
    touching = [p.name for p in PATCHES if f"+++ b/{path.relative_to(tree)}" in p.read_text()]
    assert touching[0] in result.stderr, result.stderr
