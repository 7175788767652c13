"""The labels the image carries, as registries and AWX show them."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["task-timeout-ee"]
LINES: dict[str, str] = {line: row["core"] for line, row in _cfg["lines"].items()}
"""Every supported ansible-core line and the core version patched on it."""
LOCAL = _cfg["local-version"]
DEFAULT_LINE = _cfg["default-line"]
# The line under test: the Makefile exports TT_CORE_LINE (make test CORE=...), else the default.
LINE = os.environ.get("TT_CORE_LINE") or DEFAULT_LINE
if LINE not in LINES:
    raise RuntimeError(f"TT_CORE_LINE={LINE!r} is no supported line ({', '.join(sorted(LINES))})")
CORE = LINES[LINE]
PATCHED_CORE = f"{CORE}+{LOCAL}"


def patches(line: str = LINE) -> list[Path]:
    """The patch series of one line, in order."""
    return sorted((ROOT / "patches" / line).glob("*.patch"))


def patch_series_digest(line: str = LINE) -> str:
    """The sha256 of the line's series concatenated in order: `cat patches/<line>/*.patch | sha256sum`."""
    return hashlib.sha256(b"".join(p.read_bytes() for p in patches(line))).hexdigest()


def oci_label_problems(labels: dict[str, str]) -> list[str]:
    """What is wrong with the labels registries and AWX show (empty: nothing)."""
    oci = "org.opencontainers.image."
    version = re.search(r"^VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)[1]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    want = {
        f"{oci}title": "task-timeout-ee",
        f"{oci}version": version,
        f"{oci}licenses": "GPL-3.0-or-later",
        "io.github.task-timeout-ee.ansible-core": PATCHED_CORE,
        "io.github.task-timeout-ee.patch-set": patch_series_digest(),
    }
    problems = [f"{k} is {labels.get(k)!r}, not {v!r}" for k, v in want.items() if labels.get(k) != v]
    if not labels.get(f"{oci}description"):
        problems.append("no description")
    if head.returncode == 0 and not labels.get(f"{oci}revision", "").startswith(head.stdout.strip()):
        problems.append(f"revision {labels.get(oci + 'revision')!r} is not HEAD {head.stdout.strip()}")
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", labels.get(f"{oci}created", "")):
        problems.append(f"created {labels.get(oci + 'created')!r} is no RFC 3339 time")
    if f"{oci}source" not in labels:
        problems.append("no source label")
    return problems
