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

import contextlib
import dataclasses
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.drill import (
        AbortCutoverInput,
        ArrivalInput,
        DrillActivities,
        FaultInput,
        ReportInput,
        SampleInput,
        WaitCutoverInput,
        WaitHealthInput,
    )
    from activities.jobs import DeleteGroupsInput, JobActivities
    from activities.recovery_point import RecoveryPoint  # (its module, for the result's field types)
    from activities.shadows import RecoveryPointInput, ShadowActivities, ShadowParityInput
    from core.models import HEALTHY, CutoverRequest, OperatorAction
    from workflows.drill_report import DrillReport, evaluate, render_markdown
    from workflows.versions import DRILL_CANCELS

# not passed through: imported into the sandbox with the activity types their calls decode
from workflows.drill_cutovers import (
    Approval,
    DrillCutovers,
    DrillInput,
    DrillStopped,
    message,
    options,
)

__all__ = ["DrillInput", "DrillWorkflow", "scope_of"]


@workflow.defn(name="DrillWorkflow")
class DrillWorkflow(DrillCutovers):
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
                    **options(30),
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
                **options(600),
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
            self.r.reasons.append(f"drill interrupted: {message(e)}")
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
                **options(600),
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
                    **options(30),
                )
                await self._wait_cutover(
                    WaitCutoverInput(deployment=inp.deployment, cutover_id=self._cutover)
                )
            if fault_on:
                await workflow.execute_activity_method(
                    DrillActivities.set_region_fault,
                    FaultInput(deployment=inp.deployment, region=self.r.source, mode="clear"),
                    **options(60),
                )
                await workflow.execute_activity_method(
                    DrillActivities.wait_region_state,
                    WaitHealthInput(
                        deployment=inp.deployment,
                        region=self.r.source,
                        state=HEALTHY,
                        timeout_seconds=inp.timeout_seconds,
                    ),
                    **options(
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
                        **options(600),
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
            self.r.reasons.append(f"restore incomplete, act by hand: {message(e)}")
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
            **options(60),
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
                **options(inp.timeout_seconds, total=inp.timeout_seconds),
            )
        except ActivityError as e:
            self.r.reasons.append(f"recovery point not measured: {message(e)}")
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

    async def _remove_scope_group(self, inp: DrillInput, group: str) -> None:
        """A thing may belong to at most 10 static groups: the sampled scope goes when the drill ends
        (in every region: registry replication copies groups)."""
        for region in self._regions:
            try:
                await workflow.execute_activity_method(
                    JobActivities.delete_wave_groups,
                    DeleteGroupsInput(deployment=inp.deployment, region=region, groups=[group]),
                    **options(60),
                )
            except ActivityError as e:
                self.r.reasons.append(f"drill group {group} not deleted in {region}: {message(e)}")

    def _checkpoint(self) -> None:
        if self._abort is not None:
            raise DrillStopped("the drill was aborted before anything moved")

    def _approval(self, inp: DrillInput) -> Approval | None:
        """A drill rehearses the automation: its cutovers ask no one, unless its input says otherwise."""
        return inp.approval if self._bounded() else None

    # ---- helpers ----

    async def _snapshot(self, inp: DrillInput) -> dict[str, Any]:
        """The deployment's state as its query answers it (plain JSON)."""
        return await workflow.execute_activity_method(
            DrillActivities.deployment_snapshot, inp.deployment, **options(30)
        )


def _cancels_the_drill(e: BaseException) -> bool:
    """The drill itself was cancelled (its own waits it cancels are never raised): it restores,
    then ends cancelled (before DRILL_CANCELS: it reported "drill interrupted" and completed)."""
    return is_cancelled_exception(e) and workflow.patched(DRILL_CANCELS)


def scope_of(report: DrillReport, inp: DrillInput) -> str | None:
    if inp.kind == "outage":
        return None
    return report.scope.split(" ", 1)[0] if inp.percent else inp.scope


def _plain(r: DrillReport) -> dict:
    return dataclasses.asdict(r)
