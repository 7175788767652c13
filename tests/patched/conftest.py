"""tests/patched runs where the patched ansible-core is installed (scripts/core-tests); elsewhere its
modules skip themselves. TT_REQUIRE_PATCHED=1 (set by scripts/core-tests) turns that skip into a
failure, so a broken install cannot pass as "all skipped"."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("TT_REQUIRE_PATCHED") != "1":
        return
    try:
        from ansible.errors import AnsibleTaskTimeoutError  # noqa: F401
    except ImportError as exc:
        raise pytest.UsageError(  # noqa: B904  (the message carries the import error)
            f"TT_REQUIRE_PATCHED=1, but the patched ansible-core is not importable: {exc}"
        )
