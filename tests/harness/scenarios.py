"""The hang matrix: each way a host can hang, as a scenario that sets itself up, runs and cleans up.

A scenario names its playbook (tests/playbooks/hang_*.yml), how its *victim* container is prepared
(memory limit, marker files, host vars) and, for the container-level hangs, which phase to wait for
and what to do then (hang.PhaseTrigger). `run_scenario` is shared by the matrix tests, the stock
reference and anything else that wants "the same scenario": one EE container per run, torn down
afterwards together with the victim, also when the run hung or the test failed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import hang
from harness.hang import MemoryEvidence, PhaseTrigger, Predicate
from harness.hoststate import HostState, host_state, memory_after_relief, settled_state, thaw
from harness.runner import KEY_IN_EE, EEContainer, RunResult, base_env, run_playbook, stage_project
from harness.targets import Network, SshKey, Target, inventory_ini, start_target

BIG_FILE_BYTES = 24 * 1024 * 1024
"""Random payload of the transfer scenario: big enough that sftp is still busy when frozen."""


@dataclass(frozen=True)
class Scenario:
    """One hang mode."""

    name: str
    playbook: str
    what: str
    hang_task: str = "hang"
    phase: Predicate | None = None
    action: Callable[[Target], None] | None = None
    markers: tuple[str, ...] = ()
    host_vars: dict[str, str] = field(default_factory=dict)
    memory_limit: str | None = None
    big_file: bool = False
    limit_s: int | None = None
    """Overrides the run's limit where the healthy hosts' own work on 2 loaded cores (two xdist
    workers) can come near the default 6 s, since the limit applies to every task of every host:
    copy (stat + transfer + copy), fact gathering, 3 loop items, async. Measured: those took 4-7 s
    per healthy host under -n 2, so 6 s made them time out too (flaky). Async gets 10 s; transfer
    and gather get 15 s, as 10 s left them 3 s, the same thin margin that made the loop flaky. The
    loop gets 20 s: one item is a whole command round trip, and in a clean-clone CI run two healthy
    hosts' third items stalled together past 10 s while the other xdist worker loaded the machine."""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("frozen-connecting", "hang_remote.yml", "target frozen while ssh connects",
                 phase=hang.connecting, action=hang.freeze),
        Scenario("frozen-transfer", "hang_transfer.yml", "target frozen during the sftp transfer",
                 phase=hang.transferring, action=hang.freeze, big_file=True, limit_s=15),
        Scenario("frozen-module", "hang_remote.yml", "target frozen while the module runs",
                 phase=hang.module_running, action=hang.freeze),
        Scenario("frozen-cleanup", "hang_remote.yml", "target frozen during the remote tmp cleanup",
                 phase=hang.cleaning_up, action=hang.freeze, markers=("slow-cleanup",)),
        Scenario("memory-exhausted", "hang_memory.yml", "target out of memory (cgroup, OOM killer off)",
                 phase=hang.memory_victim_running, action=hang.start_memory_hog, memory_limit="128m"),
        Scenario("command-never-returns", "hang_command.yml", "a command that never returns"),
        Scenario("killed", "hang_remote.yml", "target killed mid-task (docker kill)",
                 phase=hang.module_running, action=hang.kill),
        Scenario("network-cut", "hang_remote.yml", "network cut mid-task (docker network disconnect)",
                 phase=hang.module_running, action=hang.cut_network),
        Scenario("become-never-answers", "hang_become.yml", "sudo never shows its prompt",
                 markers=("hang-become",)),
        Scenario("gather-facts", "hang_gather.yml", "gather_facts hangs", hang_task="Gathering Facts",
                 host_vars={"ansible_python_interpreter": "/usr/local/bin/python-hang"}, limit_s=15),
        Scenario("delegate-localhost", "hang_delegate.yml", "a delegate_to: localhost action hangs"),
        Scenario("async-polled-forever", "hang_async.yml", "an async job polled forever", limit_s=10),
        Scenario("handler", "hang_handler.yml", "a hung handler"),
        Scenario("loop-item", "hang_loop.yml", "one hung loop item", limit_s=20),
        Scenario("include-tasks", "hang_include.yml", "a hung task inside include_tasks"),
    ]
}  # fmt: skip

HUNG = "hung"
_counter = itertools.count(1)


@dataclass
class Lab:
    """What a session (one per xdist worker) shares: network, key, the pool of healthy hosts."""

    session: str
    network: Network
    key: SshKey
    pool: Target
    workdir: Path

    def healthy(self, count: int) -> dict[str, str]:
        """`count` healthy inventory hosts served by the pool (name -> network alias)."""
        if count > len(self.pool.aliases):
            raise ValueError(f"the pool has only {len(self.pool.aliases)} aliases")
        return {alias: alias for alias in self.pool.aliases[:count]}


@dataclass
class Outcome:
    """A scenario run: the play's results plus what the hang machinery saw."""

    scenario: Scenario
    strategy: str
    limit_s: int
    run: RunResult
    trigger: PhaseTrigger | None
    memory: MemoryEvidence | None
    healthy: list[str]
    victim_setup_s: float = 0.0
    healthy_left: HostState | None = None
    """What the run left on the healthy hosts' target (remote tmp dirs, processes), seen inside it."""
    recovered_left: HostState | None = None
    """For a frozen host: what the run left there, seen after it was thawed (the host recovers)."""
    memory_inside: dict[str, int] | None = None
    """For the memory scenario: the target's cgroup counters read inside it, after the relief."""


def run_scenario(
    lab: Lab,
    scenario: Scenario,
    *,
    image: str,
    strategy: str = "linear",
    limit_s: int = 6,
    healthy_count: int = 5,
    forks: int | None = None,
    outer_limit_s: float = 90.0,
    limit_env: str = "ANSIBLE_TASK_DEADLINE",
) -> Outcome:
    """Run `scenario` once against a fresh victim and a fresh EE container; always clean up.

    `limit_s` is the task limit (the scenario's own `limit_s` wins); `forks` defaults to one per host.
    """
    limit_s = scenario.limit_s or limit_s
    n = next(_counter)
    tag = f"{scenario.name}-{strategy}-{n}"
    victim_alias = f"hung-{n}"
    project = lab.workdir / tag
    healthy = lab.healthy(healthy_count)
    hosts = {**healthy, HUNG: victim_alias}
    extra: dict[str, bytes] = {}
    if scenario.big_file:
        extra["big.bin"] = os.urandom(BIG_FILE_BYTES)
    inventory = inventory_ini(hosts, KEY_IN_EE, hung=[HUNG], host_vars={HUNG: scenario.host_vars})
    stage_project(project, scenario.playbook, inventory, extra)

    victim: Target | None = None
    ee: EEContainer | None = None
    trigger: PhaseTrigger | None = None
    try:
        victim = start_target(
            lab.session, lab.network, lab.key, f"{lab.session}-victim-{n}", [victim_alias],
            memory_limit=scenario.memory_limit,
        )  # fmt: skip
        for marker in scenario.markers:
            victim.set_marker(marker)
        ee = EEContainer.start(lab.session, image, lab.network, project, lab.key, tag=str(n))
        pool_before, victim_before = host_state(lab.pool.name), host_state(victim.name)
        if scenario.phase is not None and scenario.action is not None:
            trigger = PhaseTrigger(victim, scenario.phase, scenario.action, scenario.name).start()
        env = base_env(strategy, forks=forks or healthy_count + 1)
        env[limit_env] = str(limit_s)
        try:
            result = run_playbook(
                ee,
                scenario.playbook,
                env=env,
                outer_limit_s=outer_limit_s,
                healthy_ips=frozenset({lab.pool.ip}),
            )
        finally:
            if trigger is not None:
                trigger.stop()
        memory = hang.memory_evidence(victim) if scenario.memory_limit else None
        outcome = Outcome(scenario, strategy, limit_s, result, trigger, memory, list(healthy))
        outcome.healthy_left = settled_state(lab.pool.name, pool_before)
        if scenario.action is hang.freeze and trigger is not None and trigger.fired_at is not None:
            thaw(victim.name)
            outcome.recovered_left = settled_state(victim.name, victim_before)
        if scenario.memory_limit:
            outcome.memory_inside = memory_after_relief(victim.name)
        return outcome
    finally:
        if ee is not None:
            ee.remove()
        if victim is not None:
            victim.remove()
