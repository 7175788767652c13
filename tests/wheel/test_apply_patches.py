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
from harness.labels import CORE, LINE, LINES, patches

REPO = Path(__file__).resolve().parents[2]
APPLY = REPO / "scripts" / "apply-patches"
PATCHES = patches(LINE)


def released_wheel(core: str, dest: Path) -> Path:
    """The released wheel, as build-wheel fetches and checks it against the lock."""
    cmd = [sys.executable, str(REPO / "scripts" / "build-wheel"), "--core-version", core, "--dest", str(dest)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return dest / f"ansible_core-{core}-py3-none-any.whl"


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return released_wheel(CORE, tmp_path_factory.mktemp("released"))


def unpack(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(dest)
    return dest


@pytest.fixture
def tree(released: Path, tmp_path: Path) -> Path:
    return unpack(released, tmp_path / "site")


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


@pytest.fixture(scope="module", params=sorted(LINES))
def each_line(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(line, its released wheel), for every supported line."""
    return request.param, released_wheel(LINES[request.param], tmp_path_factory.mktemp("released"))


def test_each_line_s_series_applies_to_its_released_core(each_line: tuple[str, Path], tmp_path: Path) -> None:
    line, wheel = each_line
    tree = unpack(wheel, tmp_path / "site")
    result = apply(tree)  # the series is found by the core's line
    assert result.returncode == 0, result.stderr
    assert f"applied {len(patches(line))} patches to ansible-core {LINES[line]}" in result.stdout
    assert not list(tree.rglob("*.orig")) and not list(tree.rglob("*.rej"))


def test_every_patch_hooks_upstream_lines_only(each_line: tuple[str, Path], tmp_path: Path) -> None:
    """Each patch applies alone to the pristine core (with fuzz 0; the offsets are the other patches'
    lines): no patch edits, or leans on the context of, a line another patch added."""
    line, wheel = each_line
    pristine = unpack(wheel, tmp_path / "pristine")
    for patch in patches(line):
        result = subprocess.run(
            ["patch", "-p1", "--dry-run", "--batch", "--fuzz=0", "-d", str(pristine), "-i", str(patch)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0 and "FAILED" not in result.stdout, f"{patch.name}: {result.stdout}"


def test_every_line_has_the_same_hooks(each_line: tuple[str, Path]) -> None:
    """One series of hooks, ported per line: the same patch names on every line."""
    line, _ = each_line
    assert [p.name for p in patches(line)] == [p.name for p in patches(LINE)]


def test_a_core_of_an_unsupported_line_fails_naming_the_lines(tree: Path) -> None:
    release = tree / "ansible" / "release.py"
    release.write_text(release.read_text().replace(f"'{CORE}'", "'2.19.3'"))
    result = apply(tree)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "no patch series for ansible-core 2.19.3" in result.stderr
    assert " ".join(sorted(LINES)) in result.stderr, result.stderr


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
