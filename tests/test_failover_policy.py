"""Each safety rule of automatic failover refusing with its reason, and flapping not moving the fleet."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

import pytest

from core.config import BlockedWindow, FailoverPolicy
from workflows.failover_policy import (
    FailoverContext,
    RegionStatus,
    decide_failover,
    failback_offer,
    in_window,
)
from workflows.health import settle

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
POLICY = FailoverPolicy(standby_order=["us-west-2", "eu-west-1"], min_interval_minutes=30, max_per_day=2)


def ctx(active: str = "us-east-1", **states: str) -> FailoverContext:
    regions = {"us-east-1": "Unhealthy", "us-west-2": "Healthy", "eu-west-1": "Healthy"}
    regions.update({k.replace("_", "-"): v for k, v in states.items()})
    return FailoverContext(
        active=active,
        home="us-east-1",
        regions={r: RegionStatus(s, NOW - timedelta(minutes=5)) for r, s in regions.items()},
        standby_order=["us-east-1", "us-west-2", "eu-west-1"],
    )


def test_takes_the_first_healthy_standby_in_order() -> None:
    d = decide_failover(ctx(), POLICY, NOW)
    assert (d.take, d.target, d.rule) == (True, "us-west-2", "failover")
    d = decide_failover(ctx(us_west_2="Degraded"), POLICY, NOW)
    assert (d.take, d.target) == (True, "eu-west-1")


# rule -> (region states, context changes, policy changes, words of the reason)
REFUSALS = {
    "active_not_unhealthy": ({"us_east_1": "Degraded"}, {}, {}, "us-east-1 is Degraded"),
    "automatic_off": ({}, {}, {"automatic": False}, "automatic failover is off"),
    "cutover_running": ({}, {"cutover_running": True}, {}, "already running"),
    "no_healthy_standby": (
        {"us_west_2": "Degraded", "eu_west_1": "Unknown"},
        {},
        {},
        "no standby is Healthy (us-west-2 Degraded, eu-west-1 Unknown)",
    ),
    "cooldown": (
        {},
        {"last_cutover_end": NOW - timedelta(minutes=5), "cooldown_minutes": 10},
        {},
        "until 12:05 UTC",
    ),
    "min_interval": (
        {},
        {"automatic_cutovers": [NOW - timedelta(minutes=20)]},
        {},
        "less than 30 minutes ago",
    ),
    "max_per_day": (
        {},
        {"automatic_cutovers": [NOW - timedelta(hours=23), NOW - timedelta(hours=2)]},
        {},
        "2 automatic cutovers in the last 24h (max_per_day 2): alert only",
    ),
    "blocked_window": (
        {},
        {},
        {"blocked_windows": [BlockedWindow(start=time(23, 0), end=time(12, 30))]},
        "blocked window 23:00-12:30 UTC",
    ),
}


@pytest.mark.parametrize("rule", REFUSALS)
def test_each_rule_refuses_with_its_reason(rule: str) -> None:
    states, context, policy, reason = REFUSALS[rule]
    d = decide_failover(replace(ctx(**states), **context), POLICY.model_copy(update=policy), NOW)
    assert (d.take, d.target, d.rule) == (False, None, rule)
    assert reason in d.reason


def test_no_automatic_failback_to_home() -> None:
    c = ctx(active="us-west-2", us_east_1="Healthy", us_west_2="Unhealthy", eu_west_1="Unhealthy")
    d = decide_failover(c, POLICY, NOW)
    assert (d.take, d.rule) == (False, "no_automatic_failback")
    assert "cutover --to us-east-1 --reason failback" in d.reason
    # another standby is fine
    c.regions["eu-west-1"].state = "Healthy"
    assert decide_failover(c, POLICY, NOW).target == "eu-west-1"


def test_old_cutovers_do_not_count_against_today() -> None:
    c = ctx()
    c.automatic_cutovers = [NOW - timedelta(hours=30), NOW - timedelta(hours=25), NOW - timedelta(hours=1)]
    assert decide_failover(c, POLICY, NOW).take


def test_blocked_windows_wrap_midnight() -> None:
    w = BlockedWindow(start=time(22, 0), end=time(2, 0))
    at = lambda h, m=0: NOW.replace(hour=h, minute=m)  # noqa: E731
    assert [in_window(w, at(h)) for h in (21, 22, 23, 0, 1, 2, 12)] == [
        False,
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    plain = BlockedWindow(start=time(2, 0), end=time(4, 0))
    assert [in_window(plain, at(h)) for h in (1, 2, 3, 4)] == [False, True, True, False]


def test_failback_offer_after_home_is_healthy_long_enough() -> None:
    policy = POLICY.model_copy(update={"failback_offer_after_minutes": 10})
    c = ctx(active="us-west-2", us_east_1="Healthy", us_west_2="Healthy")
    c.regions["us-east-1"].since = NOW - timedelta(minutes=12)
    assert failback_offer(c, policy, NOW) == (
        "us-east-1 healthy for 12m: run `python starter.py cutover --to us-east-1 --reason failback`"
    )
    c.regions["us-east-1"].since = NOW - timedelta(minutes=3)
    assert failback_offer(c, policy, NOW) is None
    c.regions["us-east-1"].since = NOW - timedelta(minutes=12)
    c.cutover_running = True
    assert failback_offer(c, policy, NOW) is None
    assert failback_offer(ctx(us_east_1="Healthy"), policy, NOW) is None  # already home


def test_flapping_region_does_not_cause_repeated_cutovers() -> None:
    """Raw checks alternate bad/good, then bad runs that are just long enough; hysteresis and
    min_interval together allow one automatic cutover, not one per flap."""
    raw = ["Unhealthy", "Healthy"] * 10 + ["Unhealthy"] * 3 + ["Healthy"] * 3 + ["Unhealthy"] * 3
    reported, recent, cutovers, active = "Healthy", [], [], "us-east-1"
    c = ctx(us_east_1="Healthy")  # the region under test stays the one judged, even after a cutover
    for i, r in enumerate(raw):
        now = NOW + timedelta(minutes=i)  # one check a minute
        recent = [*recent, r][-6:]
        state, _ = settle(reported, recent, unhealthy_after=3, healthy_after=3)
        if state != reported:
            reported = state
            c.regions[active] = RegionStatus(state, now)
        d = decide_failover(c, POLICY, now)
        if d.take:
            cutovers.append(now)
            c.automatic_cutovers.append(now)
    assert len(cutovers) == 1
    assert cutovers[0] == NOW + timedelta(minutes=22)  # after 3 consecutive Unhealthy checks


def test_a_standby_whose_registry_copy_is_incomplete_is_skipped_or_refused() -> None:
    """Issue 13 item 0b: never fail over into a region that cannot authenticate the fleet yet."""
    c = ctx()
    c.regions["us-west-2"].incomplete = "first full reconcile still running"
    d = decide_failover(c, POLICY, NOW)
    assert (d.take, d.target) == (True, "eu-west-1")  # the next Healthy standby holds the fleet
    c.regions["eu-west-1"].incomplete = "12 certificates failed to replicate"
    d = decide_failover(c, POLICY, NOW)
    assert (d.take, d.rule) == (False, "replica_incomplete")
    assert "first full reconcile still running" in d.reason and "12 certificates" in d.reason
