"""Drive ansible-playbook inside the EE image, bounded, and collect what it left behind.

The EE container is started long-lived (`sleep infinity`) on the session network; the play runs
through `docker exec` under two limits (`timeout` inside, a subprocess timeout outside), so a hang
of the code under test can never hang the suite. Results come from the test-only callback
`tt_results` (tests/plugins/callback) as JSON lines; the EE's process table is read with psutil
inside the container after the run, because an orphaned ssh client or ControlPersist master is
exactly the kind of leak the patches must prevent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.dockerctl import docker, label_args, remove_containers
from harness.targets import Network, SshKey

TESTS_DIR = Path(__file__).resolve().parents[1]
PLAYBOOKS_DIR = TESTS_DIR / "playbooks"
PLUGINS_DIR = TESTS_DIR / "plugins"
PROJECT_IN_EE = "/runner/project"
PLUGINS_IN_EE = "/runner/tt-plugins"
KEY_IN_EE = "/tmp/tt-ssh/id_ed25519"
RESULTS_IN_EE = f"{PROJECT_IN_EE}/out/results.jsonl"

_PS_SCRIPT = r"""
import json, os, psutil
me = os.getpid()
rows = []
for p in psutil.process_iter(["pid", "ppid", "name", "cmdline", "status", "create_time"]):
    i = p.info
    if i["pid"] == me:
        continue
    try:
        remotes = sorted({c.raddr.ip for c in p.net_connections(kind="tcp") if c.raddr})
    except (psutil.Error, OSError):
        remotes = []
    rows.append({"pid": i["pid"], "ppid": i["ppid"], "name": i["name"],
                 "cmdline": " ".join(i["cmdline"] or []).strip(), "status": i["status"],
                 "remotes": remotes})
print(json.dumps(rows))
"""


STRICT_MUX = os.environ.get("TT_STRICT_MUX", "1") == "1"
"""Every ControlPersist master left after a run is a leftover, even a healthy host's: the patched
controller closes the masters of its run at the end. TT_STRICT_MUX=0 tolerates healthy hosts'
masters (stock ControlPersist=60s behaviour), for runs against stock ansible-core."""


def is_mux_master(proc: dict[str, Any]) -> bool:
    """An OpenSSH ControlPersist master (`ssh: <control path> [mux]`)."""
    return proc["cmdline"].startswith("ssh: ") and proc["cmdline"].endswith("[mux]")


def is_expected_process(proc: dict[str, Any], healthy_ips: frozenset[str] = frozenset()) -> bool:
    """True for what may stay in the EE container after a run.

    Always: PID 1 (tini) and its `sleep infinity`. With TT_STRICT_MUX=0, also a ControlPersist
    master whose only TCP peer is a *healthy* host (`healthy_ips`): that is stock ControlPersist=60s
    behaviour, not a leak. Everything else (an ssh client, the hung host's master, a zombie, a worker,
    a module left running by a local action) is a leftover.
    """
    if proc["status"] == "zombie":
        return False
    if proc["pid"] == 1:
        return True
    if proc["ppid"] == 1 and proc["cmdline"] == "sleep infinity":
        return True
    remotes = set(proc.get("remotes") or [])
    return not STRICT_MUX and is_mux_master(proc) and bool(remotes) and remotes <= healthy_ips


@dataclass
class RunResult:
    """What one bounded ansible-playbook run produced."""

    rc: int | None
    """Exit code of ansible-playbook; None when the outer limit killed it (it hung)."""
    hit_outer_limit: bool
    wall_s: float
    stdout: str
    stderr: str
    events: list[dict[str, Any]]
    leftovers: list[dict[str, Any]]
    started_at: float
    """Host wall time (time.time()) just before `docker exec`; event `ts` values are comparable."""

    def results(self, host: str | None = None, task: str | None = None) -> list[dict[str, Any]]:
        """Final per-host results (ok/failed/skipped/unreachable), optionally filtered."""
        kinds = {"ok", "failed", "skipped", "unreachable"}
        return [
            e
            for e in self.events
            if e["event"] in kinds
            and (host is None or e.get("host") == host)
            and (task is None or e.get("task") == task)
        ]

    def start_of(self, host: str, task: str) -> float | None:
        """When the runner for (host, task) started (callback `runner_start`), or None."""
        for e in self.events:
            if e["event"] == "runner_start" and e.get("host") == host and e.get("task") == task:
                return float(e["ts"])
        return None

    def describe(self) -> str:
        """A compact dump for assertion messages: rc, wall time, tail of the output, leftovers."""
        tail = "\n".join(self.stdout.splitlines()[-40:])
        left = "\n".join(f"  {p['pid']} {p['status']} {p['cmdline']!r}" for p in self.leftovers)
        return (
            f"rc={self.rc} outer_limit={self.hit_outer_limit} wall={self.wall_s:.1f}s\n"
            f"--- stdout tail ---\n{tail}\n--- stderr ---\n{self.stderr[-2000:]}\n"
            f"--- leftovers ---\n{left}"
        )


@dataclass
class EEContainer:
    """A long-lived EE container (`sleep infinity`) with the project dir and test plugins mounted."""

    name: str
    image: str
    project_dir: Path
    uid: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(
        cls, session: str, image: str, network: Network, project_dir: Path, key: SshKey, tag: str
    ) -> EEContainer:
        """Start the EE, install the run's private key for its user, and return it."""
        name = f"{session}-ee-{tag}"
        out = project_dir / "out"
        out.mkdir(parents=True, exist_ok=True)
        os.chmod(project_dir, 0o755)
        os.chmod(out, 0o777)  # the EE's user (1000) writes the results here
        docker(
            "run", "-d", "--name", name, *label_args(session), "--network", network.name,
            "-v", f"{project_dir}:{PROJECT_IN_EE}",
            "-v", f"{PLUGINS_DIR}:{PLUGINS_IN_EE}:ro",
            "-v", f"{key.private}:/tmp/tt-key-src:ro",
            image, "sleep", "infinity",
        )  # fmt: skip
        ee = cls(name=name, image=image, project_dir=project_dir)
        try:
            ee.wait_for_entrypoint()
            ee.uid = docker("exec", name, "id", "-u").stdout.strip()
            docker(
                "exec", "-u", "0", name, "sh", "-c",
                f"install -d -m 0700 -o {ee.uid} /tmp/tt-ssh"
                f" && install -m 0600 -o {ee.uid} /tmp/tt-key-src {KEY_IN_EE}",
            )  # fmt: skip
        except BaseException:
            ee.remove()
            raise
        return ee

    def wait_for_entrypoint(self, timeout: float = 15.0) -> None:
        """Poll until the builder entrypoint gave the container's uid its passwd entry.

        `docker exec` takes HOME from /etc/passwd at exec time: an exec that wins the race against
        the entrypoint gets HOME=/ and ansible cannot create ~/.ansible (seen under load).
        """
        deadline = time.monotonic() + timeout
        while docker("exec", self.name, "sh", "-c", 'getent passwd "$(id -u)"', check=False).returncode:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no passwd entry from the entrypoint after {timeout} s")
            time.sleep(0.05)

    def processes(self) -> list[dict[str, Any]]:
        """The EE's process table, read with psutil inside the container."""
        out = docker("exec", self.name, "python3", "-c", _PS_SCRIPT, timeout=30).stdout
        return json.loads(out)

    def leftovers(
        self, settle_s: float = 5.0, healthy_ips: frozenset[str] = frozenset()
    ) -> list[dict[str, Any]]:
        """Unexpected processes, polled until none are left or `settle_s` passed.

        Polling (not a fixed sleep) lets a process that is already exiting (a master told to stop,
        a zombie about to be reaped by tini) go, and still reports one that stays.
        """
        deadline = time.monotonic() + settle_s
        while True:
            left = [p for p in self.processes() if not is_expected_process(p, healthy_ips)]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.2)

    def remove(self) -> None:
        """Force-remove the container (also kills whatever a hung run left in it)."""
        remove_containers([self.name])


def stage_project(
    project_dir: Path, playbook: str, inventory: str, extra_files: dict[str, bytes] | None = None
) -> None:
    """Copy `tests/playbooks/<playbook>` (and its task files) and write the inventory."""
    project_dir.mkdir(parents=True, exist_ok=True)
    for item in PLAYBOOKS_DIR.iterdir():
        if item.is_file():
            shutil.copy(item, project_dir / item.name)
    if not (project_dir / playbook).exists():
        raise FileNotFoundError(f"no playbook {playbook} under {PLAYBOOKS_DIR}")
    (project_dir / "inventory.ini").write_text(inventory)
    for name, data in (extra_files or {}).items():
        (project_dir / name).write_bytes(data)
    for path in project_dir.iterdir():
        if path.is_file():
            os.chmod(path, 0o644)


def base_env(strategy: str, forks: int) -> dict[str, str]:
    """Environment of every run: our callback, no host key prompts, no colour, a known strategy."""
    return {
        "ANSIBLE_CALLBACK_PLUGINS": f"{PLUGINS_IN_EE}/callback",
        "ANSIBLE_CALLBACKS_ENABLED": "tt_results",
        "TT_RESULTS_FILE": RESULTS_IN_EE,
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_STRATEGY": strategy,
        "ANSIBLE_FORKS": str(forks),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": "/tmp/ansible-local",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
    }


def run_playbook(
    ee: EEContainer,
    playbook: str,
    *,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    outer_limit_s: float = 120.0,
    settle_s: float = 5.0,
    healthy_ips: frozenset[str] = frozenset(),
) -> RunResult:
    """Run `ansible-playbook -i inventory.ini <playbook>` in `ee`, bounded by `outer_limit_s`.

    On the outer limit the run counts as hung: the process table is captured *before* the EE
    container is torn down by the caller, so a stock reference can show what was stuck.
    Returns parsed callback events, wall time and leftover processes (`healthy_ips`: addresses whose
    ControlPersist masters may persist, see is_expected_process).
    """
    results = ee.project_dir / "out" / "results.jsonl"
    if results.exists():
        results.unlink()
    env_args: list[str] = []
    for k, v in (env or {}).items():
        env_args += ["-e", f"{k}={v}"]
    inner = max(1, int(outer_limit_s) - 5)
    cmd = [
        "docker", "exec", "-w", PROJECT_IN_EE, *env_args, ee.name,
        "timeout", "-k", "3", str(inner),
        "ansible-playbook", "-i", "inventory.ini", *extra_args, playbook,
    ]  # fmt: skip
    started = time.time()
    t0 = time.monotonic()
    hit = False
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=outer_limit_s)
        rc: int | None = proc.returncode
        stdout, stderr = proc.stdout, proc.stderr
        if rc in (124, 137):  # the inner `timeout` fired: the play hung
            hit, rc = True, None
    except subprocess.TimeoutExpired as exc:
        hit, rc = True, None
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    wall = time.monotonic() - t0
    events = parse_events(results)
    leftovers = ee.leftovers(settle_s=0 if hit else settle_s, healthy_ips=healthy_ips)
    return RunResult(rc, hit, wall, stdout, stderr, events, leftovers, started)


def parse_events(path: Path) -> list[dict[str, Any]]:
    """Parse the callback's JSON lines (a half-written last line of a killed run is dropped)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
