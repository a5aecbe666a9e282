"""What DeploymentWorkflow knows (one dataclass, carried across continue-as-new), and the records and
status every part of it writes: its decisions, the status shown in the Temporal UI.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from core.config import DeploymentConfig
    from core.models import UNKNOWN, CutoverRequest

KEEP_HISTORY = 20
KEEP_DECISIONS = 50
RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30), non_retryable_error_types=["StaleEpoch"])


@dataclass
class RegionView:
    state: str = UNKNOWN  # Healthy | Degraded | Unhealthy | Unknown (no monitor report yet)
    since: datetime | None = None
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)


@dataclass
class ReplicaView:
    """What registry replication last said of one target region's copy of one source."""

    source: str
    target: str
    complete: bool
    reason: str = ""
    things: int = 0
    fleet_devices: int = 0
    at: datetime | None = None


@dataclass
class Decision:
    at: datetime
    kind: str  # cutover | automatic-failover | refused | catch-up | note
    reason: str
    rule: str = ""
    target: str | None = None


@dataclass
class CutoverRecord:
    cutover_id: str
    epoch: int
    source: str
    target: str
    mode: str
    scope: str
    requested_by: str
    reason: str
    forced: bool = False
    automatic: bool = False
    result: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    confirmed: int = 0
    devices: int = 0
    stragglers: int = 0
    note: str = ""  # what happened to it besides its result (a region lost mid-way, a takeover)


@dataclass
class BootstrapView:
    """The latest bootstrap answer written for a scope, replayed into regions that missed it."""

    epoch: int
    primary: str
    order: list[str]


@dataclass
class DeploymentState:
    active_region: str
    epoch: int = 0
    homes: dict[str, str] = field(default_factory=dict)  # scope (thing group) -> region, when moved alone
    health: dict[str, RegionView] = field(default_factory=dict)
    in_flight: CutoverRecord | None = None
    history: list[CutoverRecord] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    automatic_at: list[datetime] = field(default_factory=list)
    last_cutover_end: datetime | None = None
    bootstrap: dict[str, BootstrapView] = field(default_factory=dict)  # scope -> latest written
    catch_up: dict[str, list[str]] = field(default_factory=dict)  # region -> what it missed
    failback_offer: str | None = None
    initialized: bool = False
    replicas: dict[str, ReplicaView] = field(default_factory=dict)  # "<source>><target>" -> its copy
    scope_sizes: dict[str, int] = field(default_factory=dict)  # scope -> devices, as last counted
    catch_up_failures: dict[str, int] = field(default_factory=dict)  # region -> failed tries in a row
    catch_up_after: dict[str, datetime] = field(default_factory=dict)  # region -> next try


@dataclass
class DeploymentInput:
    config: DeploymentConfig
    state: DeploymentState | None = None


class DeploymentEntity:
    """The state every part of DeploymentWorkflow shares, and what each part records in it."""

    cfg: DeploymentConfig
    s: DeploymentState
    _child: workflow.ChildWorkflowHandle | workflow.ExternalWorkflowHandle | None
    _outcome: asyncio.Task | None  # resolves to the running cutover's CutoverProgress
    _catching_up: asyncio.Task | None
    _watch: bool | None  # LOOP_WATCHES_CUTOVER, decided where the paths part
    _auto: CutoverRequest | None  # an automatic failover decided, waiting to start

    def _scope_home(self, scope: str | None) -> str:
        return self.s.homes.get(scope, self.s.active_region) if scope else self.s.active_region

    def _incomplete(self, region: str) -> str:
        """Why `region`'s copy of the registry is known incomplete ("" when it is not known so)."""
        return "; ".join(
            f"from {v.source}: {v.reason or 'incomplete'}"
            for v in self.s.replicas.values()
            if v.target == region and not v.complete
        )

    def _missed(self, region: str, what: str) -> None:
        if what not in self.s.catch_up.setdefault(region, []):
            self.s.catch_up[region].append(what)

    def _decide(self, kind: str, reason: str, rule: str = "", target: str | None = None) -> None:
        decision = Decision(at=workflow.now(), kind=kind, reason=reason, rule=rule, target=target)
        self.s.decisions = [*self.s.decisions, decision][-KEEP_DECISIONS:]
        workflow.logger.info("%s: %s", kind, reason)

    def _report(self) -> None:
        s = self.s
        health = ", ".join(f"{r} {v.state}" for r, v in s.health.items())
        lines = [
            f"**{self.cfg.name}** ({self.cfg.mode}): active **{s.active_region}**, epoch {s.epoch}",
            f"health: {health}",
        ]
        incomplete = [f"{v.target} ({v.reason})" for v in s.replicas.values() if not v.complete]
        if incomplete:
            lines.append("registry copy incomplete: " + ", ".join(incomplete))
        if s.in_flight:
            lines.append(
                f"cutover in flight: {s.in_flight.cutover_id} ({s.in_flight.source} → {s.in_flight.target})"
                + (f": {s.in_flight.note}" if s.in_flight.note else "")
            )
        if s.failback_offer:
            lines.append(f"offer: {s.failback_offer}")
        if s.catch_up and any(s.catch_up.values()):
            lines.append(
                "regions that disagree (catch-up pending): "
                + ", ".join(f"{r}: {', '.join(v)}" for r, v in s.catch_up.items() if v)
            )
        lines += [f"- {d.at:%H:%M:%S} {d.kind}: {d.reason}" for d in s.decisions[-5:]]
        workflow.set_current_details("\n".join(lines))
