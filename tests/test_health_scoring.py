"""score_region and the hysteresis rule (settle), tested directly: they are pure."""

from __future__ import annotations

import pytest

from core.config import HealthPolicy
from core.health_scoring import ProbeResult, score_region
from workflows.health import settle

POLICY = HealthPolicy(degraded_latency_ms=100, min_fresh_share=0.5)


def probes(**status: str | tuple[str, float]) -> list[ProbeResult]:
    base = {
        "control_plane": ("ok", 20.0),
        "data_plane": ("ok", 30.0),
        "bootstrap": ("ok", 5.0),
        "heartbeats": ("ok", 0.9),
        "cloudwatch": ("skipped", None),
    }
    base.update({k: (v if isinstance(v, tuple) else (v, None)) for k, v in status.items()})
    return [ProbeResult(p, s, v, f"{p} detail") for p, (s, v) in base.items()]


def test_all_ok_is_healthy_with_full_score() -> None:
    a = score_region(probes(), POLICY)
    assert (a.state, a.score, a.reasons) == ("Healthy", 1.0, [])
    assert a.statuses["cloudwatch"] == "skipped"


@pytest.mark.parametrize("critical", ["control_plane", "data_plane"])
def test_control_or_data_plane_failing_is_unhealthy(critical: str) -> None:
    a = score_region(probes(**{critical: "failed"}), POLICY)
    assert a.state == "Unhealthy"
    assert a.reasons == [f"{critical} failed: {critical} detail"]
    assert 0 < a.score < 1


def test_majority_failing_is_unhealthy_minority_is_degraded() -> None:
    assert score_region(probes(bootstrap="failed"), POLICY).state == "Degraded"
    assert score_region(
        probes(bootstrap="failed", heartbeats="failed", cloudwatch="failed"), POLICY
    ).state == ("Unhealthy")


def test_throttling_is_degraded_not_failed() -> None:
    a = score_region(probes(control_plane="degraded", data_plane="degraded"), POLICY)
    assert a.state == "Degraded"
    assert a.score == pytest.approx((3 * 0.5 + 3 * 0.5 + 2 + 1) / 9, abs=1e-3)


def test_slow_calls_and_stale_heartbeats_are_judged_against_the_policy() -> None:
    a = score_region(probes(data_plane=("ok", 300.0)), POLICY)
    assert (a.state, a.statuses["data_plane"]) == ("Degraded", "degraded")
    assert a.reasons == ["data_plane slow: 300 ms > 100 ms"]
    a = score_region(probes(heartbeats=("ok", 0.2)), POLICY)
    assert (a.state, a.statuses["heartbeats"]) == ("Degraded", "failed")


def test_nothing_measured_is_unhealthy() -> None:
    a = score_region([ProbeResult("bootstrap", "skipped")], POLICY)
    assert a.state == "Unhealthy"


def run(raw: str, start: str = "Healthy", bad: int = 3, good: int = 3) -> str:
    """Reported states after each raw check, as letters H/D/U (? for Unknown)."""
    names = {"H": "Healthy", "D": "Degraded", "U": "Unhealthy"}
    reported, recent, out = start, [], []
    for r in raw:
        recent = [*recent, names[r]][-(bad + good) :]
        reported, _ = settle(reported, recent, bad, good)
        out.append("?" if reported == "Unknown" else reported[0])
    return "".join(out)


def test_hysteresis() -> None:
    assert run("UUUHHH") == "HHUUUH"  # unhealthy after 3 bad, healthy after 3 good
    assert run("H", start="Unknown") == "H"  # starting up: first good check reports at once
    assert run("UUU", start="Unknown") == "??U"  # but bad checks wait as always
    assert run("DDDHHH") == "HHDDDH"  # degraded waits like bad does
    assert run("UHUHUHUHUH") == "HHHHDDDDDD"  # flapping: Degraded once, never Unhealthy
    assert run("UUUDDD") == "HHUUUD"  # recovering but not clean
    assert run("UUUHDU") == "HHUUUU"  # recovery needs 3 in a row that are not Unhealthy
    assert run("UUUHDH") == "HHUUUD"
    assert settle("Unhealthy", ["Unhealthy"] * 3, 3, 3) == ("Unhealthy", 3)
