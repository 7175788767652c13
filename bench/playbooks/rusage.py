"""Run a command; print its exit code, peak RSS (KiB) and CPU seconds as JSON on the last line.

ru_maxrss of RUSAGE_CHILDREN covers every waited-for descendant: the ansible-playbook controller
and, through it, its workers; the controller is the largest. The CPU seconds are the container's
own (its cgroup's usage before and after the run), so a process that is never waited for counts
too: stock ansible leaves its ssh ControlPersist masters running, and the CPU they spent would
be missing from RUSAGE_CHILDREN while the patched controller, which ends and reaps them, pays
for theirs. Without a readable cgroup it falls back to RUSAGE_CHILDREN.
"""

import json
import resource
import subprocess
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


before = cgroup_cpu_s()
rc = subprocess.call(sys.argv[1:])
after = cgroup_cpu_s()
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
if before is not None and after is not None:
    cpu_s, source = after - before, "cgroup"
else:
    cpu_s, source = usage.ru_utime + usage.ru_stime, "rusage"
print(json.dumps({"rc": rc, "maxrss_kib": usage.ru_maxrss, "cpu_s": round(cpu_s, 3), "cpu_source": source}))
