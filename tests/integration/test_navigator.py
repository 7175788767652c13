"""ansible-navigator with the repository's ansible-navigator.yml: a frozen host in the demo play.

The run and its verdict are tests/harness/navigator.py's; this is the image `make image` built,
never pulled (the settings' pull policy). tests/integration/test_registry.py runs the same play
with the image pulled from a registry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.navigator import run_frozen_host_play
from harness.scenarios import Lab

pytestmark = pytest.mark.integration


def test_navigator_frozen_host(lab: Lab, ee_image: str, ssh_agent: str, tmp_path: Path) -> None:
    """`ansible-navigator run` with the repo settings: demo3 frozen -> task_timeout; others complete."""
    run_frozen_host_play(lab, ee_image, ssh_agent, tmp_path)
