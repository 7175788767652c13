"""Check that the ansible package a referee container will test is the image's, as claimed.

usage: python3 check_tree.py SIDE SITE_PACKAGES SDIST_LIB PATCH_DIR   (inside the container)

scripts/referee swaps the sdist's lib/ansible for the image's installed ansible package; the
targets then run the image's code. This proves what that code is, before any target runs:

- stock: pip's record says ansible-core as released (no local version label), nothing of ours
  sits beside it, and its ansible package is byte-identical to the sdist's lib/ansible
  (__pycache__ aside);
- patched: the record (ansible_task_timeout/patches.txt) lists patches; the files that differ from
  the sdist are exactly the files those patches touch (read from PATCH_DIR, the repository's
  patches/). When every recorded sha256 matches PATCH_DIR, the sdist with those patches applied
  must equal the image's package byte for byte; when they do not (patches/ edited since the image
  was built) that step is skipped with a note and the file-set check alone holds.

Prints one line `REFEREE_TREE {json}`; exits 3 (and says why on stderr) when a claim fails.
"""

import filecmp
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile


def files(root):
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if not name.endswith(".pyc"):
                out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def differing(a, b):
    """Relative paths present in only one tree or with other bytes."""
    fa, fb = files(a), files(b)
    diff = fa ^ fb
    for rel in fa & fb:
        if not filecmp.cmp(os.path.join(a, rel), os.path.join(b, rel), shallow=False):
            diff.add(rel)
    return sorted(diff)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def touched(patch_file):
    """Paths below ansible/ that a unified diff writes (+++ b/ansible/...)."""
    paths = set()
    with open(patch_file, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\+\+\+ b/ansible/(\S+)", line)
            if m:
                paths.add(m.group(1))
    return paths


def fail(msg, info):
    info["ok"] = False
    info["error"] = msg
    print("REFEREE_TREE " + json.dumps(info, sort_keys=True), flush=True)
    print(f"referee: tree check failed: {msg}", file=sys.stderr)
    sys.exit(3)


def main():
    side, site, sdist_lib, patch_dir = sys.argv[1:5]
    image_pkg = os.path.join(site, "ansible")
    sdist_pkg = os.path.join(sdist_lib, "ansible")
    record_path = os.path.join(site, "ansible_task_timeout", "patches.txt")
    info = {"side": side, "site": site}
    package = os.path.join(site, "ansible_task_timeout")
    modules = sorted(files(package)) if os.path.isdir(package) else []
    info["modules"] = {n: sha256(os.path.join(package, n))[:12] for n in modules}
    (dist,) = importlib.metadata.distributions(name="ansible-core", path=[site])
    info["version"] = dist.version
    diff = differing(sdist_pkg, image_pkg)
    info["differing"] = diff

    if side == "stock":
        if "+" in dist.version or modules:
            fail(f"the stock image has ansible-core {dist.version} and {modules} beside it", info)
        if diff:
            fail(f"the stock image's ansible differs from the sdist in {len(diff)} files: {diff[:10]}", info)
        info["ok"] = True
        print("REFEREE_TREE " + json.dumps(info, sort_keys=True), flush=True)
        return

    if "+" not in dist.version:
        fail(f"the patched side's image has ansible-core {dist.version}, as released", info)
    if not os.path.isfile(record_path):
        fail(f"{record_path} is missing: not a task-timeout-ee image", info)
    with open(record_path, encoding="utf-8") as f:
        record = f.read().splitlines()
    info["record"] = record[0] if record else ""
    recorded = [line.split() for line in record if line and not line.startswith("#")]
    if not recorded:
        fail(f"{record_path} lists no patch", info)
    info["patches"] = [name for _, name in recorded]
    expected = set()
    stale = []
    for digest, name in recorded:
        path = os.path.join(patch_dir, name)
        if not os.path.isfile(path):
            fail(f"the image carries {name}, which is not in patches/: rebuild the image", info)
        expected |= touched(path)
        if sha256(path) != digest:
            stale.append(name)
    if set(diff) != expected:
        fail(
            "the patched image's ansible differs from the sdist in other files than its patches touch: "
            f"only in the diff {sorted(set(diff) - expected)}, "
            f"touched but equal {sorted(expected - set(diff))}",
            info,
        )
    if stale:
        info["note"] = f"patches/ changed since the image was built ({', '.join(stale)}): byte check skipped"
    else:
        tmp = tempfile.mkdtemp()
        try:
            shutil.copytree(sdist_pkg, os.path.join(tmp, "ansible"))
            for _, name in recorded:
                subprocess.run(
                    ["patch", "-p1", "--batch", "--silent", "-d", tmp, "-i", os.path.join(patch_dir, name)],
                    check=True,
                )
            for dirpath, _, filenames in os.walk(tmp):
                for n in filenames:
                    if n.endswith(".orig"):
                        os.remove(os.path.join(dirpath, n))
            rest = differing(os.path.join(tmp, "ansible"), image_pkg)
            if rest:
                fail(
                    f"the sdist with the image's patches applied differs from the image's ansible in {rest}",
                    info,
                )
        finally:
            shutil.rmtree(tmp)
        info["byte_identical_to_sdist_plus_patches"] = True
    if "__init__.py" not in modules:
        fail(f"no ansible_task_timeout package next to ansible in {site}", info)
    info["ok"] = True
    print("REFEREE_TREE " + json.dumps(info, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
