"""ansible_task_timeout (the package itself): without psutil it says so in one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from standins import SRC


@pytest.mark.parametrize("module", ["ansible_task_timeout", "ansible_task_timeout.guard"])
def test_without_psutil_the_import_fails_with_one_clear_line(module: str) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["psutil"] = None  # what an interpreter without psutil has
        sys.path.insert(0, {SRC!r})
        import {module}
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    # one line, no traceback
    assert out.stderr == "ansible_task_timeout: psutil is not installed (pip install psutil)\n"


def test_without_psutil_a_program_can_still_catch_the_import_error() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["psutil"] = None
        sys.path.insert(0, {SRC!r})
        try:
            import ansible_task_timeout
        except ImportError as exc:
            print("caught:", exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "caught: ansible_task_timeout: psutil is not installed (pip install psutil)\n"


def test_the_package_imports_no_module_of_its_own() -> None:
    """`python -m ansible_task_timeout.guardian` must find its module not yet imported (runpy warns)."""
    code = f"import sys; sys.path.insert(0, {SRC!r}); import ansible_task_timeout; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [name for name in eval(out.stdout) if name.startswith("ansible_task_timeout.")] == []
