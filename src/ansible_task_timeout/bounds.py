"""Every wait of the task-timeout guarantee, in one place and derived from each other.

The worker's own path after a deadline (alarm, unwind, kill and release, send) is budgeted to end
inside :data:`WATCHDOG_GRACE`; the controller's watchdog gives the hard bound, :data:`RESULT_BOUND`,
whatever the worker does. The controller's own cadences (watchdog passes, guardian polls, the sweep)
follow. The order of the bounds is asserted at import, so an edit that breaks it fails at once.

The other modules read these as ``bounds.NAME`` when they run, not at import, so one place (or a
test) changes a bound for all of them.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- the worker

UNWIND_GRACE = 1.0
"""After a deadline fired, the alarm re-fires every this many seconds until the scope is left,
so no ``finally`` block (remote cleanup, connection close, an over-broad ``except``) can hang."""

DEFERRED_REFIRE = 0.05
"""An alarm deferred by a section that keeps SIGALRM out also re-arms the timer this soon, so it is
not lost if the section is left by an exception before the alarm could be raised at its end."""

KILL_GRACE = 1.0
"""Seconds between SIGTERM and SIGKILL, and again to reap, when a worker kills its process tree."""

MASTER_EXIT_TIMEOUT = 1.0
"""Bound for ``ssh -O stop``, and for each wait for a master to end: the master answers locally,
but nothing here may wait forever."""

REAP_BUDGET = 2.5
"""The worker's whole kill-and-release after a timeout: later steps are skipped once it is spent,
and what is left goes to the watchdog, the guardian and the end of the run."""

SEND_MARGIN = 1.0
"""What the worker keeps for building and writing its timeout result."""

CLEANUP_LIMIT = 10.0
"""Bound for the remote tmp cleanup of an attempt that did *not* time out, when a limit is in force."""

RESOLVE_LIMIT = 60
"""Bound for templating a ``task_timeout`` value in the worker (a lookup may hang as well)."""

# --------------------------------------------------------------------------- the controller

WATCHDOG_GRACE = UNWIND_GRACE + REAP_BUDGET + SEND_MARGIN
"""Seconds after ``task_timeout`` before the controller kills a worker that did not report: one
blocking ``finally`` interrupted, the budgeted reap and the send fit in it."""

RESULTS_POLL = 0.2
"""Longest the controller's results thread blocks before it re-checks deadlines and dead workers."""

CONTROLLER_WAIT = 0.1
"""Longest the strategy's main thread sleeps waiting for a free worker slot or for results
(:mod:`ansible_task_timeout.waiting`) before it looks again on its own, as upstream does after each
of its short sleeps: a terminated run or a dead worker is noticed this soon at the latest."""

WATCHDOG_KILL_WAIT = 1.0
"""How long the watchdog waits for a SIGKILLed worker tree before it records the result."""

RESULT_BOUND = WATCHDOG_GRACE + RESULTS_POLL + WATCHDOG_KILL_WAIT
"""The hard bound: a timed-out task's result is recorded at most this long after ``task_timeout``
(from the worker's start as the controller sees it), whatever the worker does. A worker that
cooperates, the usual case, reports within a few tenths of a second of the limit."""

EXIT_STATUS_WAIT = 2.0
"""How long the controller polls for the exit status of a worker whose pipe reached EOF without a
result: the EOF comes a moment before the worker can be reaped, and its status names the cause."""

SUPERVISE_INTERVAL = 0.1
"""Least seconds between two watchdog passes over the workers in the results thread.

A pass costs a waitpid() per live worker, and each syscall hands the GIL over: run after every
result frame it would slow the strategy's main thread, which forks the next workers. A worker's
exit is seen at once anyway, by EOF on its pipe."""

SWEEP_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL when the run's leftovers are swept."""

GUARDIAN_EXIT_WAIT = 3 * SWEEP_GRACE
"""How long the controller waits, at its normal end, for the released guardian to exit."""

GUARD_POLL = 0.5
"""How often the guardian lists the controller's children (and checks that it is alive)."""

RACE_WINDOW = SWEEP_GRACE + 1.0
"""After the controller's death, how long a master born since may still count as one of the run's
(see ``guardian._RunWatch``): a worker still alive can start one until the sweep has killed it,
at most one sweep grace later; and a second of slack."""

REAP_INTERVAL = 1.0
"""Least seconds between two scans for adopted zombies as workers start.

A scan stats every child of the controller, and with ControlPersist every host of the run has a
live master among them: a scan at every worker start would make the cost per host grow with the
fleet. An adopted zombie waits at most this long (and is reaped at the end); much longer, and tools
that read the controller's children see the zombies of killed workers' children."""

assert UNWIND_GRACE + REAP_BUDGET < WATCHDOG_GRACE, "the worker's own timeout path must end first"
assert 2 * KILL_GRACE <= REAP_BUDGET, "one kill round (SIGTERM, wait, SIGKILL, wait) fits the budget"
