"""The benchmarks' test bed: the same sshd targets, EE containers and callback as the test suite.

The helpers live in tests/ (targets, runner, hang, scenarios, verdict); a benchmark differs from a
test only in what it does with the numbers, so it reuses them rather than growing a second harness.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness.dockerctl import docker, sweep_stale  # noqa: E402
from harness.hang import PhaseTrigger, freeze, module_running  # noqa: E402
from harness.runner import KEY_IN_EE, EEContainer, RunResult, base_env, run_playbook  # noqa: E402
from harness.targets import (  # noqa: E402
    Network,
    SshKey,
    Target,
    inventory_ini,
    make_ssh_key,
    new_session_id,
    start_target,
)

EE_IMAGE = os.environ.get("EE_IMAGE", "task-timeout-ee:dev")
STOCK_IMAGE = os.environ.get("STOCK_IMAGE", "task-timeout-ee:stock")
PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
HOSTS_PER_TARGET = 100
"""Inventory hosts (network aliases) one sshd container serves; a frozen host gets its own."""

__all__ = ["KEY_IN_EE", "EE_IMAGE", "STOCK_IMAGE", "Bench", "Fleet", "RunResult", "base_env", "run_playbook"]


@dataclass
class Fleet:
    """N inventory hosts over a few pool containers, `frozen` of them in containers of their own."""

    healthy: dict[str, str]
    frozen: dict[str, str]
    pools: list[Target] = field(default_factory=list)
    victims: list[Target] = field(default_factory=list)

    @property
    def inventory(self) -> str:
        return inventory_ini({**self.healthy, **self.frozen}, KEY_IN_EE, hung=list(self.frozen))


@dataclass
class Bench:
    """A session: network, ssh key, a scratch dir; everything is removed when the `with` ends."""

    session: str
    network: Network
    key: SshKey
    workdir: Path
    _containers: list[str] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def open(cls) -> Iterator[Bench]:
        session = new_session_id()
        sweep_stale(session)
        workdir = Path(tempfile.mkdtemp(prefix="tt-bench-"))
        network = Network.create(session)
        bench = cls(session, network, make_ssh_key(workdir), workdir)
        try:
            yield bench
        finally:
            for name in bench._containers:
                docker("rm", "-f", name, check=False)
            network.remove()
            shutil.rmtree(workdir, ignore_errors=True)

    def fleet(self, n: int, frozen: int, tag: str) -> Fleet:
        """Start the targets of an N-host fleet (`frozen` of them hang-able); ready when sshd answers."""
        names = [f"h{i:04d}" for i in range(1, n - frozen + 1)]
        fleet = Fleet(
            healthy={h: h for h in names}, frozen={f"frozen{i}": f"frozen{i}" for i in range(frozen)}
        )
        chunks = max(1, math.ceil(len(names) / HOSTS_PER_TARGET))
        for i in range(chunks):
            aliases = names[i * HOSTS_PER_TARGET : (i + 1) * HOSTS_PER_TARGET]
            name = f"{self.session}-{tag}-pool{i}"
            self._containers.append(name)
            fleet.pools.append(start_target(self.session, self.network, self.key, name, aliases))
        for alias in fleet.frozen:
            name = f"{self.session}-{tag}-{alias}"
            self._containers.append(name)
            fleet.victims.append(start_target(self.session, self.network, self.key, name, [alias]))
        return fleet

    def remove_fleet(self, fleet: Fleet) -> None:
        for target in fleet.pools + fleet.victims:
            target.remove()
            self._containers.remove(target.name)

    def ee(self, image: str, tag: str, files: dict[str, str]) -> EEContainer:
        """A fresh EE container with a project dir holding `files` (name -> text) and the bench plays."""
        project = self.workdir / tag
        project.mkdir(parents=True)
        for play in PLAYBOOKS.iterdir():
            shutil.copy(play, project / play.name)
        for name, text in files.items():
            (project / name).write_text(text)
        for path in project.iterdir():
            path.chmod(0o644)
        ee = EEContainer.start(self.session, image, self.network, project, self.key, tag=tag)
        self._containers.append(ee.name)
        return ee

    def drop(self, ee: EEContainer) -> None:
        ee.remove()
        self._containers.remove(ee.name)


def freeze_when_running(fleet: Fleet) -> list[PhaseTrigger]:
    """Freeze every frozen-to-be host once its task-1 command runs (polled, not timed).

    Every 0.2 s, not the tests' 0.01 s: the command sleeps 60 s, and ten pollers reading /proc a
    hundred times a second each would take CPU from the runs being timed on a 2-core machine.
    """
    return [
        PhaseTrigger(v, module_running, freeze, f"freeze {v.name}", poll_s=0.2).start() for v in fleet.victims
    ]


def control_sockets(ee: EEContainer) -> int:
    """ControlPersist sockets left in the EE user's control path dir."""
    out = docker("exec", ee.name, "sh", "-c", "ls -A ~/.ansible/cp 2>/dev/null | wc -l", check=False)
    return int(out.stdout.strip() or 0)
