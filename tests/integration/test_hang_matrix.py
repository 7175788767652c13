"""The hang matrix: every way a host can hang x (linear, free).

For each scenario the host `hung` hangs (see tests/harness/scenarios.py for how), the play runs through
the EE image with a task limit of LIMIT_S seconds, and the guarantee is checked as a whole:
the run ends by itself, `hung` fails with `task_timeout: true` within LIMIT_S + 2 s of its task's
start, every other host runs every later task with its own results, and the EE container holds no
leftover process (ssh client, [mux] master, zombie, module). On stock ansible-core every case fails
or hits the outer limit (see test_stock_reference.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
from harness.scenarios import HUNG, SCENARIOS, Lab, run_scenario
from harness.verdict import guarantee_problems

pytestmark = pytest.mark.integration

LIMIT_S = int(os.environ.get("TT_LIMIT_S", "10"))
"""The task limit. It applies to every task of every host (ANSIBLE_TASK_DEADLINE), and a healthy
host's first connection on 2 cores shared by two xdist workers took over 6 s now and then."""
OUTER_LIMIT_S = float(os.environ.get("TT_OUTER_LIMIT_S", "90"))


@pytest.mark.parametrize("strategy", ["linear", "free"])
@pytest.mark.parametrize("mode", list(SCENARIOS))
def test_hung_host_times_out_alone(
    lab: Lab, ee_image: str, mode: str, strategy: str, record_property: Callable[[str, object], None]
) -> None:
    """The hung host fails with task_timeout in time; the others finish; nothing is left behind,
    neither in the EE nor on the healthy hosts (seen from inside their target with testinfra)."""
    scenario = SCENARIOS[mode]
    outcome = run_scenario(
        lab, scenario, image=ee_image, strategy=strategy, limit_s=LIMIT_S, outer_limit_s=OUTER_LIMIT_S
    )
    if outcome.trigger is not None:
        outcome.trigger.assert_fired()
    if outcome.memory is not None:
        assert outcome.memory.real, f"memory pressure was not real: {outcome.memory}"
        inside = outcome.memory_inside
        assert inside is not None and inside["oom_kill_disable"] == 1, inside
        assert inside["max_usage_bytes"] >= outcome.memory.limit_bytes * 0.98, inside  # it hit the limit
    if outcome.recovered_left is not None:
        report_recovered_host(record_property, mode, strategy, outcome.recovered_left.describe())
    problems, _ = guarantee_problems(outcome.run, HUNG, outcome.healthy, scenario.hang_task, outcome.limit_s)
    if outcome.healthy_left:
        problems.append(f"the run left this on the healthy hosts: {outcome.healthy_left.describe()}")
    assert not problems, "\n".join(problems) + "\n" + outcome.run.describe()


def report_recovered_host(record_property: Callable[[str, object], None], *what: str) -> None:
    """What a frozen host keeps of the run once it recovers: in the JUnit report, and in TT_HOST_REPORT."""
    record_property("recovered_host", " | ".join(what))
    if path := os.environ.get("TT_HOST_REPORT"):
        with open(path, "a") as report:
            report.write(json.dumps(what) + "\n")


def test_frozen_host_among_dozens(lab: Lab, ee_image: str) -> None:
    """30 healthy hosts (one pool container) and one frozen host: the guarantee holds at scale.

    The limit applies to every task of every host, and 30 first connections on 2 cores shared with
    another xdist worker take longer than 6 s per host, 8 handshakes at a time: hence forks=8 and
    a limit of at least 15 s here.
    """
    scenario = SCENARIOS["frozen-module"]
    outcome = run_scenario(
        lab,
        scenario,
        image=ee_image,
        limit_s=max(LIMIT_S, 15),
        healthy_count=30,
        forks=8,
        outer_limit_s=OUTER_LIMIT_S + 60,
    )
    assert outcome.trigger is not None
    outcome.trigger.assert_fired()
    problems, _ = guarantee_problems(outcome.run, HUNG, outcome.healthy, scenario.hang_task, outcome.limit_s)
    assert not problems, "\n".join(problems) + "\n" + outcome.run.describe()
