"""Image figures: sizes of the patched, stock and full images, cold build time, rebuild after a patch edit."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .lab import EE_IMAGE, ROOT, STOCK_IMAGE, docker

ENGINE = os.environ.get("CONTAINER_ENGINE", "docker")
CA_BUNDLE = os.environ.get("CA_BUNDLE", "")
FULL_IMAGE = os.environ.get("FULL_IMAGE", "task-timeout-ee-full:dev")


def _size_mb(image: str) -> float:
    return round(int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6, 1)


def _timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.monotonic() - t0, 1)


def image_benchmark(cold: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"patched_mb": _size_mb(EE_IMAGE), "stock_mb": _size_mb(STOCK_IMAGE)}
    if docker("image", "inspect", FULL_IMAGE, check=False).returncode == 0:  # make image-full
        row["full_mb"] = _size_mb(FULL_IMAGE)
    if not cold:
        return row
    base = "localhost/debian:trixie-bench"
    tag = "task-timeout-ee:bench-cold"
    ca = ["--ca-bundle", CA_BUNDLE] if CA_BUNDLE else []
    build = [str(ROOT / "scripts/build-image"), "--engine", ENGINE, "--base", base, *ca]
    scratch = Path(tempfile.mkdtemp(prefix="tt-bench-ctx-"))
    try:
        docker("image", "rm", "-f", base, check=False)
        row["base_bootstrap_s"] = _timed([str(ROOT / "scripts/make-base"), base, ENGINE])
        row["cold_build_s"] = _timed([*build, "--no-cache", "--tag", tag])
        # One patch edited (its header): only the last layers are rebuilt.
        context = scratch / "context"
        shutil.copytree(ROOT / "context", context, ignore=shutil.ignore_patterns("*.pem", "*.whl"))
        patch = sorted((context / "_build/patches").glob("*.patch"))[-1]
        patch.write_text("Bench: an edited header.\n" + patch.read_text())
        row["rebuild_after_patch_edit_s"] = _timed([*build, "--context", str(context), "--tag", tag])
        row["cold_total_s"] = round(row["base_bootstrap_s"] + row["cold_build_s"], 1)
    finally:
        docker("image", "rm", "-f", tag, base, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    return row
