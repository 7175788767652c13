"""Run a command and print the peak RSS (KiB) of its largest process, as JSON on the last line.

ru_maxrss of RUSAGE_CHILDREN covers every waited-for descendant: the ansible-playbook controller
and, through it, its workers; the controller is the largest.
"""

import json
import resource
import subprocess
import sys

rc = subprocess.call(sys.argv[1:])
print(json.dumps({"rc": rc, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
