"""What region health monitoring shows the rest of the controller (queries, CLI, workflow input).

Kept apart from workflows/health.py so that callers import plain dataclasses only, not the probes
and their AWS dependencies. The DeploymentWorkflow.region_health signal's payload is
core.models.RegionHealthChange.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from core.config import HealthPolicy
from core.models import LATENCY_PROBES, UNKNOWN


@dataclass
class ProbeSummary:
    """One probe in one check, as shown in the history: its judged status and figure."""

    probe: str
    status: str
    value: float | None = None
    detail: str = ""

    def brief(self) -> str:
        """e.g. "data_plane ok 58 ms", "heartbeats ok 97%", "bootstrap skipped"."""
        if self.value is None:
            return f"{self.probe} {self.status}"
        figure = f"{self.value:.0f} ms" if self.probe in LATENCY_PROBES else f"{self.value:.0%}"
        return f"{self.probe} {self.status} {figure}"


@dataclass
class HealthCheck:
    """One check: the raw assessment of this round and the state reported after hysteresis."""

    at: datetime
    assessed: str
    reported: str
    score: float
    reasons: list[str]
    probes: list[ProbeSummary]


@dataclass
class RegionHealthState:
    """Everything the RegionHealthWorkflow carries across continue-as-new."""

    reported: str = UNKNOWN
    since: datetime | None = None  # when `reported` was first reported
    consecutive: int = 0  # checks in a row supporting `reported` when it was reported
    checks: int = 0  # total checks over every run
    recent: list[str] = field(default_factory=list)  # raw assessments, newest last (hysteresis window)
    history: list[HealthCheck] = field(default_factory=list)  # newest last, bounded
    unsent: bool = False  # the last change has not reached the DeploymentWorkflow yet
    signal_error: str = ""


@dataclass
class RegionHealthInput:
    """Input of RegionHealthWorkflow `health-<deployment>-<region>`.

    An empty `deployment_workflow_id` monitors without signalling anyone (e.g. before a
    DeploymentWorkflow exists). `checks_per_run` bounds the history before continue-as-new.
    """

    deployment: str
    region: str
    policy: HealthPolicy
    deployment_workflow_id: str = ""
    state: RegionHealthState = field(default_factory=RegionHealthState)
    checks_per_run: int = 200
    history_size: int = 20


@dataclass
class RegionHealthView:
    """Query `state`: the region's reported health and its latest check."""

    deployment: str
    region: str
    state: str
    since: datetime | None
    consecutive: int
    checks: int
    last: HealthCheck | None
    deployment_workflow_id: str
    unsent: bool
    signal_error: str


@dataclass
class HealthHistory:
    """Query `history`: the most recent checks, newest last."""

    checks: list[HealthCheck]
