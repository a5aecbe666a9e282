"""A drill's report and its pass/fail rules: pure, so the workflow and the tests share them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class DrillCriteria:
    min_confirmed_percent: float = 95.0  # of the scope's devices confirmed in the target
    max_recovery_seconds: float = 600.0  # outage (or start) to 95% of devices confirmed


@dataclass
class DrillReport:
    drill_id: str
    deployment: str
    kind: str
    source: str
    target: str
    scope: str
    criteria: DrillCriteria
    started_at: datetime | None = None
    finished_at: datetime | None = None
    phase: str = "starting"
    devices: int = 0
    moved: int = 0
    moved_back: int = 0
    detection_seconds: float | None = None
    recovery_95_seconds: float | None = None
    recovery_100_seconds: float | None = None
    failback_seconds: float | None = None
    stale_shadow_leaves: int = 0  # planned: leaves the target lacked at the flip, synced before moving
    recovery_point_devices: int | None = None  # devices of the scope whose standby lacked source writes
    recovery_point_checked: int = 0  # devices of the scope measured for the recovery point
    recovery_point_p50_seconds: float | None = None  # recovery point (RPO) over the scope's devices
    recovery_point_p95_seconds: float | None = None
    recovery_point_max_seconds: float | None = None
    recovery_point_at: datetime | None = None  # the moment of the (simulated) loss it is measured for
    stragglers: list[str] = field(default_factory=list)
    cutovers: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    restored: bool = True
    passed: bool = False
    report_paths: list[str] = field(default_factory=list)


def evaluate(r: DrillReport, aborted: bool = False) -> None:
    """PASS only when the criteria hold and the fleet was restored; every failed rule says why."""
    failures: list[str] = []
    if aborted:
        failures.append("the drill was aborted")
    share = 100 * r.moved / r.devices if r.devices else 0.0
    if share < r.criteria.min_confirmed_percent:
        failures.append(
            f"{r.moved}/{r.devices} devices ({share:.1f}%) confirmed in {r.target}, "
            f"criterion {r.criteria.min_confirmed_percent:g}%"
        )
    if r.recovery_95_seconds is None:
        failures.append("95% of devices never confirmed in the target")
    elif r.recovery_95_seconds > r.criteria.max_recovery_seconds:
        failures.append(
            f"recovery to 95% took {r.recovery_95_seconds:.0f}s, criterion "
            f"{r.criteria.max_recovery_seconds:.0f}s"
        )
    if not r.restored:
        failures.append("the fleet was not fully restored")
    r.passed = not failures
    r.reasons = [*failures, *(x for x in r.reasons if x not in failures)]


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}s"


RPO_DEFINITION = (
    "Recovery point (RPO): for each device of the scope, how far back the shadow writes go that its "
    "standby copy lacked when the loss began (the loss's start minus the time of the oldest write the "
    "standby lacked; 0 when it had everything): restoring from the standby loses everything written "
    "since that point. Shown as p50 / p95 / max over the devices of the scope, measured just before "
    "the drill moved anything."
)


def _recovery_rows(r: DrillReport) -> list[str]:
    if not r.recovery_point_checked:  # reports of drills recorded before the recovery point existed
        value = "n/a" if r.recovery_point_devices is None else r.recovery_point_devices
        return [f"| devices whose standby shadow missed source writes (outage recovery point) | {value} |"]
    return [
        f"| recovery point (RPO) if {r.source} were lost, p50 / p95 / max | "
        f"{_s(r.recovery_point_p50_seconds)} / {_s(r.recovery_point_p95_seconds)} / "
        f"{_s(r.recovery_point_max_seconds)} |",
        f"| devices whose standby copy lacked source writes | {r.recovery_point_devices} of "
        f"{r.recovery_point_checked} |",
    ]


def render_markdown(r: DrillReport) -> str:
    lines = [
        f"# Drill {r.drill_id}: {'PASS' if r.passed else 'FAIL'}",
        "",
        f"{r.kind} drill of deployment `{r.deployment}`, {r.source} → {r.target}, scope {r.scope}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| devices in scope | {r.devices} |",
        f"| confirmed in {r.target} | {r.moved} |",
        f"| moved back to {r.source} | {r.moved_back} |",
        f"| detection time (outage to failover start) | {_s(r.detection_seconds)} |",
        f"| recovery time to 95% | {_s(r.recovery_95_seconds)} |",
        f"| recovery time to 100% of those that moved | {_s(r.recovery_100_seconds)} |",
        f"| fail back | {_s(r.failback_seconds)} |",
        f"| shadow leaves stale in the target at the flip (synced before moving) | {r.stale_shadow_leaves} |",
        *_recovery_rows(r),
        f"| stragglers | {len(r.stragglers)} |",
        "",
        f"Criteria: at least {r.criteria.min_confirmed_percent:g}% confirmed, 95% within "
        f"{r.criteria.max_recovery_seconds:.0f}s.",
    ]
    if r.recovery_point_checked:
        lines += ["", RPO_DEFINITION]
    if r.reasons:
        lines += ["", "## Findings", *[f"- {x}" for x in r.reasons]]
    if r.cutovers:
        lines += ["", "## Cutovers", *[f"- {c}" for c in r.cutovers]]
    if r.jobs:
        lines += ["", "## Jobs", *[f"- {j}" for j in r.jobs]]
    if r.stragglers:
        lines += ["", "## Stragglers", *[f"- {s}" for s in r.stragglers]]
    if r.phase_seconds:
        lines += [
            "",
            "## Phase timings",
            "| phase | seconds |",
            "|---|---|",
            *[f"| {k} | {v:.1f} |" for k, v in r.phase_seconds.items()],
        ]
    return "\n".join(lines) + "\n"
