"""scripts/steps, the quiet step runner of `make demo`: what a newcomer sees when a step passes or fails.

No container engine: the steps are shell commands, and the image checks run against a fake engine.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "steps"


def _load_steps():
    loader = importlib.machinery.SourceFileLoader("steps_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader("steps_script", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["steps_script"] = module  # dataclasses looks the module up by name
    loader.exec_module(module)
    return module


steps = _load_steps()


def _run(step_list, tmp_path: Path, **kwargs) -> tuple[int, str]:
    out = io.StringIO()
    rc = steps.run_steps(step_list, tmp_path / "logs", out=out, **kwargs)
    return rc, out.getvalue()


def test_a_passing_step_prints_one_line_and_keeps_its_output_in_the_log(tmp_path: Path) -> None:
    rc, out = _run([steps.Step("base", "base image x", "seq 1 500")], tmp_path)
    assert rc == 0
    assert out.startswith("[1/1] base image x ... done in ") and out.endswith(" s\n")
    assert out.count("\n") == 1
    assert (tmp_path / "logs" / "base.log").read_text().splitlines() == [str(i) for i in range(1, 501)]


def test_a_failing_step_shows_its_tail_and_log_path_and_stops_the_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    rc, out = _run(
        [
            steps.Step("base", "base", "true"),
            steps.Step("image", "image x:dev", "seq 1 100; echo 'build failed' >&2; exit 3"),
            steps.Step("target", "target", f"touch {marker}"),
        ],
        tmp_path,
        tail_lines=5,
    )
    log = tmp_path / "logs" / "image.log"
    assert rc == 3
    assert not marker.exists(), "a step after the failed one ran"
    lines = out.splitlines()
    assert lines[0].startswith("[1/3] base ... done in ")
    assert lines[1].startswith("[2/3] image x:dev ... FAILED after ") and lines[1].endswith("(exit 3)")
    assert lines[2:] == [
        f"--- last 5 lines of {log} ---",
        "97",
        "98",
        "99",
        "100",
        "build failed",
        f"--- the whole log: {log} ---",
    ]
    assert "[3/3]" not in out
    assert len(log.read_text().splitlines()) == 101


def test_verbose_shows_the_output_too(tmp_path: Path) -> None:
    rc, out = _run([steps.Step("image", "image", "echo step output")], tmp_path, verbose=True)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "[1/1] image ..."
    assert lines[1] == "step output"
    assert lines[2].startswith("[1/1] image ... done in ")


def test_verbose_does_not_repeat_the_output_of_a_failed_step(tmp_path: Path) -> None:
    rc, out = _run([steps.Step("image", "image", "echo boom; exit 2")], tmp_path, verbose=True)
    log = tmp_path / "logs" / "image.log"
    assert rc == 2
    assert out.count("boom") == 1
    assert out.splitlines()[-1] == f"--- the whole log: {log} ---"


def test_a_shown_step_runs_with_the_terminal_and_passes_its_status_on(capfd: pytest.CaptureFixture) -> None:
    out = io.StringIO()
    rc = steps.run_steps(
        [steps.Step("demo", "demo", "echo DEMO FAILED; exit 1", show=True)], Path("/nonexistent"), out=out
    )
    assert rc == 1
    assert capfd.readouterr().out == "DEMO FAILED\n"
    assert out.getvalue() == "[1/1] demo\n[1/1] demo failed (exit 1)\n"


def _fake_engine(tmp_path: Path, ids: list[str]) -> str:
    """An engine whose `image inspect` prints the next id of `ids` ("" = no such image)."""
    state = tmp_path / "calls"
    state.write_text("0")
    engine = tmp_path / "engine"
    cases = "".join(f"  {i}) id={image_id!r} ;;\n" for i, image_id in enumerate(ids))
    engine.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {state}); echo $((n + 1)) > {state}\n"
        f'case "$n" in\n{cases}esac\n'
        '[ -n "$id" ] || exit 1\necho "$id"\n'
    )
    engine.chmod(0o755)
    return str(engine)


@pytest.mark.parametrize(
    ("before", "after", "says"),
    [
        ("", "sha256:1", "done in "),
        ("sha256:1", "sha256:1", "already there ("),
        ("sha256:1", "sha256:2", "done in "),
    ],
)
def test_an_image_step_says_whether_it_built_anything(
    tmp_path: Path, before: str, after: str, says: str
) -> None:
    engine = _fake_engine(tmp_path, [before, after])
    rc, out = _run([steps.Step("base", "base image b", "true", image="b")], tmp_path, engine=engine)
    assert rc == 0
    assert out.startswith(f"[1/1] base image b ... {says}"), out


def test_the_command_line_keeps_the_order_of_steps_and_exits_with_the_failure(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--log-dir",
            str(tmp_path),
            "--tail",
            "2",
            "--step",
            "one",
            "first",
            "-",
            "echo one",
            "--show",
            "two",
            "second",
            "echo two",
            "--step",
            "three",
            "third",
            "-",
            "echo a; echo b; echo c; exit 7",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 7
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("[1/3] first ... done in ")
    assert lines[1:3] == ["[2/3] second", "two"]
    assert lines[3].startswith("[3/3] third ... FAILED after ")
    assert lines[4:] == [
        f"--- last 2 lines of {tmp_path}/three.log ---",
        "b",
        "c",
        f"--- the whole log: {tmp_path}/three.log ---",
    ]
