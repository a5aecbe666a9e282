"""DrillWorkflow's cutovers: requested through the deployment, followed within the drill's
timeout, stopped (abort, then the rollback's end) when they hold, outlast it or the drill is
aborted, and recorded in the report."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from activities.drill import AbortCutoverInput, DrillActivities, SteerInput, WaitCutoverInput, held_wave
    from core.models import CutoverProgress, CutoverRequest, CutoverStarted, OperatorAction
    from workflows.drill_report import DrillCriteria, DrillReport
    from workflows.versions import DRILL_BOUNDED

RETRY = RetryPolicy(
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=20,
    non_retryable_error_types=["CutoverRefused", "NoFaultSwitch", "NoCutover", "HealthTimeout"],
)
Approval = Literal["none", "canary", "every-wave"]


class DrillStopped(Exception):
    """The drill stops what it started; the message is the report's reason."""


@dataclass
class DrillInput:
    deployment: str
    drill_id: str
    kind: Literal["planned", "outage"] = "planned"
    scope: str | None = None  # a thing group; None with percent None: the whole fleet
    percent: float | None = None  # sample this share of the fleet into a drill group
    hold_seconds: float = 30
    criteria: DrillCriteria = field(default_factory=DrillCriteria)
    timeout_seconds: float = 900  # the longest one wait takes: a cutover to start or end, health
    approval: Approval | None = "none"  # the drill's cutovers; None: the deployment's policy


class DrillCutovers:
    """What the drill knows of its cutovers, and how it follows each of them."""

    _report: DrillReport | None  # None until the deployment's snapshot is read
    _abort: OperatorAction | None
    _cutover: str | None  # the drill's cutover in flight
    _epoch_before: int

    @property
    def r(self) -> DrillReport:
        assert self._report is not None, "the report exists from the drill's first step"
        return self._report

    async def _follow_failover(self, inp: DrillInput, t0: datetime) -> CutoverProgress:
        """The deployment's own failover after the fault: wait (bounded) for it to start, then follow it."""
        first = await self._wait(
            inp,
            WaitCutoverInput(
                deployment=inp.deployment,
                cutover_id=None,
                after_epoch=self._epoch_before,
                timeout_seconds=inp.timeout_seconds,
                started_only=True,
            ),
            "the automatic failover to start",
            abortable=True,
        )
        return first if first.result else await self._follow(inp, first.cutover_id, t0)

    async def _follow(
        self, inp: DrillInput, cutover_id: str, t0: datetime, abortable: bool = True
    ) -> CutoverProgress:
        """Wait for one of the drill's cutovers to end. A hold on a failed wave (no one to approve
        it), the drill's timeout or, when `abortable`, the drill's abort stops it at once."""
        self._cutover = cutover_id
        try:
            p = await self._wait(
                inp,
                WaitCutoverInput(deployment=inp.deployment, cutover_id=cutover_id, stop_at_hold=True),
                f"{cutover_id}",
                abortable,
            )
            stop = None
            if not p.result:
                stop = (
                    f"{cutover_id} held: {held_wave(p)}; an unattended drill does not approve a "
                    "failed wave: the drill aborted it"
                )
        except DrillStopped as e:
            stop = str(e)
        if stop:
            await self._stop(inp, cutover_id, stop, t0)
            raise DrillStopped(stop)
        self._cutover = None
        return p

    async def _stop(self, inp: DrillInput, cutover_id: str, reason: str, t0: datetime) -> None:
        """Abort a cutover of the drill, then wait for its rollback to end (bounded, not abortable)."""
        self._phase(f"stopping {cutover_id}")
        await workflow.execute_activity_method(
            DrillActivities.abort_cutover,
            AbortCutoverInput(cutover_id=cutover_id, reason=f"{inp.drill_id}: {reason}"),
            **options(30),
        )
        try:
            p = await self._wait(
                inp,
                WaitCutoverInput(deployment=inp.deployment, cutover_id=cutover_id),
                f"{cutover_id} to roll back",
                abortable=False,
            )
        except DrillStopped as e:
            self.r.reasons.append(f"{e}; see {cutover_id} in the Temporal UI")
            return
        self._cutover = None
        self._record_cutover(p, t0)

    async def _wait(
        self, inp: DrillInput, w: WaitCutoverInput, what: str, abortable: bool
    ) -> CutoverProgress:
        """wait_cutover within the drill's timeout, raced with the drill's abort when `abortable`."""
        task = asyncio.ensure_future(
            workflow.execute_activity_method(
                DrillActivities.wait_cutover,
                w,
                schedule_to_close_timeout=timedelta(seconds=inp.timeout_seconds),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RETRY,
                summary=f"wait for {what}",
            )
        )
        if abortable:
            await workflow.wait_condition(lambda: task.done() or self._abort is not None)
            if not task.done():
                task.cancel()
                # its end, not its error: a cancel of the drill itself still raises here (TRY_CANCEL
                # resolves the activity in this workflow task, so no recorded history parts ways)
                await workflow.wait([task])
                raise DrillStopped(f"the drill was aborted while waiting for {what}")
        try:
            return await task
        except ActivityError as e:
            if isinstance(e.cause, ActivityTimeout):
                raise DrillStopped(
                    f"waited {inp.timeout_seconds:.0f}s for {what} (the drill's timeout_seconds)"
                ) from None
            raise

    def _bounded(self) -> bool:
        """DRILL_BOUNDED, asked where the old and the new drill part ways (the first answer holds)."""
        return workflow.patched(DRILL_BOUNDED)

    # ---- helpers ----

    async def _request(self, inp: DrillInput, req: CutoverRequest) -> CutoverStarted:
        started = await workflow.execute_activity_method(
            DrillActivities.request_cutover,
            SteerInput(deployment=inp.deployment, request=req),
            **options(60),
        )
        self._cutover = started.cutover_id
        return started

    async def _wait_cutover(self, w: WaitCutoverInput) -> CutoverProgress:
        result = await workflow.execute_activity_method(
            DrillActivities.wait_cutover,
            w,
            start_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=RETRY,
        )
        self._cutover = None
        return result

    def _record_cutover(self, p: CutoverProgress, t0: datetime) -> None:
        if p.target == self.r.target and not self.r.devices:  # arrival_times counts them when it runs
            self.r.devices = p.devices_total
        self.r.cutovers.append(
            f"{p.cutover_id}: {p.mode} {p.source} → {p.target}: {p.result} "
            f"({p.confirmed}/{p.devices_total} confirmed)"
        )
        if p.mode == "emergency" and p.started_at and self.r.detection_seconds is None:
            self.r.detection_seconds = (p.started_at - t0).total_seconds()
        if p.target == self.r.target:  # the way out; the fail back's sync runs the other way
            self.r.stale_shadow_leaves += p.stale_shadow_leaves
        self.r.stragglers = sorted(set(self.r.stragglers) | set(p.stragglers))[:50]
        self.r.jobs += [
            f"{p.cutover_id} {w.job_id}: {w.job_status}, {w.confirmed}/{w.size} confirmed" for w in p.waves
        ]
        for phase, seconds in p.phase_seconds.items():
            self.r.phase_seconds[f"{p.cutover_id}:{phase}"] = seconds

    def _phase(self, phase: str) -> None:
        self.r.phase = phase
        lines = [
            f"**{self.r.kind} drill {self.r.drill_id}**: {self.r.source} → {self.r.target}, scope {self.r.scope}",
            f"phase: {phase}",
        ]
        lines += [f"- {c}" for c in self.r.cutovers]
        workflow.set_current_details("\n".join(lines))


def options(seconds: float, total: float | None = None) -> dict[str, Any]:
    """Timeouts and retries of one of the drill's activities: those that run long heartbeat."""
    return {
        "start_to_close_timeout": timedelta(seconds=seconds),
        "schedule_to_close_timeout": timedelta(seconds=total) if total else None,
        "heartbeat_timeout": timedelta(seconds=60) if seconds > 120 else None,
        "retry_policy": RETRY,
    }


def message(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    return str(getattr(cause, "message", None) or e)
