"""Run ansible-playbook in this process; print its exit code, peak RSS and CPU seconds as JSON.

The controller runs here, not in a child, so its own CPU (every thread of it: strategy, results
thread, watchdog) can be read apart from its children's (workers, guardian, ssh clients): with
RUSAGE_SELF after the run. The CPU seconds in total are the container's own (its cgroup's usage
before and after the run), so a process that is never waited for counts too: stock ansible leaves
its ssh ControlPersist masters running, and the CPU they spent would be missing from
RUSAGE_CHILDREN while the patched controller, which ends and reaps them, pays for theirs. Without
a readable cgroup the total falls back to RUSAGE_SELF + RUSAGE_CHILDREN. The peak RSS is the
largest process of the run: the controller (RUSAGE_SELF) or a waited-for child.

Usage: python3 rusage.py ansible-playbook ARGS...
"""

import json
import resource
import runpy
import shutil
import sys


def cgroup_cpu_s():
    """CPU seconds used so far by this container (cgroup v1 cpuacct or v2 cpu.stat), or None."""
    try:
        with open("/sys/fs/cgroup/cpuacct/cpuacct.usage") as f:
            return int(f.read()) / 1e9
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu.stat") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
    except (OSError, ValueError):
        pass
    return None


def cpu(usage):
    return usage.ru_utime + usage.ru_stime


def run(argv):
    """Run the console script `argv[0]` as __main__ with `argv`; return its exit code."""
    path = shutil.which(argv[0])
    if path is None:
        sys.exit(f"rusage.py: {argv[0]} not found on PATH")
    sys.argv = [path, *argv[1:]]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


before = cgroup_cpu_s()
rc = run(sys.argv[1:])
after = cgroup_cpu_s()
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
if before is not None and after is not None:
    cpu_s, source = after - before, "cgroup"
else:
    cpu_s, source = cpu(me) + cpu(kids), "rusage"
print(
    json.dumps(
        {
            "rc": rc,
            "maxrss_kib": max(me.ru_maxrss, kids.ru_maxrss),
            "cpu_s": round(cpu_s, 3),
            "controller_cpu_s": round(cpu(me), 3),
            "cpu_source": source,
        }
    ),
    flush=True,
)
