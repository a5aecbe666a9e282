"""Messages shared by the deployment and cutover workflows, their activities and the starter."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

CutoverMode = Literal["planned", "emergency"]
CutoverResultKind = Literal["succeeded", "succeeded-with-stragglers", "aborted", "failed"]


@dataclass
class OperatorAction:
    """Who steers and why; every field optional so `temporal workflow signal --name approve` works bare."""

    by: str = ""
    reason: str = ""


@dataclass
class CutoverRequest:
    target: str
    scope: str | None = None  # a thing group; None moves the whole fleet
    mode: CutoverMode = "planned"
    reason: str = ""
    requested_by: str = "operator"
    force: bool = False  # a human overriding the health and cooldown rules; recorded
    automatic: bool = False  # decided by health-triggered failover
    approval: Literal["none", "canary", "every-wave"] | None = None  # overrides the policy


@dataclass
class CutoverStarted:
    cutover_id: str
    epoch: int
    source: str
    target: str
    mode: CutoverMode


@dataclass
class WaveReport:
    index: int
    group: str
    size: int = 0
    job_id: str = ""
    job_status: str = ""
    confirmed: int = 0
    pending: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class CutoverProgress:
    """What `progress` answers and what a finished cutover returns."""

    cutover_id: str
    deployment: str
    mode: CutoverMode
    source: str
    target: str
    scope: str
    epoch: int
    phase: str = "starting"
    waiting_for: str | None = None
    paused: bool = False
    devices_total: int = 0
    confirmed: int = 0
    failed: int = 0
    waves: list[WaveReport] = field(default_factory=list)
    stragglers: list[str] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    unreachable_regions: list[str] = field(default_factory=list)
    reconcile_later: list[str] = field(default_factory=list)
    stale_shadow_leaves: int = 0
    already_there: int = 0  # devices connected to the target already: confirmed without a job
    events: list[str] = field(default_factory=list)  # the last few notable events, newest last
    result: CutoverResultKind | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # what the scope's bootstrap answer names when the cutover ends (the deployment records it):
    primary_after: str | None = None  # None: recorded by a version that did not say
    epoch_after: int = 0  # 0: the answer was not changed
    takeover: str = ""  # a planned cutover that continued as an emergency one, and why
    handed_over: bool = False  # ended before any flip because a region failed: nothing changed

    @property
    def pending(self) -> int:
        return max(0, self.devices_total - self.confirmed - self.failed)


# A region's health as the monitors report it; Unknown only before a monitor's first verdict.
HealthState = Literal["Healthy", "Degraded", "Unhealthy"]
HEALTHY: Final = "Healthy"
DEGRADED: Final = "Degraded"
UNHEALTHY: Final = "Unhealthy"
UNKNOWN: Final = "Unknown"
SETTLED_STATES: tuple[HealthState, ...] = (HEALTHY, DEGRADED, UNHEALTHY)

# The health probes whose figure is milliseconds (the others report a share): one list, so the scoring
# (activities.health) and the check history (workflows.health_types) agree.
LATENCY_PROBES = ("control_plane", "data_plane", "bootstrap")


@dataclass
class RegionHealthChange:
    """Sent by RegionHealthWorkflow to DeploymentWorkflow (signal `region_health`) on a change of state."""

    region: str
    state: HealthState
    score: float = 1.0
    reasons: list[str] = field(default_factory=list)
    at: datetime | None = None
    consecutive: int = 0


@dataclass
class ReplicaReport:
    """Sent by RegistryReplicationWorkflow to DeploymentWorkflow (signal `replica_status`): whether a
    target region holds a complete copy of a source's registry, so automatic failover never moves
    devices into a region that cannot authenticate them. Sent after every full reconcile, and when
    the event stream falls behind or recovers.
    """

    source: str
    target: str
    complete: bool  # the last full reconcile applied everything, and nothing failed since
    reason: str = ""  # why not complete, in words a person can act on
    things: int = 0  # things in the source's registry at the last full reconcile
    fleet_devices: int = 0  # members of the fleet thing group (with subgroups) in the source, then
    at: datetime | None = None


REPLICA_STATUS_SIGNAL = "replica_status"
