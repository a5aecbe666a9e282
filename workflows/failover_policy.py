"""The safety rules of automatic failover: pure and deterministic, so DeploymentWorkflow can call
them (with `workflow.now()`) and tests can prove each rule refusing.

Automatic failover moves the fleet only off an Unhealthy active region, only onto a Healthy
standby whose copy of the registry is not known incomplete (the first in the configured order),
and never back home: failback is a planned cutover a
person approves, offered once the home region has been Healthy for a while. Devices keep their own
endpoint list, so a refusal leaves them to fail over device-side, never stranded by a loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING

from core.models import HEALTHY, UNHEALTHY

if TYPE_CHECKING:
    from core.config import BlockedWindow, FailoverPolicy


@dataclass
class RegionStatus:
    state: str  # Healthy | Degraded | Unhealthy | Unknown, as reported by RegionHealthWorkflow
    since: datetime | None = None  # when it entered that state (RegionHealthChange.at)
    incomplete: str = ""  # why its copy of the fleet's registry is known incomplete ("": not known so)


@dataclass
class FailoverContext:
    """What the DeploymentWorkflow knows when a region's health changes.

    `home` is the configured primary (failing over to it is a failback); `standby_order` the
    configured order (DeploymentConfig.standbys()); `automatic_cutovers` the start times of past
    automatic cutovers; `cooldown_minutes` the cutover policy's cooldown after any cutover.
    """

    active: str
    home: str
    regions: dict[str, RegionStatus]
    standby_order: list[str]
    automatic_cutovers: list[datetime] = field(default_factory=list)
    last_cutover_end: datetime | None = None
    cutover_running: bool = False
    cooldown_minutes: float = 0


@dataclass
class FailoverDecision:
    """`rule` names the rule that decided ("failover" when taken); `reason` is for people."""

    take: bool
    target: str | None
    reason: str
    rule: str


def _state(ctx: FailoverContext, region: str) -> str:
    status = ctx.regions.get(region)
    return status.state if status else "Unknown"


def in_window(window: BlockedWindow, now: datetime) -> bool:
    """Whether `now` falls in a daily UTC window [start, end); a window may wrap midnight."""
    t: time = now.astimezone(UTC).time().replace(tzinfo=None)
    if window.start <= window.end:
        return window.start <= t < window.end
    return t >= window.start or t < window.end


def decide_failover(ctx: FailoverContext, policy: FailoverPolicy, now: datetime) -> FailoverDecision:
    """Whether to start an automatic cutover now, and where to; the first rule that refuses wins."""

    def refuse(rule: str, reason: str) -> FailoverDecision:
        return FailoverDecision(False, None, reason, rule)

    active = ctx.active
    if _state(ctx, active) != UNHEALTHY:
        return refuse(
            "active_not_unhealthy", f"{active} is {_state(ctx, active)}: only an Unhealthy region is left"
        )
    if not policy.automatic:
        return refuse("automatic_off", f"{active} is Unhealthy but automatic failover is off: alert only")
    if ctx.cutover_running:
        return refuse("cutover_running", f"{active} is Unhealthy but a cutover is already running")
    candidates = [r for r in ctx.standby_order if r != active]
    healthy = [r for r in candidates if r != ctx.home and _state(ctx, r) == HEALTHY]
    target = next((r for r in healthy if not ctx.regions[r].incomplete), None)
    if target is None and healthy:
        why = "; ".join(f"{r}: {ctx.regions[r].incomplete}" for r in healthy)
        return refuse(
            "replica_incomplete",
            f"{active} is Unhealthy and no Healthy standby holds a complete copy of the fleet ({why}): "
            "devices it does not know could not connect there (a person may force a cutover)",
        )
    if target is None:
        if ctx.home != active and _state(ctx, ctx.home) == HEALTHY:
            return refuse(
                "no_automatic_failback",
                f"{active} is Unhealthy and only {ctx.home} (home) is Healthy: failback is a planned "
                f"cutover, run `python starter.py cutover --to {ctx.home} --reason failback`",
            )
        states = ", ".join(f"{r} {_state(ctx, r)}" for r in candidates) or "none configured"
        return refuse("no_healthy_standby", f"{active} is Unhealthy and no standby is Healthy ({states})")
    if ctx.last_cutover_end and now < ctx.last_cutover_end + timedelta(minutes=ctx.cooldown_minutes):
        until = ctx.last_cutover_end + timedelta(minutes=ctx.cooldown_minutes)
        return refuse("cooldown", f"cooling down after the last cutover until {until:%H:%M} UTC")
    last_auto = max(ctx.automatic_cutovers, default=None)
    if last_auto and now < last_auto + timedelta(minutes=policy.min_interval_minutes):
        return refuse(
            "min_interval",
            f"the last automatic cutover started at {last_auto:%H:%M} UTC, less than "
            f"{policy.min_interval_minutes:g} minutes ago",
        )
    today = [t for t in ctx.automatic_cutovers if now - timedelta(hours=24) < t <= now]
    if len(today) >= policy.max_per_day:
        return refuse(
            "max_per_day",
            f"{len(today)} automatic cutovers in the last 24h (max_per_day {policy.max_per_day}): alert only",
        )
    for w in policy.blocked_windows:
        if in_window(w, now):
            return refuse(
                "blocked_window", f"in the blocked window {w.start:%H:%M}-{w.end:%H:%M} UTC: alert only"
            )
    return FailoverDecision(True, target, f"{active} is Unhealthy, {target} is Healthy", "failover")


def failback_offer(ctx: FailoverContext, policy: FailoverPolicy, now: datetime) -> str | None:
    """The failback a person may start, once home has been Healthy for failback_offer_after_minutes."""
    home = ctx.regions.get(ctx.home)
    if ctx.active == ctx.home or ctx.cutover_running or home is None or home.state != HEALTHY:
        return None
    if home.since is None:  # Healthy, but since when is unknown: do not guess
        return None
    healthy_for = now - home.since
    if healthy_for < timedelta(minutes=policy.failback_offer_after_minutes):
        return None
    return (
        f"{ctx.home} healthy for {int(healthy_for.total_seconds() // 60)}m: "
        f"run `python starter.py cutover --to {ctx.home} --reason failback`"
    )
