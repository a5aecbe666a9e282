"""The cutover's plan at the quotas (issue 17): waves, their times, and what bounds them."""

from __future__ import annotations

import pytest

from core.config import CutoverPolicy, Quotas
from workflows.cutover_plan import plan


def test_a_large_fleet_is_bound_by_the_jobs_rollout_at_the_default_quotas() -> None:
    p = plan(100_000, CutoverPolicy(), Quotas())
    assert sum(p.waves) == 100_000 and p.waves[0] == 5  # the canary first
    assert p.bound_by == "the jobs' rollout (1,000/min)"
    # 100,000 devices at 1,000 a minute: at least 100 minutes, and the other terms add little
    assert 100 * 60 <= p.seconds <= 140 * 60
    assert "waves for 100,000 devices, about" in p.brief()


def test_a_slow_account_connect_rate_becomes_the_bound() -> None:
    p = plan(20_000, CutoverPolicy(), Quotas(connects_per_second=5))
    assert p.bound_by == "device connects (5/s)"
    assert p.seconds >= 20_000 / 5


def test_each_wave_takes_its_fill_move_and_verification() -> None:
    policy = CutoverPolicy(canary_size=10, wave_growth=2, max_wave_size=40, verify_poll_seconds=5)
    quotas = Quotas(per_api={"AddThingToThingGroup": 10, "GetThingShadow": 10}, connects_per_second=100)
    p = plan(70, policy, quotas)
    assert p.waves == [10, 20, 40]
    # 10 devices: fill 1 s, rollout 0.6 s (slower than 0.1 s of connects), verify 1 s + a 5 s poll
    assert p.wave_seconds[0] == pytest.approx(1 + 0.6 + 1 + 5)


def test_an_empty_scope_has_an_empty_plan() -> None:
    p = plan(0, CutoverPolicy(), Quotas())
    assert (p.waves, p.seconds, p.bound_by) == ([], 0, "")
