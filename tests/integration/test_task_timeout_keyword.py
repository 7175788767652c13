"""The task_timeout keyword on a task, against a frozen host: the product's promise in one test.

Six hosts, the one named `hung` frozen (docker pause) while its command runs, `task_timeout: 12` on
the task. The patched image fails `hung` alone within 12 + 2 s and runs every later task on the
five others, leaving nothing behind. The very same check, run on stock ansible-core with
upstream's `timeout: 12`, must fail: it is what shows this test can.
"""

from __future__ import annotations

import pytest
from harness import hang
from harness.scenarios import HUNG, Lab, Scenario, run_scenario
from harness.verdict import guarantee_problems

pytestmark = pytest.mark.integration

LIMIT_S = 12


def _scenario(playbook: str) -> Scenario:
    return Scenario(
        "keyword-" + playbook.removesuffix(".yml"),
        playbook,
        "target frozen while the module runs",
        phase=hang.module_running,
        action=hang.freeze,
    )


def _run(lab: Lab, image: str, playbook: str, outer_limit_s: float) -> tuple[list[str], object]:
    # limit_env: the limit is the keyword in the play, not ANSIBLE_TASK_DEADLINE.
    outcome = run_scenario(
        lab,
        _scenario(playbook),
        image=image,
        limit_s=LIMIT_S,
        outer_limit_s=outer_limit_s,
        limit_env="TT_UNUSED",
    )
    assert outcome.trigger is not None
    outcome.trigger.assert_fired()
    problems, _ = guarantee_problems(outcome.run, HUNG, outcome.healthy, "hang", LIMIT_S)
    return problems, outcome


def test_task_timeout_keyword_ends_the_frozen_host_alone(lab: Lab, ee_image: str) -> None:
    problems, outcome = _run(lab, ee_image, "keyword_task_timeout.yml", outer_limit_s=90)
    assert len(outcome.healthy) == 5
    assert not problems, "\n".join(problems) + "\n" + outcome.run.describe()


@pytest.mark.stock
def test_the_same_check_fails_on_stock_with_upstream_timeout(lab: Lab, stock_image: str) -> None:
    """Upstream's `timeout: 12` fires, then its remote cleanup hangs on the frozen host (W1)."""
    problems, outcome = _run(lab, stock_image, "keyword_upstream_timeout.yml", outer_limit_s=45)
    assert problems, "stock ansible-core kept the guarantee: this test could not fail"
    assert outcome.run.hit_outer_limit, f"expected the stock run to hang: {problems}"
