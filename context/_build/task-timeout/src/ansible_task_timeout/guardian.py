"""The guardian: a process of its own that sweeps the run once its controller is gone.

Started by :func:`ansible_task_timeout.guard.ensure_run_guard` as
``python -s -P -m ansible_task_timeout.guardian RUN_ID CONTROLLER_PID FD``, in its own session and
without the run id, so that neither a killpg of the controller's group nor its own sweep ends it.
It holds the read end of a pipe whose write end only the controller holds: EOF there is the
controller's end, however it came. Until then it lists the controller's children every
``bounds.GUARD_POLL`` seconds (:class:`_RunWatch`), to know the ssh masters that no run id shows.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Sequence

import psutil

from ansible_task_timeout import bounds, guard, proctree, sshmux


class _RunWatch:
    """What the guardian learns about the run while the controller lives (polled every GUARD_POLL).

    OpenSSH's setproctitle() overwrites a ControlPersist master's whole argv+environ area, so
    /proc/<pid>/environ of a master never shows the run id, and daemon() puts it in its own
    session. While the controller lives it is the master's subreaper, so the master is one of
    the controller's children: each poll lists them (via /proc/<pid>/task/*/children, not a scan
    of the whole process table) and remembers (pid, starttime) of every ssh client and
    ``ssh: <path> [mux]`` master among them, and the directories of their ControlPaths. After
    the controller's death those still alive with the same starttime are killed (a reused pid is
    never hit).

    Remaining race: a master born after the last poll that listed the children, right before a SIGKILL
    of the controller, was never seen. Bounded by :meth:`race_master`: after the death, a process
    is also killed if it is an ``ssh: <path> [mux]`` master, started after the start of the
    poll before the last one (and after the controller) and no later than the death plus
    ``bounds.RACE_WINDOW``, is an orphan (its parent is PID 1 or one of the controller's ancestors, where the
    kernel re-parents orphans when the subreaper dies; another live run's masters have that run's
    controller or worker as parent), and has its socket in a directory where this run's ssh
    processes had theirs (or ansible's default ``~/.ansible/cp``). Left: such a master of an
    unpatched concurrent run, born in that second or two in the same directory.
    """

    def __init__(self, controller_pid: int, workers: dict[int, int] | None = None) -> None:
        self.controller_pid = controller_pid
        self.workers = workers if workers is not None else {}  # the registered workers (pid -> ticks)
        stat = proctree.stat(controller_pid)
        self.controller_start = stat.starttime if stat is not None else 0
        self.ancestors: set[int] = {1}
        pid = stat.ppid if stat is not None else 0
        while pid > 1 and pid not in self.ancestors:
            self.ancestors.add(pid)
            parent = proctree.stat(pid)
            pid = parent.ppid if parent is not None else 0
        self.known: dict[int, tuple[int, bytes]] = {}  # the controller's children: pid -> (starttime, comm)
        self.remembered: dict[int, int] = {}  # pid -> starttime of the ssh processes seen
        default = os.environ.get("ANSIBLE_SSH_CONTROL_PATH_DIR") or "~/.ansible/cp"
        self.dirs: set[str] = {os.path.realpath(os.path.expanduser(default))}
        self.polls: list[int] = []  # start (ticks) of the last two polls
        self.window_end: int | None = None

    def poll(self) -> None:
        """List the controller's children; remember the ssh clients and masters among them.

        Its children, not its whole tree: ssh daemonises a ControlPersist master (fork, then
        daemon()), so as subreaper the controller is the parent of every master, and an ssh client
        carries the run id (or is below a registered worker, which the sweep covers). Only a pid
        the previous poll did not list, or that may have exec'd since (neither a registered worker,
        which never execs, nor an ssh process already remembered), is read, and its cmdline only
        if its comm is ssh's: the guardian shares the machine with the run it guards, and a walk of
        the whole tree reading everything at every poll would take a share of it that grows with
        the forks.
        """
        start = proctree.now_ticks()
        known: dict[int, tuple[int, bytes]] = {}
        for pid in proctree.children(self.controller_pid):
            entry = self.known.get(pid)
            if entry is not None and (pid in self.workers or pid in self.remembered):
                known[pid] = entry
                continue
            stat = proctree.stat(pid)
            if stat is None or stat.state == "Z":
                continue
            if entry != (stat.starttime, stat.comm) and stat.comm in sshmux.SSH_COMMS:  # new, or exec'd since
                cmdline = proctree.cmdline(pid) or []
                if sshmux.is_ssh(cmdline):
                    self.remembered[pid] = stat.starttime
                    self.dirs.update(os.path.dirname(path) for path in sshmux.parse_cmdline(cmdline).paths)
            known[pid] = (stat.starttime, stat.comm)
        self.known = known
        for pid, starttime in list(self.remembered.items()):
            if pid not in known and not self._same(pid, starttime):
                del self.remembered[pid]
        self.polls = [*self.polls[-1:], start]

    def controller_died(self) -> None:
        self.window_end = proctree.now_ticks() + int(bounds.RACE_WINDOW * proctree.CLK_TCK)

    @staticmethod
    def _same(pid: int, starttime: int) -> bool:
        stat = proctree.stat(pid)
        return stat is not None and stat.state != "Z" and stat.starttime == starttime

    def belongs(self, pid: int) -> bool:
        """After the controller's death: a remembered ssh process, or a master of the race window."""
        starttime = self.remembered.get(pid)
        if starttime is not None and self._same(pid, starttime):
            return True
        return self.race_master(pid)

    def race_master(self, pid: int) -> bool:
        """A master that may have been born after the last poll that could have seen it."""
        stat = proctree.stat(pid)
        if stat is None or stat.state == "Z" or stat.comm != b"ssh":
            return False
        low = max(self.polls[-2], self.controller_start) if len(self.polls) == 2 else self.controller_start
        high = self.window_end if self.window_end is not None else proctree.now_ticks()
        if not low <= stat.starttime <= high or stat.ppid not in self.ancestors:
            return False
        path = sshmux.parse_cmdline(proctree.cmdline(pid) or []).live_master
        return path is not None and os.path.dirname(path) in self.dirs


def _started() -> None:
    """Tell the controller the guardian started: its stderr, a pipe to the controller, reaches EOF.

    Until here a failure (this package not importable, say) prints its reason there and exits,
    which the controller reports; from here on stderr is /dev/null, as the guardian has no terminal.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> None:
    """The guardian (own session, no run id): wait for the controller to end, then sweep the run.

    argv: run id, controller pid, read fd. Lines ``W <pid> <ticks>`` register workers. EOF on
    the pipe, or the controller's pid gone (should a stray process still hold the write end), means
    the controller ended. Every GUARD_POLL seconds while it lives, :class:`_RunWatch` records the
    ssh processes among its children, which the sweep after its death adds to the run id and the
    workers.
    """
    args = sys.argv[1:] if argv is None else argv
    run_id, controller_pid, fd = args[0], int(args[1]), int(args[2])
    _started()
    with contextlib.suppress(OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C to the terminal's group is not ours to obey
    workers: dict[int, int] = {}
    pending = b""
    normal_end = False
    try:
        controller = psutil.Process(controller_pid)
    except psutil.Error:
        controller = None
    watch = _RunWatch(controller_pid, workers)
    next_poll = 0.0
    while controller is not None:
        now = time.monotonic()
        if now >= next_poll:
            try:
                if not controller.is_running() or controller.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.Error:
                break
            watch.poll()
            next_poll = time.monotonic() + bounds.GUARD_POLL
            continue
        ready, _w, _x = select.select([fd], [], [], next_poll - now)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"W":
                workers[int(parts[1])] = int(parts[2])
            elif parts == [b"Q"]:
                normal_end = True  # the controller swept at its own exit
    if not normal_end:
        watch.controller_died()
        guard.sweep(run_id, workers.items(), {os.getpid()}, also=watch.belongs)


if __name__ == "__main__":
    main()
