"""`python3 -m ansible_task_timeout --version`: which ansible-core this is, and what it carries.

A patched core looks like the released one to `ansible --version` (its `__version__` stays
upstream's, for collections' `requires_ansible`); this says at a glance that it is patched, with
which patch set, wherever the wheel is installed (the image, a virtualenv).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import sys

RECORD = "patches.txt"


def patch_set() -> tuple[str, list[str]]:
    """(series sha256, patch names) from the record scripts/apply-patches wrote at build time."""
    text = importlib.resources.files(__package__).joinpath(RECORD).read_text(encoding="utf-8")
    series = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("# series")), ""
    )
    names = [line.split()[1] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return series, names


def describe() -> str:
    core = importlib.metadata.version("ansible-core")
    from ansible.release import __version__

    series, names = patch_set()
    first, last = (names[0].split("-", 1)[0], names[-1].split("-", 1)[0]) if names else ("", "")
    return (
        f"ansible-core {core} (ansible {__version__} as released, patched by task-timeout-ee)\n"
        f"patch set: {len(names)} patches ({first}..{last}), sha256 {series}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m ansible_task_timeout", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--version", action="store_true", help="the core version, the patch set and its digest"
    )
    args = parser.parse_args(argv)
    if not args.version:
        parser.print_help()
        return 0
    try:
        print(describe())
    except (FileNotFoundError, importlib.metadata.PackageNotFoundError, ImportError) as exc:
        print(f"ansible_task_timeout: no patched ansible-core here ({exc})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
