"""The one rule that turns a round of probe results into a region's health.

Pure, so it runs inside RegionHealthWorkflow (deterministic) and is tested directly; the probes
themselves (activities.health) return ProbeResult and judge nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core import models
from core.config import HealthPolicy
from core.models import LATENCY_PROBES, HealthState

# a probe's status (the region's state is core.models' Healthy / Degraded / Unhealthy)
OK, DEGRADED, FAILED, SKIPPED = "ok", "degraded", "failed", "skipped"
CRITICAL_PROBES = ("control_plane", "data_plane")
WEIGHTS = {"control_plane": 3, "data_plane": 3, "bootstrap": 2, "heartbeats": 1, "cloudwatch": 1}
_STATUS_SCORE = {OK: 1.0, DEGRADED: 0.5, FAILED: 0.0}


@dataclass
class ProbeResult:
    """What one probe saw. `value`: the slowest call in ms (latency probes), a share (heartbeats,
    cloudwatch) or None; `status` reflects the outcome of the calls, thresholds are score_region's."""

    probe: str
    status: str
    value: float | None = None
    detail: str = ""


@dataclass
class RegionAssessment:
    """A region's health from one round of probes; `statuses` is each probe's judged status."""

    state: HealthState
    score: float
    reasons: list[str]
    statuses: dict[str, str] = field(default_factory=dict)


def score_region(results: list[ProbeResult], policy: HealthPolicy) -> RegionAssessment:
    """Healthy, Degraded or Unhealthy from one round of probes (pure; runs in the workflow).

    Unhealthy: the control or data plane failed, or most probes that ran failed.
    Degraded: anything else failing, throttling, a call slower than degraded_latency_ms, or too few
    fresh device heartbeats. The score is the weighted share of good probes (degraded counts half).
    """
    statuses: dict[str, str] = {}
    reasons: list[str] = []
    for r in results:
        status = r.status
        if status == OK and r.probe in LATENCY_PROBES and (r.value or 0) > policy.degraded_latency_ms:
            status = DEGRADED
            reasons.append(f"{r.probe} slow: {r.value:.0f} ms > {policy.degraded_latency_ms:.0f} ms")
        elif status == OK and r.probe == "heartbeats" and (r.value or 0) < policy.min_fresh_share:
            status = FAILED
            reasons.append(f"heartbeats stale: {r.detail}")
        elif status in (DEGRADED, FAILED):
            reasons.append(f"{r.probe} {status}: {r.detail}")
        statuses[r.probe] = status
    counted = {p: s for p, s in statuses.items() if s != SKIPPED}
    if not counted:
        return RegionAssessment(models.UNHEALTHY, 0.0, ["no probe ran"], statuses)
    weight = sum(WEIGHTS.get(p, 1) for p in counted)
    score = sum(WEIGHTS.get(p, 1) * _STATUS_SCORE[s] for p, s in counted.items()) / weight
    failed = [p for p, s in counted.items() if s == FAILED]
    if any(p in CRITICAL_PROBES for p in failed) or 2 * len(failed) > len(counted):
        state: HealthState = models.UNHEALTHY
    elif failed or DEGRADED in counted.values():
        state = models.DEGRADED
    else:
        state = models.HEALTHY
    return RegionAssessment(state, round(score, 3), reasons, statuses)
