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

The short names that docstrings cite for the problems they fix (W1-W3, W8, W9, W10, lab H) are
defined in docs/design.md, "Names used in code comments".
"""

import sys

try:
    import psutil  # noqa: F401  (checked once here: the modules that list or kill processes need it)
except ImportError:

    class PsutilMissing(ImportError):
        """psutil is not installed: the patched core cannot run a task under a deadline."""

    def _one_line(kind, exc, tb, _default=sys.excepthook):  # type: ignore[no-untyped-def]
        # The patched core imports this package while ansible's CLI starts, before ansible handles
        # errors: left uncaught, the error ends the command as its message alone, not a traceback.
        # A program that catches ImportError still can.
        if issubclass(kind, PsutilMissing):
            print(exc, file=sys.stderr)
        else:
            _default(kind, exc, tb)

    sys.excepthook = _one_line
    raise PsutilMissing("ansible_task_timeout: psutil is not installed (pip install psutil)") from None
