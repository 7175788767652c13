"""Ways to make a target hang, synchronised by polling its process table, never by sleeping.

A `PhaseTrigger` watches a target container's processes from the host (cgroup.procs + /proc, a
few ms per look) until a predicate says the play reached the phase under test, then acts at once:
freeze it (`docker pause`, the cgroup freezer: TCP stays open, nothing answers), kill it, cut its
network, or start a memory hog. The test then asserts the trigger fired, so a hang that happened
at the wrong moment (or not at all) fails the test instead of passing it by accident.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.dockerctl import ContainerProcs, DockerError, Proc, cgroup_dir, docker
from harness.targets import Target

Predicate = Callable[[list[Proc]], Proc | None]

MODULE_MARKER = "tt-phase-module"
"""argv marker of the module command a trigger waits for (see tests/playbooks/*.yml)."""
MEMORY_VICTIM_MARKER = "tt-memory-victim"


def _first(procs: list[Proc], test: Callable[[Proc], bool]) -> Proc | None:
    return next((p for p in procs if test(p)), None)


def connecting(procs: list[Proc]) -> Proc | None:
    """An sshd connection process exists (OpenSSH 10 forks `sshd-session`/`sshd-auth` per client)."""
    return _first(
        procs, lambda p: "sshd-session" in p.cmdline or "sshd-auth" in p.cmdline or "[preauth]" in p.cmdline
    )


def transferring(procs: list[Proc]) -> Proc | None:
    """An sftp-server is writing the copy task's payload: an open fd on the remote `.source*` file.

    (ansible-core 2.21 names it `.source<ext>` in the remote tmp dir; older ones `source`.)
    """

    def payload(fd: str) -> bool:
        base = fd.rsplit("/", 1)[-1]
        return "ansible-tmp-" in fd and (base == "source" or base.startswith(".source"))

    return _first(procs, lambda p: "sftp-server" in p.cmdline and any(payload(f) for f in p.fds))


def module_running(procs: list[Proc]) -> Proc | None:
    """The module's command (argv carries MODULE_MARKER) is running."""
    return _first(procs, lambda p: MODULE_MARKER in p.cmdline and "AnsiballZ" not in p.cmdline)


def cleaning_up(procs: list[Proc]) -> Proc | None:
    """The remote `rm` of an ansible-tmp dir runs (the target's rm shim, see /etc/tt/slow-cleanup)."""
    return _first(procs, lambda p: "/usr/local/bin/rm" in p.cmdline and "ansible-tmp-" in p.cmdline)


def memory_victim_running(procs: list[Proc]) -> Proc | None:
    """The memory-hungry module of the memory exhaustion scenario is running."""
    return _first(procs, lambda p: MEMORY_VICTIM_MARKER in p.cmdline and "AnsiballZ" not in p.cmdline)


PHASES: dict[str, Predicate] = {
    "connecting": connecting,
    "transfer": transferring,
    "module": module_running,
    "cleanup": cleaning_up,
}


@dataclass
class PhaseTrigger:
    """Background poller: when `predicate` matches the target's processes, run `action` once."""

    target: Target
    predicate: Predicate
    action: Callable[[Target], None]
    description: str
    poll_s: float = 0.01
    fired_at: float | None = None
    """Host wall time (time.time()) at which the phase was seen; None if it never was."""
    acted_at: float | None = None
    matched: Proc | None = None
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> PhaseTrigger:
        """Start polling (call before the play starts)."""
        procs = ContainerProcs(self.target.name)
        with_fds = self.predicate is transferring

        def loop() -> None:
            try:
                while not self._stop.is_set():
                    hit = self.predicate(procs.list(with_fds=with_fds))
                    if hit is not None:
                        self.fired_at, self.matched = time.time(), hit
                        self.action(self.target)
                        self.acted_at = time.time()
                        return
                    self._stop.wait(self.poll_s)
            except BaseException as exc:  # reported by the test through .error
                self.error = exc

        self._thread = threading.Thread(target=loop, name=f"trigger-{self.description}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (no-op once fired) and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def assert_fired(self) -> None:
        """Fail the test when the hang was never produced (the run proved nothing then)."""
        if self.error is not None:
            raise AssertionError(f"trigger {self.description!r} failed: {self.error!r}")
        if self.acted_at is None:
            raise AssertionError(
                f"trigger {self.description!r} never saw its phase: the hang was not produced"
            )


def freeze(target: Target, deadline_s: float = 5.0) -> None:
    """`docker pause`: the cgroup freezer stops every process; the kernel still ACKs TCP.

    runc gives up ("unable to freeze") when a task of the cgroup is mid-fork on a loaded machine;
    that is retried until `deadline_s`, any other error is raised at once.
    """
    end = time.monotonic() + deadline_s
    while True:
        proc = docker("pause", target.name, timeout=30, check=False)
        if proc.returncode == 0:
            return
        if "unable to freeze" not in proc.stderr or time.monotonic() >= end:
            raise DockerError(f"docker pause {target.name} failed: {proc.stderr.strip()}")
        time.sleep(0.02)


def kill(target: Target) -> None:
    """The host loses power mid-task: its address stops answering, no RST, no FIN.

    A bare `docker kill` is not that: tearing down the container's network namespace closes its
    sockets and the peer gets an RST at once. So the target is unplugged first (whatever it sends
    from then on goes nowhere) and only then killed.
    """
    docker("network", "disconnect", "-f", target.network.name, target.name, timeout=30)
    docker("kill", target.name, timeout=30)


def cut_network(target: Target) -> None:
    """`docker network disconnect`: the cable is pulled mid-task; processes keep running."""
    docker("network", "disconnect", "-f", target.network.name, target.name, timeout=30)


HOG_SCRIPT = (
    "import time\n"
    "hog = []\n"
    "while True:\n"
    "    hog.append(b'x' * (1 << 20))\n"  # touched pages: counts against the cgroup at once
)


def start_memory_hog(target: Target) -> None:
    """Start a process in the target that takes every page it can and holds it.

    With --oom-kill-disable the kernel does not kill it at the limit: it, the module and sshd block
    in the kernel as soon as they need one more page.
    """
    docker("exec", "-d", target.name, "python3", "-c", HOG_SCRIPT, "tt-memory-hog", timeout=30)


@dataclass(frozen=True)
class MemoryEvidence:
    """The target's memory cgroup counters (v1) that prove the pressure was real."""

    limit_bytes: int
    max_usage_bytes: int
    failcnt: int
    under_oom: bool
    oom_kill_disable: bool

    @property
    def real(self) -> bool:
        """True when usage reached the limit and the cgroup is stalled under OOM (killer disabled).

        memory.failcnt is recorded too, but not required: on this kernel (v1, OOM killer disabled)
        it stayed 0 while under_oom was 1 and max usage sat at the limit.
        """
        return self.under_oom and self.max_usage_bytes >= self.limit_bytes * 0.95


def memory_evidence(target: Target) -> MemoryEvidence:
    """Read memory.{limit_in_bytes,max_usage_in_bytes,failcnt,oom_control} of the target's cgroup."""
    d = cgroup_dir(target.name, "memory")
    if d is None:
        raise FileNotFoundError(f"no v1 memory cgroup for {target.name}")

    def read(name: str) -> str:
        return Path(d, name).read_text()

    oom = dict(line.split() for line in read("memory.oom_control").splitlines() if line.strip())
    return MemoryEvidence(
        limit_bytes=int(read("memory.limit_in_bytes")),
        max_usage_bytes=int(read("memory.max_usage_in_bytes")),
        failcnt=int(read("memory.failcnt")),
        under_oom=oom.get("under_oom") == "1",
        oom_kill_disable=oom.get("oom_kill_disable") == "1",
    )


def wait_for_memory_stall(target: Target, timeout: float = 20.0) -> MemoryEvidence:
    """Poll the target's cgroup until it is under OOM (the hog filled it); return the evidence."""
    deadline = time.monotonic() + timeout
    ev = memory_evidence(target)
    while not ev.real and time.monotonic() < deadline:
        time.sleep(0.05)
        ev = memory_evidence(target)
    return ev
