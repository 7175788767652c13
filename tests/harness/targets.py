"""Managed hosts for the integration tests: sshd target containers on a private docker network.

One *pool* container answers for many inventory hosts at once (a docker network alias per host, so
every host gets its own address, its own ControlPersist master and its own TCP connection), which
keeps dozens of hosts cheap on 2 cores. A host that must hang at the container level (freeze, kill,
network cut, memory exhaustion) gets a *victim* container of its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.dockerctl import DockerError, docker, label_args, remove_containers

TARGET_IMAGE = os.environ.get("TARGET_IMAGE", "task-timeout-ee-target:dev")
BECOME_PASSWORD = "become-secret"
"""The `ansible` user's sudo password on every target (a test fixture, not a secret)."""
SSH_USER = "ansible"


def new_session_id() -> str:
    """A short id naming everything a session creates (unique per pytest-xdist worker too)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"tt{uuid.uuid4().hex[:8]}-{worker}"


@dataclass(frozen=True)
class SshKey:
    """A per-run ed25519 keypair: the private key goes to the EE, the public one to the targets."""

    private: Path
    public: str


def make_ssh_key(directory: Path) -> SshKey:
    """Generate a fresh ed25519 keypair in `directory` (never reused, never baked into an image)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "task-timeout-ee-test", "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return SshKey(private=key, public=(directory / "id_ed25519.pub").read_text().strip())


@dataclass
class Network:
    """A private bridge network for one session (labelled, removed at teardown)."""

    name: str

    @classmethod
    def create(cls, session: str, suffix: str = "net") -> Network:
        """Create `<session>-<suffix>`."""
        name = f"{session}-{suffix}"
        docker("network", "create", *label_args(session), name)
        return cls(name)

    def remove(self) -> None:
        """Remove the network (its containers must be gone already)."""
        docker("network", "rm", self.name, check=False)


@dataclass
class Target:
    """A running sshd target container and the inventory host names it answers for."""

    name: str
    network: Network
    aliases: list[str] = field(default_factory=list)
    memory_limit: str | None = None

    @property
    def ip(self) -> str:
        """The container's address on the session network (used only for the readiness probe)."""
        fmt = '{{(index .NetworkSettings.Networks "' + self.network.name + '").IPAddress}}'
        return docker("inspect", "-f", fmt, self.name).stdout.strip()

    def exec(self, *cmd: str, user: str = "root", timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a command inside the target (setup only: never while the target is frozen)."""
        return docker("exec", "-u", user, self.name, *cmd, timeout=timeout)

    def set_marker(self, marker: str) -> None:
        """Create /etc/tt/<marker> (switches on a hang mode baked into the target image)."""
        self.exec("touch", f"/etc/tt/{marker}")

    def remove(self) -> None:
        """Unpause and force-remove the container."""
        remove_containers([self.name])


def start_target(
    session: str,
    network: Network,
    key: SshKey,
    name: str,
    aliases: Sequence[str],
    memory_limit: str | None = None,
    ready_timeout: float = 60.0,
) -> Target:
    """Start a target answering as every name in `aliases`; return once sshd sends its banner.

    `memory_limit` (e.g. "128m") also sets --memory-swap to the same value and disables the OOM
    killer, so a hog stalls every process of the target instead of being killed (cgroup v1).
    """
    args = ["run", "-d", "--name", name, *label_args(session), "--network", network.name]
    for alias in aliases:
        args += ["--network-alias", alias]
    args += ["-e", f"AUTHORIZED_KEY={key.public}", "-e", f"BECOME_PASSWORD={BECOME_PASSWORD}"]
    if memory_limit:
        args += ["--memory", memory_limit, "--memory-swap", memory_limit, "--oom-kill-disable"]
    args.append(TARGET_IMAGE)
    docker(*args)
    target = Target(name=name, network=network, aliases=list(aliases), memory_limit=memory_limit)
    try:
        wait_for_sshd(target, ready_timeout)
    except BaseException:
        target.remove()
        raise
    return target


def wait_for_sshd(target: Target, timeout: float) -> None:
    """Poll the target's port 22 until it sends an SSH banner (host keys are made at start)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            ip = target.ip
            if ip:
                with socket.create_connection((ip, 22), timeout=2) as sock:
                    sock.settimeout(2)
                    if sock.recv(64).startswith(b"SSH-"):
                        return
        except (OSError, DockerError) as exc:
            last = str(exc)
        time.sleep(0.1)
    logs = docker("logs", "--tail", "20", target.name, check=False)
    raise TimeoutError(f"sshd in {target.name} not ready after {timeout} s ({last}): {logs.stderr}")


def inventory_ini(
    hosts: dict[str, str],
    key_path: str,
    hung: Sequence[str] = (),
    host_vars: dict[str, dict[str, str]] | None = None,
    python: str = "/usr/bin/python3",
) -> str:
    """An INI inventory of `hosts` (inventory name -> network alias); group `hung_hosts` marks victims.

    `localhost` is listed for `delegate_to: localhost` tests, with the EE's own interpreter.
    """
    host_vars = host_vars or {}
    lines = ["[targets]"]
    for host, address in hosts.items():
        extra = " ".join(f"{k}={v}" for k, v in host_vars.get(host, {}).items())
        hang = "True" if host in hung else "False"
        lines.append(f"{host} ansible_host={address} tt_hang={hang} {extra}".rstrip())
    lines += ["", "[hung_hosts]", *hung, ""]
    lines += [
        "[targets:vars]",
        f"ansible_user={SSH_USER}",
        f"ansible_ssh_private_key_file={key_path}",
        f"ansible_python_interpreter={python}",
        f"ansible_become_password={BECOME_PASSWORD}",
        "",
        "[local]",
        'localhost ansible_connection=local ansible_python_interpreter="{{ansible_playbook_python}}"',
        "",
    ]
    return "\n".join(lines)
