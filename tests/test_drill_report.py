"""Drill pass/fail rules and the report people read."""

from __future__ import annotations

from workflows.drill_report import DrillCriteria, DrillReport, evaluate, render_markdown


def _report(**kw) -> DrillReport:
    base = dict(
        drill_id="drill-demo-1",
        deployment="demo",
        kind="outage",
        source="us-east-1",
        target="us-west-2",
        scope="fleet",
        criteria=DrillCriteria(95, 120),
        devices=100,
        moved=98,
        recovery_95_seconds=40.0,
        recovery_100_seconds=55.0,
        detection_seconds=16.0,
    )
    base.update(kw)
    return DrillReport(**base)


def test_a_drill_within_criteria_passes() -> None:
    r = _report()
    evaluate(r)
    assert r.passed and r.reasons == []
    md = render_markdown(r)
    assert md.startswith("# Drill drill-demo-1: PASS")
    assert "| detection time (outage to failover start) | 16.0s |" in md


def test_each_failed_criterion_is_named() -> None:
    r = _report(moved=80, recovery_95_seconds=300.0, restored=False)
    evaluate(r, aborted=True)
    assert not r.passed
    text = " | ".join(r.reasons)
    assert (
        "aborted" in text
        and "80/100 devices (80.0%)" in text
        and "took 300s" in text
        and "not fully restored" in text
    )
    assert "FAIL" in render_markdown(r)


def test_never_reaching_95_percent_fails() -> None:
    r = _report(moved=0, recovery_95_seconds=None, recovery_100_seconds=None)
    evaluate(r)
    assert not r.passed and any("never confirmed" in x for x in r.reasons)


def test_the_recovery_point_is_reported_as_a_time_over_the_scope() -> None:
    r = _report(
        recovery_point_checked=100,
        recovery_point_devices=7,
        recovery_point_p50_seconds=0.0,
        recovery_point_p95_seconds=42.0,
        recovery_point_max_seconds=310.5,
    )
    evaluate(r)
    md = render_markdown(r)
    assert "| recovery point (RPO) if us-east-1 were lost, p50 / p95 / max | 0.0s / 42.0s / 310.5s |" in md
    assert "| devices whose standby copy lacked source writes | 7 of 100 |" in md
    assert "Recovery point (RPO): for each device of the scope" in md
    old = render_markdown(_report(recovery_point_devices=101))  # a report recorded before the RPO
    assert "| devices whose standby shadow missed source writes (outage recovery point) | 101 |" in old
