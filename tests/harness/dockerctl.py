"""Thin, bounded wrapper around the docker CLI for the integration harness.

Every call has a timeout so a wedged daemon or a frozen container can never hang the suite, and
everything the suite creates carries the same labels so a leftover of a crashed run can be found
and swept by the next one (see `sweep_stale`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ENGINE = os.environ.get("CONTAINER_ENGINE", "docker")
LABEL = "task-timeout-ee.test"
"""Label key on every container and network the suite creates; its value is the session id."""
OWNER_LABEL = "task-timeout-ee.owner-pid"
"""PID of the pytest (or demo) process that created the object: dead owner = stale object."""
CREATED_LABEL = "task-timeout-ee.created"
STALE_AFTER_S = 3 * 3600.0
"""Objects older than this are swept even when their owner PID looks alive (PID reuse)."""


class DockerError(RuntimeError):
    """A docker CLI call failed; carries the command and its stderr."""


def docker(*args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `docker ARGS` with a hard timeout; raise DockerError on failure when `check`."""
    cmd = [ENGINE, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"{' '.join(cmd)!r} did not return within {timeout} s") from exc
    if check and proc.returncode != 0:
        raise DockerError(f"{' '.join(cmd)!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def label_args(session: str) -> list[str]:
    """`--label` options that mark an object as created by this session and this process."""
    return [
        "--label",
        f"{LABEL}={session}",
        "--label",
        f"{OWNER_LABEL}={os.getpid()}",
        "--label",
        f"{CREATED_LABEL}={int(time.time())}",
    ]


def _owner_alive(pid_text: str) -> bool:
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(current_session: str) -> list[str]:
    """Remove labelled containers and networks of sessions that are over.

    A session is over when its owner PID is gone or the object is older than STALE_AFTER_S. Objects
    of live concurrent sessions (another engineer's run, another xdist worker) are left alone.
    Returns the names removed, for the log.
    """
    removed: list[str] = []
    now = time.time()

    def stale(labels: dict[str, str]) -> bool:
        if labels.get(LABEL) == current_session and labels.get(OWNER_LABEL) == str(os.getpid()):
            return False
        too_old = now - float(labels.get(CREATED_LABEL, "0") or 0) > STALE_AFTER_S
        return too_old or not _owner_alive(labels.get(OWNER_LABEL, ""))

    ids = docker("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
    if ids:
        for info in json.loads(docker("inspect", *ids, check=False).stdout or "[]"):
            if stale(info["Config"].get("Labels") or {}):
                docker("rm", "-f", "-v", info["Id"], check=False)
                removed.append(info["Name"].lstrip("/"))
    nets = docker("network", "ls", "-q", "--filter", f"label={LABEL}", check=False).stdout.split()
    if nets:
        for info in json.loads(docker("network", "inspect", *nets, check=False).stdout or "[]"):
            if stale(info.get("Labels") or {}):
                docker("network", "rm", info["Id"], check=False)
                removed.append(info["Name"])
    return removed


def remove_containers(names: Sequence[str]) -> None:
    """Force-remove containers, unpausing first (a frozen container must not outlive the test)."""
    for name in names:
        docker("unpause", name, check=False, timeout=30)
        docker("rm", "-f", "-v", name, check=False, timeout=60)


def container_id(name: str) -> str:
    """The full id of a container (cgroup paths are keyed by it)."""
    return docker("inspect", "-f", "{{.Id}}", name).stdout.strip()


def cgroup_dir(name: str, controller: str) -> Path | None:
    """The cgroup v1 directory of a container for `controller` (cgroupfs driver), if there is one."""
    cid = container_id(name)
    for candidate in (
        Path("/sys/fs/cgroup") / controller / "docker" / cid,
        Path("/sys/fs/cgroup") / controller / "system.slice" / f"docker-{cid}.scope",
    ):
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class Proc:
    """One process of a container, seen from the host."""

    pid: int
    cmdline: str
    fds: tuple[str, ...] = ()


class ContainerProcs:
    """Reads a container's process table from the host, fast enough to catch a short-lived phase.

    Reading cgroup.procs and /proc directly takes a few milliseconds, where `docker top` or
    `docker exec pgrep` take 100+ ms and would miss a phase like an sftp transfer; `docker top`
    is the fallback when the cgroup is not visible (another cgroup layout).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._procs_file: Path | None = None
        for controller in ("pids", "memory", "cpu"):
            d = cgroup_dir(name, controller)
            if d is not None and (d / "cgroup.procs").exists():
                self._procs_file = d / "cgroup.procs"
                break

    def list(self, with_fds: bool = False) -> list[Proc]:
        """Current processes (pid, cmdline and, when asked, the targets of their open fds)."""
        if self._procs_file is None:
            out = docker("top", self.name, "-eo", "pid,args", check=False, timeout=15).stdout
            rows = [line.split(None, 1) for line in out.splitlines()[1:]]
            return [Proc(int(r[0]), r[1] if len(r) > 1 else "") for r in rows if r]
        try:
            pids = [int(p) for p in self._procs_file.read_text().split()]
        except OSError:
            return []
        procs: list[Proc] = []
        for pid in pids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fds: tuple[str, ...] = ()
            if with_fds:
                fd_dir = Path(f"/proc/{pid}/fd")
                found = []
                with contextlib.suppress(OSError):
                    for fd in fd_dir.iterdir():
                        with contextlib.suppress(OSError):
                            found.append(os.readlink(fd))
                fds = tuple(found)
            procs.append(Proc(pid, cmd.strip(), fds))
        return procs
