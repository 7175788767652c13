"""ansible_task_timeout.bounds: the waits after a deadline keep their order."""

from __future__ import annotations

from ansible_task_timeout import bounds


def test_the_bounds_are_derived_from_each_other() -> None:
    """The worker's own timeout path is budgeted to end before the watchdog steps in."""
    assert bounds.UNWIND_GRACE + bounds.REAP_BUDGET + bounds.SEND_MARGIN == bounds.WATCHDOG_GRACE
    assert bounds.UNWIND_GRACE + bounds.REAP_BUDGET < bounds.WATCHDOG_GRACE
    assert 2 * bounds.KILL_GRACE <= bounds.REAP_BUDGET
    assert 3 * bounds.MASTER_EXIT_TIMEOUT <= bounds.REAP_BUDGET + 0.5
    assert bounds.RESULT_BOUND == bounds.WATCHDOG_GRACE + bounds.RESULTS_POLL + bounds.WATCHDOG_KILL_WAIT


def test_the_controller_cadences_fit_the_bounds() -> None:
    """A watchdog pass comes well within a results poll, and the guardian's window covers its sweep."""
    assert bounds.SUPERVISE_INTERVAL <= bounds.RESULTS_POLL
    assert bounds.RACE_WINDOW > bounds.SWEEP_GRACE
    assert bounds.GUARDIAN_EXIT_WAIT > bounds.SWEEP_GRACE
