"""The AWX path for real: ansible-runner transmit | the EE as `ansible-runner worker` | process.

AWX (and receptor on k8s) never runs ansible-playbook directly: the control node packs the job
with `ansible-runner transmit`, the job pod runs the EE's entrypoint with
`ansible-runner worker --private-data-dir=/runner`, and the control node turns the stream back
into events with `ansible-runner process`. The machine credential arrives as `env/ssh_key` and the
worker wraps the play in ssh-agent. This test builds that pipe with the real CLIs (runner on the
host pinned to the image's 2.4.3), freezes one target while its module runs, and checks what AWX
would show: the job ends by itself, the frozen host has a runner_on_failed event with
task_timeout, the other hosts completed, and the job status is `failed` (a host failed), not
`timeout` (runner's own job_timeout, which would hide which host hung).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from harness import hang
from harness.dockerctl import docker, label_args
from harness.runner import PLAYBOOKS_DIR
from harness.scenarios import HUNG, Lab
from harness.targets import inventory_ini, start_target
from harness.verdict import AFTER_TASKS, DEADLINE_SLACK_S, EARLY_MARGIN_S, timeout_msg_ok

pytestmark = pytest.mark.integration

LIMIT_S = int(os.environ.get("TT_LIMIT_S", "10"))
"""Also bounds a healthy host's first task (ssh handshake + module): over 6 s now and then on 2 busy cores."""
OUTER_LIMIT_S = 120.0
HEALTHY = 3
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
_n = itertools.count(1)


def runner_cli() -> str:
    """The host's ansible-runner (requirements-test.txt pins it to the image's version)."""
    exe = VENV_BIN / "ansible-runner"
    path = str(exe) if exe.exists() else shutil.which("ansible-runner")
    if path is None:
        pytest.fail("ansible-runner is not installed on the host: pip install -r requirements-test.txt")
    return path


def make_private_data_dir(pdd: Path, inventory: str, key: Path) -> None:
    """An AWX-like private data dir: project/, inventory/hosts, env/{envvars,ssh_key,settings}."""
    (pdd / "project").mkdir(parents=True)
    for item in PLAYBOOKS_DIR.iterdir():
        if item.is_file():
            shutil.copy(item, pdd / "project" / item.name)
    (pdd / "inventory").mkdir()
    (pdd / "inventory" / "hosts").write_text(inventory)
    (pdd / "env").mkdir()
    (pdd / "env" / "ssh_key").write_text(key.read_text())
    envvars = {
        "ANSIBLE_TASK_DEADLINE": str(LIMIT_S),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_FORKS": str(HEALTHY + 1),
    }
    (pdd / "env" / "envvars").write_text(json.dumps(envvars))
    # No job_timeout/idle_timeout: the task limit alone must end the job. (Never set
    # suppress_ansible_output: false here: the worker would mix display text into its stream.)
    (pdd / "env" / "settings").write_text(json.dumps({}))


def load_events(artifacts: Path) -> list[dict[str, Any]]:
    """The job events `ansible-runner process` wrote, in counter order."""
    events = [json.loads(p.read_text()) for p in (artifacts / "job_events").glob("*.json")]
    return sorted(events, key=lambda e: e.get("counter", 0))


def test_awx_transmit_worker_process_frozen_host(lab: Lab, ee_image: str) -> None:
    """The job ends by itself; the frozen host fails with task_timeout; status failed, not timeout."""
    n = next(_n)
    tag = f"awx-{n}"
    alias = f"hung-awx-{n}"
    ident = f"awx{n}"
    healthy = lab.healthy(HEALTHY)
    inventory = "\n".join(
        line
        for line in inventory_ini({**healthy, HUNG: alias}, "unused", hung=[HUNG]).splitlines()
        if not line.startswith("ansible_ssh_private_key_file=")  # the key comes through ssh-agent
    )
    base = lab.workdir / tag
    make_private_data_dir(base / "in", inventory, lab.key.private)
    (base / "out").mkdir(parents=True)
    worker = f"{lab.session}-worker-{n}"
    victim = start_target(lab.session, lab.network, lab.key, f"{lab.session}-victim-{tag}", [alias])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        trigger = hang.PhaseTrigger(victim, hang.module_running, hang.freeze, "freeze-awx").start()
        t0 = time.monotonic()
        transmit = subprocess.Popen(
            [runner_cli(), "transmit", str(base / "in"), "-p", "hang_remote.yml", "--ident", ident],
            stdout=subprocess.PIPE,
        )
        procs.append(transmit)
        work = subprocess.Popen(
            ["docker", "run", "-i", "--rm", "--name", worker, *label_args(lab.session),
             "--network", lab.network.name, ee_image,
             "ansible-runner", "worker", "--private-data-dir=/runner"],
            stdin=transmit.stdout, stdout=subprocess.PIPE,
        )  # fmt: skip
        procs.append(work)
        assert transmit.stdout is not None
        transmit.stdout.close()  # the worker owns the pipe now
        process = subprocess.Popen(
            [runner_cli(), "process", str(base / "out"), "--ident", ident],
            stdin=work.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        procs.append(process)
        assert work.stdout is not None
        work.stdout.close()
        try:
            out, _ = process.communicate(timeout=OUTER_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the AWX job did not end within {OUTER_LIMIT_S} s: a task hung the job")
        for p in (transmit, work):
            p.wait(timeout=30)
        wall = time.monotonic() - t0
        trigger.stop()
        artifacts = base / "out" / "artifacts" / ident
        status = _read(artifacts / "status")
        rc = _read(artifacts / "rc")
        context = f"wall {wall:.1f} s, status {status}, rc {rc}\n{out.decode(errors='replace')[-3000:]}"
        assert trigger.acted_at is not None, f"the target was never frozen: {trigger.error!r}\n{context}"
        events = load_events(artifacts)
        # `ansible-runner worker` exits with the play's rc (2: a host failed), not by a signal.
        assert work.returncode == 2, f"worker exited {work.returncode}\n{context}"
        assert status == "failed", f"status must be failed (a host failed), not timeout\n{context}"
        assert rc == "2", context

        def final(host: str, task: str) -> dict[str, Any] | None:
            kinds = ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped")
            hits = [
                e
                for e in events
                if e["event"] in kinds
                and e["event_data"].get("host") == host
                and e["event_data"].get("task") == task
            ]
            return hits[-1] if hits else None

        failed = final(HUNG, "hang")
        assert failed is not None and failed["event"] == "runner_on_failed", f"{failed}\n{context}"
        res = failed["event_data"]["res"]
        assert res.get("task_timeout") is True, res
        assert timeout_msg_ok(res.get("msg", ""), LIMIT_S), res
        assert res.get("timedout") == {"period": LIMIT_S}, res
        start = next(
            e
            for e in events
            if e["event"] == "runner_on_start"
            and e["event_data"].get("host") == HUNG
            and e["event_data"].get("task") == "hang"
        )
        elapsed = _ts(failed["created"]) - _ts(start["created"])
        assert LIMIT_S - EARLY_MARGIN_S <= elapsed <= LIMIT_S + DEADLINE_SLACK_S, elapsed
        for host in healthy:
            for task in ("hang", *AFTER_TASKS):
                ev = final(host, task)
                assert ev is not None and ev["event"] == "runner_on_ok", f"{host} {task}: {ev}\n{context}"
            last = final(host, AFTER_TASKS[-1])
            assert last is not None and last["event_data"]["res"]["stdout"] == f"after2-{host}", last
        print(f"AWX pipe: wall {wall:.1f} s, frozen host failed {elapsed:.2f} s after its task started")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        docker("rm", "-f", worker, check=False)
        victim.remove()


def _read(path: Path) -> str:
    """A runner artifact file's text, or a note that it is missing (for assertion messages)."""
    return path.read_text().strip() if path.exists() else f"<no {path.name}>"


def _ts(created: str) -> float:
    """Seconds since the epoch of a runner event's `created` (ISO 8601, UTC, no offset)."""
    from datetime import datetime

    return datetime.fromisoformat(created).replace(tzinfo=UTC).timestamp()
