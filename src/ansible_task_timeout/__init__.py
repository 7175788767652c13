"""Whole-task deadline (``task_timeout``) and frozen-host hardening for ansible-core.

The patched ansible-core (``patches/``) only calls small hooks; every decision lives in this
package, stdlib and psutil only, so it can be read, typed and unit-tested without ansible. One
concern a module, each importing only those above it:

- ``bounds``: every wait after a deadline, derived from each other;
- ``limit``: the keyword's values, its timeout result and message, its exception types;
- ``proctree``: process trees from /proc: walk, kill, subreaper;
- ``alarm``: the worker's SIGALRM (the deadline, per-attempt timeouts, sections that keep it out);
- ``sshmux``: ssh ControlPersist masters: who uses them, how to let go of them;
- ``worker``: what the worker does around its task (resolve the limit, reap after a timeout);
- ``guard``: the run guard (nothing of a run outlives its controller) and its sweep;
- ``guardian``: the guardian process the run guard starts (``python -m``);
- ``channels``: per-worker result channels and the watchdog, in the controller.
"""

try:
    import psutil  # noqa: F401  (checked once here: the modules that list or kill processes need it)
except ImportError:
    # SystemExit, not ImportError: the patched core imports this while ansible's CLI starts, before
    # it handles errors, so an ImportError would end every command in a traceback. This way the
    # message is the one line printed, and the exit status is 1.
    raise SystemExit("ansible_task_timeout: psutil is not installed (pip install psutil)") from None
