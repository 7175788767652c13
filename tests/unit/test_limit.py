"""ansible_task_timeout.limit: the values task_timeout takes and the result of a task that outlived it."""

from __future__ import annotations

import pytest

from ansible_task_timeout import limit


@pytest.mark.parametrize(
    "value, expected", [(0, 0), (5, 5), ("7", 7), (" 9 ", 9), (limit.MAX_TASK_TIMEOUT, 31536000)]
)
def test_validate_limit_accepts_whole_seconds(value: object, expected: int) -> None:
    assert limit.validate_limit(value) == expected


@pytest.mark.parametrize(
    "value", [-1, "-1", "abc", 2.5, 2.0, "1.5", True, None, [3], limit.MAX_TASK_TIMEOUT + 1, 100_000_000, ""]
)
def test_validate_limit_refuses_bad_values_naming_keyword_and_value(value: object) -> None:
    with pytest.raises(limit.TaskTimeoutValueError) as info:
        limit.validate_limit(value)
    assert "task_timeout" in str(info.value)
    assert repr(value) in str(info.value)


def test_timed_out_result_shape() -> None:
    assert limit.timed_out_result(3) == {
        "failed": True,
        "changed": False,
        "task_timeout": True,
        "msg": "Task execution timed out, limit is: 3 second(s)",
        "timedout": {"period": 3},
    }


def test_the_deadline_exception_carries_limit_and_message() -> None:
    exc = limit.TaskDeadlineExceeded(4)
    assert exc.limit == 4 and str(exc) == limit.timed_out_message(4)
    assert not isinstance(exc, Exception)  # no `except Exception` on the way up can swallow it


def test_a_literal_limit_needs_no_notice() -> None:
    sent: list[object] = []
    limit.announce_limit(12, 12, sent.append)
    limit.announce_limit("12", 12, sent.append)
    assert sent == []
    limit.announce_limit("{{ x }}", 7, sent.append)
    assert sent == [limit.LimitNotice(7)]
