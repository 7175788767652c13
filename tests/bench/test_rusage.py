"""bench/playbooks/rusage.py, the wrapper the overhead benchmark times every run with.

It runs the console script in its own process so that the controller's CPU can be read apart
from its children's. If it read its own start-up instead, or lost the exit code, the README's
overhead split would be wrong without any run failing; so it runs here on a stand-in script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

RUSAGE = Path(__file__).resolve().parents[2] / "bench" / "playbooks" / "rusage.py"

STAND_IN = textwrap.dedent(
    """\
    #!/usr/bin/env python3
    # a console script like pip writes: main() under __main__, its code through sys.exit
    import subprocess
    import sys
    import time


    def burn(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass


    def main():
        assert sys.argv[1:] == ["-i", "inventory.ini"], sys.argv  # the run's own arguments
        burn(0.4)  # the controller itself
        child = "import time\\nend = time.process_time() + 0.6\\nwhile time.process_time() < end: pass"
        subprocess.run([sys.executable, "-c", child], check=True)  # a worker
        return 3


    if __name__ == "__main__":
        sys.exit(main())
    """
)


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "bin" / "fake-playbook"
    script.parent.mkdir()
    script.write_text(STAND_IN)
    script.chmod(0o755)
    env = {**os.environ, "PATH": f"{script.parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, str(RUSAGE), *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_reports_exit_code_and_the_controllers_cpu_apart_from_its_childrens(tmp_path: Path) -> None:
    proc = _run(tmp_path, "fake-playbook", "-i", "inventory.ini")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["rc"] == 3
    assert 0.4 <= stats["controller_cpu_s"] < 0.4 + 0.5, stats  # its own burn, not the child's 0.6 s
    assert stats["cpu_s"] >= 0.4 + 0.6 - 0.05, stats  # the total holds the child too
    assert stats["maxrss_kib"] > 0


def test_a_missing_command_is_a_clear_error(tmp_path: Path) -> None:
    proc = _run(tmp_path, "no-such-playbook")
    assert proc.returncode != 0
    assert "no-such-playbook not found on PATH" in proc.stderr
