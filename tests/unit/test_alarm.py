"""ansible_task_timeout.alarm with real signals: nesting, re-firing, and the sections that keep it out."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from standins import SRC

from ansible_task_timeout import alarm, bounds, limit


class Boom(BaseException):
    """What the test alarms raise."""


def test_alarm_interrupts_a_blocking_sleep_and_leaves_sig_dfl() -> None:
    start = time.monotonic()
    with pytest.raises(Boom), alarm.alarm(0.3, Boom):
        time.sleep(10)
    assert 0.25 < time.monotonic() - start < 2
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL


def test_alarm_refuses_a_foreign_handler_or_timer_like_upstream() -> None:
    """Upstream's alarm_timeout never replaces someone else's alarm: neither does ours.

    What upstream's test_alarm_timeout_bad_state checks, but for nesting: our own scopes nest
    (the whole-task deadline is armed around upstream's per-attempt timeout), see docs/design.md.
    """

    def foreign(_s: int, _f: object) -> None:
        raise AssertionError("the foreign handler must not be called")

    old = signal.signal(signal.SIGALRM, foreign)
    try:
        with pytest.raises(RuntimeError, match="existing alarm handler"), alarm.alarm(1, Boom):
            pytest.fail("must not run")  # pragma: no cover
        assert signal.getsignal(signal.SIGALRM) is foreign
    finally:
        signal.signal(signal.SIGALRM, old)
    signal.setitimer(signal.ITIMER_REAL, 1000)
    try:
        with pytest.raises(RuntimeError, match="existing alarm was set"), alarm.alarm(1, Boom):
            pytest.fail("must not run")  # pragma: no cover
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 990  # left as it was
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    ran_inner = False
    with alarm.alarm(5, Boom), alarm.alarm(5, Boom):
        ran_inner = True
    assert ran_inner


def test_alarm_zero_is_off() -> None:
    with alarm.alarm(0, Boom):
        assert not alarm.limit_in_force()


def test_outer_deadline_wins_over_inner_timeout() -> None:
    with (
        pytest.raises(limit.TaskDeadlineExceeded) as info,
        alarm.task_deadline(1, started=time.monotonic() - 0.7),
        alarm.alarm(5, Boom),
    ):
        time.sleep(10)
    assert info.value.limit == 1
    assert str(info.value) == "Task execution timed out, limit is: 1 second(s)"


def test_inner_timeout_fires_and_outer_stays_armed() -> None:
    with alarm.alarm(5, lambda: limit.TaskDeadlineExceeded(5)):
        with pytest.raises(Boom), alarm.alarm(0.2, Boom):
            time.sleep(10)
        remaining, _interval = signal.getitimer(signal.ITIMER_REAL)
        assert 3.5 < remaining <= 5


def test_expired_deadline_refires_during_unwinding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A finally block that hangs after expiry (remote cleanup on a frozen host) is interrupted again."""
    monkeypatch.setattr(bounds, "UNWIND_GRACE", 0.3)
    start = time.monotonic()
    with pytest.raises(limit.TaskDeadlineExceeded), alarm.task_deadline(1, started=time.monotonic() - 0.8):
        try:
            time.sleep(10)
        finally:
            time.sleep(10)  # the hanging cleanup
    assert time.monotonic() - start < 2


def test_once_the_deadline_fired_an_inner_alarm_raises_the_deadline_again() -> None:
    """Upstream code that swallows the deadline (an over-broad except) and then hits its own
    connection or attempt timeout: the result is still the task's timeout, not the inner one's."""
    with pytest.raises(limit.TaskDeadlineExceeded), alarm.task_deadline(1, started=time.monotonic() - 0.9):
        with contextlib.suppress(limit.TaskDeadlineExceeded):  # swallowed
            time.sleep(10)
        with alarm.alarm(0.2, Boom):
            time.sleep(10)


def test_critical_section_defers_the_alarm_until_the_write_is_done() -> None:
    written: list[str] = []
    start = time.monotonic()
    with pytest.raises(Boom), alarm.alarm(0.1, Boom):
        with alarm.critical_section():
            time.sleep(0.4)  # SIGALRM is blocked: not interrupted
            written.append("frame")
        pytest.fail("must raise when the section ends")
    assert written == ["frame"]
    assert time.monotonic() - start >= 0.4


def test_alarm_pending_on_entry_to_a_section_is_raised_after_it_and_never_left_blocked() -> None:
    """CPython's pthread_sigmask() runs a pending Python handler inside the call, after the mask
    changed. Here the deadline's real SIGALRM is made pending on purpose, then its handler runs
    inside the section's pthread_sigmask exactly as CPython would run it: the alarm must wait for
    the end of the section, and SIGALRM must not stay blocked.

    In a process of its own: while the main thread blocks SIGALRM, the kernel hands the timer's
    signal to any other thread, such as the native one numpy's BLAS starts when tests/bench is
    collected in the same run, and then it is never pending where this test waits for it."""
    code = textwrap.dedent(
        f"""
        import json, signal, sys, time
        sys.path.insert(0, {SRC!r})
        from ansible_task_timeout import alarm, limit
        real = signal.pthread_sigmask
        handler_ran = []

        def sigmask_running_the_pending_handler(how, mask):
            old = real(how, mask)
            if how == signal.SIG_BLOCK and not handler_ran:
                handler_ran.append(True)
                signal.getsignal(signal.SIGALRM)(signal.SIGALRM, None)
            return old

        written, raised = [], False
        real(signal.SIG_BLOCK, {{signal.SIGALRM}})  # hold the deadline's signal back until we take it
        try:
            with alarm.task_deadline(1, started=time.monotonic() - 2):
                end = time.monotonic() + 5
                while signal.SIGALRM not in signal.sigpending():  # the expired deadline's signal
                    assert time.monotonic() < end, "the deadline's SIGALRM never came"
                signal.sigtimedwait([signal.SIGALRM], 0)  # taken: from here it is pending in Python only
                real(signal.SIG_UNBLOCK, {{signal.SIGALRM}})
                signal.pthread_sigmask = sigmask_running_the_pending_handler
                with alarm.critical_section():
                    written.append("frame")
        except limit.TaskDeadlineExceeded:
            raised = True
        finally:
            signal.pthread_sigmask = real
            blocked = signal.SIGALRM in real(signal.SIG_BLOCK, set())
            real(signal.SIG_UNBLOCK, {{signal.SIGALRM}})
        report = dict(raised=raised, handler_ran=bool(handler_ran), blocked=blocked, written=written)
        print(json.dumps(report))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["raised"] and report["handler_ran"]
    assert not report["blocked"], "SIGALRM was left blocked: the deadline is lost for the rest of the worker"
    assert report["written"] == ["frame"], "the alarm was raised on entry to the section, not after it"


def test_a_section_in_another_thread_does_not_defer_the_main_threads_alarm() -> None:
    """The handler runs in the main thread; only the main thread's own sections may defer it."""
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with alarm.critical_section():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert inside.wait(5)
        start = time.monotonic()
        with pytest.raises(Boom), alarm.alarm(0.2, Boom):
            release.wait(5)
        assert time.monotonic() - start < 2, "the other thread's section deferred the alarm"
        assert not release.is_set()
    finally:
        release.set()
        thread.join(5)


def _queue_torture(guard: str) -> tuple[int, int, int]:
    """Put 1 MiB frames on a multiprocessing queue while alarms fire; return (sent, whole, torn)."""
    code = textwrap.dedent(
        f"""
        import contextlib, sys, threading, time, multiprocessing
        sys.path.insert(0, {str(SRC)!r})
        from ansible_task_timeout import alarm
        class Boom(BaseException): pass
        q = multiprocessing.get_context("fork").SimpleQueue()
        payload = b"x" * (1024 * 1024)
        counts = dict(whole=0, torn=0)
        def drain():
            while True:
                try:
                    ok = q.get() == payload
                except Exception:
                    ok = False
                counts["whole" if ok else "torn"] += 1
        threading.Thread(target=drain, daemon=True).start()
        sent = 0
        for i in range(60):
            try:
                with alarm.alarm(0.0003 * (i % 9 + 1), Boom):
                    while True:
                        with {guard}:
                            q.put(payload)
                            sent += 1
            except Boom:
                pass
        time.sleep(1)
        print(sent, counts["whole"], counts["torn"])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    sent, whole, torn = map(int, out.stdout.split())
    return sent, whole, torn


def test_critical_section_keeps_queue_frames_whole() -> None:
    """Large multiprocessing frames are written in two syscalls (W9); none may be torn by the alarm."""
    sent, whole, torn = _queue_torture("alarm.critical_section()")
    assert sent > 0
    assert (whole, torn) == (sent, 0)


def test_queue_frames_do_get_torn_without_critical_section() -> None:
    """Control experiment: proves the torture above can fail (the race of W9 is real).

    The race depends on where the alarms land, and on a loaded machine one round can miss it:
    up to five rounds, the first that tears a frame proves it.
    """
    rounds = []
    for _ in range(5):
        sent, whole, torn = _queue_torture("contextlib.nullcontext()")
        rounds.append((sent, whole, torn))
        if torn > 0 or whole < sent:
            return
    pytest.fail(f"no frame was torn without the critical section in 5 rounds: {rounds}")


def test_alarm_expiring_at_exit_never_reaches_sig_dfl() -> None:
    """W10: disarming races the timer; a stray SIGALRM with SIG_DFL restored would kill the worker."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(SRC)!r})
        from ansible_task_timeout import alarm
        class Boom(BaseException): pass
        fired = 0
        for i in range(3000):
            try:
                with alarm.alarm(0.00002 * (i % 50 + 1), Boom):
                    sum(range(300))
            except Boom:
                fired += 1
        print(fired)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr)  # -14 would be death by SIGALRM
