"""DrillWorkflow: rehearse a failover on a slice of the fleet (or all of it locally), fail back, report.

planned: a planned cutover of the drill scope to the standby, hold, and a planned cutover back.
outage:  (local stack) the primary's fault switch goes on; health-triggered automatic failover must
         act on its own; then the fault clears, the region recovers and the fleet fails back.
Both go through DeploymentWorkflow, so the safety rules apply, and both always restore what they
changed (fault switch, fleet location, the sampled scope group), even when aborted or failing.

A drill is unattended, so nothing it starts waits without bound (DRILL_BOUNDED, docs/drills.md):
each wait has the drill's `timeout_seconds`; a cutover holding on a wave below its success
threshold, the timeout, or the drill's abort stops that cutover at once (its abort signal, then its
end, bounded) and the drill reports FAIL with the reason. Its cutovers ask for approval "none"
unless DrillInput.approval says otherwise. Before anything moves it measures the recovery point.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from activities.drill import (
        AbortCutoverInput,
        ArrivalInput,
        DrillActivities,
        FaultInput,
        ReportInput,
        SampleInput,
        SteerInput,
        WaitCutoverInput,
        WaitHealthInput,
        held_wave,
    )
    from activities.jobs import DeleteGroupsInput, JobActivities
    from activities.recovery_point import RecoveryPoint  # (its module, for the result's field types)
    from activities.shadows import RecoveryPointInput, ShadowActivities, ShadowParityInput
    from core.models import HEALTHY, CutoverProgress, CutoverRequest, CutoverStarted, OperatorAction
    from workflows.drill_report import DrillCriteria, DrillReport, evaluate, render_markdown
    from workflows.versions import DRILL_BOUNDED, DRILL_CANCELS

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


@workflow.defn(name="DrillWorkflow")
class DrillWorkflow:
    def __init__(self) -> None:
        self._report: DrillReport | None = None  # None until the deployment's snapshot is read
        self._abort: OperatorAction | None = None
        self._cutover: str | None = None
        self._epoch_before = 0
        self._t0: datetime | None = None  # when the move started
        self._regions: list[str] = []

    @workflow.signal(description="Stop the drill: abort its cutover and restore the fleet.")
    def abort(self, action: OperatorAction | None = None) -> None:
        self._abort = action or OperatorAction(reason="aborted")

    @workflow.query(description="The drill's report so far.")
    def report(self) -> DrillReport | None:
        return self._report

    @property
    def r(self) -> DrillReport:
        assert self._report is not None, "the report exists from the drill's first step"
        return self._report

    @workflow.run
    async def run(self, inp: DrillInput) -> DrillReport:
        inp.drill_id = inp.drill_id or workflow.info().workflow_id  # scheduled runs get their own IDs
        snap = await self._snapshot(inp)
        source = snap["active_region"]
        target = next((r for r, v in snap["health"].items() if r != source), None)
        self._report = DrillReport(
            drill_id=inp.drill_id,
            deployment=inp.deployment,
            kind=inp.kind,
            source=source,
            target=target or "",
            scope=inp.scope or "fleet",
            started_at=workflow.now(),
            criteria=inp.criteria,
        )
        epoch_before = self._epoch_before = int(snap["epoch"])
        self._regions = list(snap["health"])
        fault_on = False
        moved = False
        try:
            scope = await self._scope(inp, source)
            if self._bounded():
                self._checkpoint()
                await self._recovery_point(inp, scope)
            self._phase("moving")
            t0 = self._t0 = workflow.now()
            if inp.kind == "outage":
                await workflow.execute_activity_method(
                    DrillActivities.set_region_fault,
                    FaultInput(deployment=inp.deployment, region=source, mode="outage"),
                    **_options(30),
                )
                fault_on = True
                if self._bounded():
                    moved_by = await self._follow_failover(inp, t0)
                else:
                    moved_by = await self._wait_cutover(
                        WaitCutoverInput(
                            deployment=inp.deployment,
                            cutover_id=None,
                            after_epoch=epoch_before,
                            timeout_seconds=inp.timeout_seconds,
                        )
                    )
            else:
                started = await self._request(
                    inp,
                    CutoverRequest(
                        target=self.r.target,
                        scope=scope,
                        mode="planned",
                        reason=f"{inp.drill_id}: drill",
                        requested_by=inp.drill_id,
                        force=False,
                        approval=self._approval(inp),
                    ),
                )
                if self._bounded():
                    moved_by = await self._follow(inp, started.cutover_id, t0)
                else:
                    moved_by = await self._wait_cutover(
                        WaitCutoverInput(deployment=inp.deployment, cutover_id=started.cutover_id)
                    )
            moved = moved_by.result not in ("aborted", "failed")
            self._record_cutover(moved_by, t0)
            arrivals = await workflow.execute_activity_method(
                DrillActivities.arrival_times,
                ArrivalInput(
                    deployment=inp.deployment,
                    list_region=self.r.target,
                    group=moved_by.scope,
                    target=self.r.target,
                    min_epoch=moved_by.epoch,
                    t0=t0,
                ),
                **_options(600),
            )
            self.r.devices, self.r.moved = arrivals.devices, arrivals.confirmed
            self.r.recovery_95_seconds, self.r.recovery_100_seconds = (
                arrivals.p95_seconds,
                arrivals.max_seconds,
            )
            self._phase(f"holding {inp.hold_seconds:.0f}s in {self.r.target}")
            with contextlib.suppress(TimeoutError):  # the hold ends by time unless aborted
                await workflow.wait_condition(
                    lambda: self._abort is not None, timeout=timedelta(seconds=inp.hold_seconds)
                )
        except DrillStopped as e:
            self.r.reasons.append(str(e))
        except Exception as e:  # noqa: BLE001 - a drill reports its failure instead of losing the fleet
            if _cancels_the_drill(e):
                raise  # restored below, then the drill ends cancelled
            self.r.reasons.append(f"drill interrupted: {_message(e)}")
        finally:
            await self._restore(inp, scope_of(self.r, inp), fault_on, moved)
            if inp.percent and inp.kind != "outage" and self._bounded():
                await self._remove_scope_group(inp, f"{inp.drill_id}-scope")
        return await self._finish(inp)

    async def _scope(self, inp: DrillInput, source: str) -> str | None:
        if inp.kind == "outage":
            if inp.scope or inp.percent:
                self.r.reasons.append("an outage takes a whole region down: the scope is the whole fleet")
            return None
        if inp.percent:
            group = f"{inp.drill_id}-scope"
            count = await workflow.execute_activity_method(
                DrillActivities.sample_scope,
                SampleInput(deployment=inp.deployment, region=source, percent=inp.percent, group=group),
                **_options(600),
            )
            self.r.scope = f"{group} ({inp.percent:g}% = {count} devices)"
            return group
        return inp.scope

    async def _restore(self, inp: DrillInput, scope: str | None, fault_on: bool, moved: bool) -> None:
        """Put everything back: fault switch off, source healthy again, fleet back where it started."""
        self._phase("restoring")
        try:
            if self._cutover and self._abort is not None and not self._bounded():
                await workflow.execute_activity_method(
                    DrillActivities.abort_cutover,
                    AbortCutoverInput(cutover_id=self._cutover),
                    **_options(30),
                )
                await self._wait_cutover(
                    WaitCutoverInput(deployment=inp.deployment, cutover_id=self._cutover)
                )
            if fault_on:
                await workflow.execute_activity_method(
                    DrillActivities.set_region_fault,
                    FaultInput(deployment=inp.deployment, region=self.r.source, mode="clear"),
                    **_options(60),
                )
                await workflow.execute_activity_method(
                    DrillActivities.wait_region_state,
                    WaitHealthInput(
                        deployment=inp.deployment,
                        region=self.r.source,
                        state=HEALTHY,
                        timeout_seconds=inp.timeout_seconds,
                    ),
                    **_options(
                        inp.timeout_seconds + 60,
                        total=inp.timeout_seconds + 120 if self._bounded() else None,
                    ),
                )
                if not self._bounded():  # (measured before the outage now: see _recovery_point)
                    parity = await workflow.execute_activity_method(
                        ShadowActivities.check_shadow_parity,
                        ShadowParityInput(
                            deployment=inp.deployment, source=self.r.source, target=self.r.target
                        ),
                        **_options(600),
                    )
                    self.r.recovery_point_devices = parity.differing
            snap = await self._snapshot(inp)
            flight = snap.get("in_flight")  # still running: a late failover, a slow rollback
            if flight and flight["epoch"] > self._epoch_before and self._bounded():
                t0 = self._t0 or workflow.now()
                self._record_cutover(await self._follow(inp, flight["cutover_id"], t0, abortable=False), t0)
                snap = await self._snapshot(inp)
            home = (
                (snap.get("homes") or {}).get(scope, snap["active_region"])
                if scope
                else snap["active_region"]
            )
            if home != self.r.source:
                t0 = workflow.now()
                started = await self._request(
                    inp,
                    CutoverRequest(
                        target=self.r.source,
                        scope=scope,
                        mode="planned",
                        reason=f"{inp.drill_id}: fail back",
                        requested_by=inp.drill_id,
                        force=True,
                        approval=self._approval(inp),
                    ),
                )
                if self._bounded():  # the fail back is the restore: the drill's abort does not stop it
                    back = await self._follow(inp, started.cutover_id, t0, abortable=False)
                else:
                    back = await self._wait_cutover(
                        WaitCutoverInput(deployment=inp.deployment, cutover_id=started.cutover_id)
                    )
                self.r.failback_seconds = (workflow.now() - t0).total_seconds()
                self.r.moved_back = back.confirmed
                self._record_cutover(back, t0)
            elif moved:
                self.r.reasons.append("the fleet was already back in the source before fail back")
        except Exception as e:  # noqa: BLE001
            if _cancels_the_drill(e):
                raise
            self.r.reasons.append(f"restore incomplete, act by hand: {_message(e)}")
            self.r.restored = False

    async def _finish(self, inp: DrillInput) -> DrillReport:
        self.r.finished_at = workflow.now()
        evaluate(self.r, aborted=self._abort is not None)
        self._phase("done: PASS" if self.r.passed else "done: FAIL")
        workflow.metric_meter().create_counter("iotfailover_drills_total", "Drills by kind and outcome").add(
            1, {"deployment": inp.deployment, "kind": inp.kind, "result": "pass" if self.r.passed else "fail"}
        )
        self.r.report_paths = await workflow.execute_activity_method(
            DrillActivities.write_drill_report,
            ReportInput(
                deployment=inp.deployment,
                drill_id=inp.drill_id,
                report=_plain(self.r),
                markdown=render_markdown(self.r),
            ),
            **_options(60),
        )
        return self.r

    # ---- bounded waits (DRILL_BOUNDED) ----

    async def _recovery_point(self, inp: DrillInput, scope: str | None) -> None:
        """What losing the source now would lose, per device of the scope. Measured before anything
        moves: once devices have moved, their writes in the standby hide what it lacked at the outage."""
        if not self.r.target:
            return
        self._phase("measuring the recovery point")
        try:
            rp: RecoveryPoint = await workflow.execute_activity_method(
                ShadowActivities.measure_recovery_point,
                RecoveryPointInput(
                    deployment=inp.deployment,
                    source=self.r.source,
                    target=self.r.target,
                    thing_group=scope,
                    as_of=workflow.now(),
                ),
                **_options(inp.timeout_seconds, total=inp.timeout_seconds),
            )
        except ActivityError as e:
            self.r.reasons.append(f"recovery point not measured: {_message(e)}")
            return
        r = self.r
        r.recovery_point_at, r.recovery_point_checked, r.recovery_point_devices = (
            rp.as_of,
            rp.devices,
            rp.devices_lost,
        )
        r.recovery_point_p50_seconds, r.recovery_point_p95_seconds, r.recovery_point_max_seconds = (
            rp.p50_seconds,
            rp.p95_seconds,
            rp.max_seconds,
        )

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
            **_options(30),
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

    async def _remove_scope_group(self, inp: DrillInput, group: str) -> None:
        """A thing may belong to at most 10 static groups: the sampled scope goes when the drill ends
        (in every region: registry replication copies groups)."""
        for region in self._regions:
            try:
                await workflow.execute_activity_method(
                    JobActivities.delete_wave_groups,
                    DeleteGroupsInput(deployment=inp.deployment, region=region, groups=[group]),
                    **_options(60),
                )
            except ActivityError as e:
                self.r.reasons.append(f"drill group {group} not deleted in {region}: {_message(e)}")

    def _checkpoint(self) -> None:
        if self._abort is not None:
            raise DrillStopped("the drill was aborted before anything moved")

    def _approval(self, inp: DrillInput) -> Approval | None:
        """A drill rehearses the automation: its cutovers ask no one, unless its input says otherwise."""
        return inp.approval if self._bounded() else None

    def _bounded(self) -> bool:
        """DRILL_BOUNDED, asked where the old and the new drill part ways (the first answer holds)."""
        return workflow.patched(DRILL_BOUNDED)

    # ---- helpers ----

    async def _snapshot(self, inp: DrillInput) -> dict[str, Any]:
        """The deployment's state as its query answers it (plain JSON)."""
        return await workflow.execute_activity_method(
            DrillActivities.deployment_snapshot, inp.deployment, **_options(30)
        )

    async def _request(self, inp: DrillInput, req: CutoverRequest) -> CutoverStarted:
        started = await workflow.execute_activity_method(
            DrillActivities.request_cutover,
            SteerInput(deployment=inp.deployment, request=req),
            **_options(60),
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


def _options(seconds: float, total: float | None = None) -> dict[str, Any]:
    """Timeouts and retries of one of the drill's activities: those that run long heartbeat."""
    return {
        "start_to_close_timeout": timedelta(seconds=seconds),
        "schedule_to_close_timeout": timedelta(seconds=total) if total else None,
        "heartbeat_timeout": timedelta(seconds=60) if seconds > 120 else None,
        "retry_policy": RETRY,
    }


def _cancels_the_drill(e: BaseException) -> bool:
    """The drill itself was cancelled (its own waits it cancels are never raised): it restores,
    then ends cancelled (before DRILL_CANCELS: it reported "drill interrupted" and completed)."""
    return is_cancelled_exception(e) and workflow.patched(DRILL_CANCELS)


def scope_of(report: DrillReport, inp: DrillInput) -> str | None:
    if inp.kind == "outage":
        return None
    return report.scope.split(" ", 1)[0] if inp.percent else inp.scope


def _message(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    return str(getattr(cause, "message", None) or e)


def _plain(r: DrillReport) -> dict:
    return dataclasses.asdict(r)
