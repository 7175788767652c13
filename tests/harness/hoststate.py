"""What a run left on the managed hosts, seen from inside them with pytest-testinfra.

A healthy host must keep nothing of the run: no ``ansible-tmp-*`` directory and no process.
A host that was frozen and recovers keeps what the timeout could not clean up remotely (ansible's
remote cleanup is skipped on purpose: it would never return while the host is frozen); the
hang matrix lists it, so the README can say what a user finds on such a host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import testinfra

from harness.dockerctl import docker
from harness.targets import SSH_USER

REMOTE_TMP = f"/home/{SSH_USER}/.ansible/tmp"
"""ansible's default remote_tmp (~/.ansible/tmp) for the targets' user."""

_BASELINE = ("tini", "tt-entrypoint", "/usr/sbin/sshd", "sshd: /usr/sbin/sshd", "ps ", "/bin/sh -c ps ")
"""The target's own processes: init, the entrypoint and the sshd listener (and testinfra's ps)."""


@dataclass(frozen=True)
class HostState:
    """Remote tmp directories and processes of a target that are not its own."""

    tmp_dirs: frozenset[str]
    processes: frozenset[tuple[int, str]]

    def since(self, before: HostState) -> HostState:
        """What appeared after `before` (a shared target may hold other runs' leftovers)."""
        return HostState(self.tmp_dirs - before.tmp_dirs, self.processes - before.processes)

    def __bool__(self) -> bool:
        return bool(self.tmp_dirs or self.processes)

    def describe(self) -> str:
        procs = "; ".join(f"{pid} {args[:100]!r}" for pid, args in sorted(self.processes)) or "none"
        return f"remote tmp dirs: {sorted(self.tmp_dirs) or 'none'}; processes: {procs}"


def host_state(container: str) -> HostState:
    """Read the target's remote tmp dirs and its non-baseline processes (the target must answer)."""
    host = testinfra.get_host(f"docker://root@{container}")
    listing = host.run(f"find {REMOTE_TMP} -mindepth 1 -maxdepth 1 -name 'ansible-tmp-*'")
    procs = frozenset(
        (int(proc.pid), proc.args)
        for proc in host.process.filter()
        if int(proc.pid) != 1 and not proc.args.startswith(_BASELINE)
    )
    return HostState(frozenset(listing.stdout.split()), procs)


def settled_state(container: str, before: HostState, timeout: float = 10.0) -> HostState:
    """What the run left since `before`, polled until nothing is left or `timeout` passed.

    Polled, not slept: sshd's session processes end a moment after the controller closed the
    connection, and that moment is longer on a loaded machine.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = host_state(container).since(before)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def thaw(container: str) -> None:
    """Unfreeze a paused target (the host recovers)."""
    docker("unpause", container, timeout=30)


def memory_after_relief(container: str, memory: str = "1g") -> dict[str, int]:
    """Relieve a target's memory stall (raise its limit from outside), then read its cgroup inside.

    During the stall nothing can read it from inside: every reader is a process of the full cgroup
    and blocks in the kernel at its next page (seen even for a resident, mlockall'd reader). After
    the relief the cgroup's own counters still show how far it went: its peak usage (the old
    limit) and that the OOM killer was off, so the processes waited instead of dying.
    """
    docker("update", "--memory", memory, "--memory-swap", memory, container, timeout=30)
    host = testinfra.get_host(f"docker://root@{container}")
    cgroup = "/sys/fs/cgroup/memory"
    oom = dict(line.split() for line in host.file(f"{cgroup}/memory.oom_control").content_string.splitlines())
    return {
        "max_usage_bytes": int(host.file(f"{cgroup}/memory.max_usage_in_bytes").content_string),
        "limit_bytes": int(host.file(f"{cgroup}/memory.limit_in_bytes").content_string),
        "oom_kill_disable": int(oom["oom_kill_disable"]),
    }
