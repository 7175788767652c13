"""scripts/core-line and the Makefile's CORE=: each supported line, and one line for any other."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness.labels import LINES, LOCAL

REPO = Path(__file__).resolve().parents[2]
CORE_LINE = REPO / "scripts" / "core-line"


def core_line(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CORE_LINE), *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("line", sorted(LINES))
def test_each_line_names_its_core_lock_and_series(line: str) -> None:
    fields = {f: core_line(line, f).stdout.strip() for f in ("core", "patched", "lock", "patches", "preview")}
    assert fields["core"] == LINES[line]
    assert fields["patched"] == f"{LINES[line]}+{LOCAL}"
    assert (REPO / fields["lock"]).is_file() and f"ansible-core=={LINES[line]} " in (
        REPO / fields["lock"]
    ).read_text()
    assert sorted((REPO / fields["patches"]).glob("*.patch")), fields["patches"]
    assert fields["preview"] == ("yes" if "rc" in LINES[line] else "")


def test_the_default_line_has_a_final_release() -> None:
    assert core_line("preview").stdout.strip() == "", "the default line must not be a preview"


@pytest.mark.parametrize("line", ["2.19", "banana", "2"])
def test_an_unsupported_line_is_one_line_naming_the_supported_ones(line: str) -> None:
    result = core_line(line, "core")
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"unsupported ansible-core line '{line}'" in result.stderr
    assert ", ".join(sorted(LINES)) in result.stderr


@pytest.mark.parametrize("target", ["image", "wheel", "demo", "test"])
def test_make_stops_on_an_unsupported_core_before_doing_anything(target: str) -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "-n", target, "CORE=2.19"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and not result.stdout.strip(), result.stdout
    assert (
        "unsupported ansible-core line '2.19'" in result.stderr and ", ".join(sorted(LINES)) in result.stderr
    )


def test_the_image_build_default_is_the_default_line() -> None:
    """A plain `docker build context/` (no build args) builds the default line's patched core."""
    patched = core_line("patched").stdout.strip()
    containerfile = (REPO / "context" / "Containerfile").read_text()
    defaults = {line for line in containerfile.splitlines() if line.startswith("ARG ANSIBLE_CORE_VERSION=")}
    assert defaults == {f"ARG ANSIBLE_CORE_VERSION={patched}"}, defaults
    line = core_line("line").stdout.strip()
    assert [x for x in containerfile.splitlines() if x.startswith("ARG TT_CORE_LINE=")] == [
        f"ARG TT_CORE_LINE={line}"
    ]
