"""DrillWorkflow: rehearse a failover on a slice of the fleet (or all of it locally), fail back, report.

planned: a planned cutover of the drill scope to the standby, hold, and a planned cutover back.
outage:  (local stack) the primary's fault switch goes on; health-triggered automatic failover must
         act on its own; then the fault clears, the region recovers and the fleet fails back.
Both go through DeploymentWorkflow, so the safety rules apply, and both always restore what they
changed (fault switch, fleet location), even when aborted or failing.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.drill import (
        ArrivalInput,
        ArrivalStats,
        FaultInput,
        ReportInput,
        SampleInput,
        SteerInput,
        WaitCutoverInput,
        WaitHealthInput,
    )
    from core.models import CutoverProgress, CutoverRequest, CutoverStarted, OperatorAction
    from workflows.drill_report import DrillCriteria, DrillReport, evaluate, render_markdown

RETRY = RetryPolicy(
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=20,
    non_retryable_error_types=["CutoverRefused", "NoFaultSwitch", "NoCutover", "HealthTimeout"],
)


@dataclass
class DrillInput:
    deployment: str
    drill_id: str
    kind: Literal["planned", "outage"] = "planned"
    scope: str | None = None  # a thing group; None with percent None: the whole fleet
    percent: float | None = None  # sample this share of the fleet into a drill group
    hold_seconds: float = 30
    criteria: DrillCriteria = field(default_factory=DrillCriteria)
    timeout_seconds: float = 900


@workflow.defn(name="DrillWorkflow")
class DrillWorkflow:
    def __init__(self) -> None:
        self.r: DrillReport | None = None
        self._abort: OperatorAction | None = None
        self._cutover: str | None = None

    @workflow.signal(description="Stop the drill: abort its cutover and restore the fleet.")
    def abort(self, action: OperatorAction | None = None) -> None:
        self._abort = action or OperatorAction(reason="aborted")

    @workflow.query(description="The drill's report so far.")
    def report(self) -> DrillReport | None:
        return self.r

    @workflow.run
    async def run(self, inp: DrillInput) -> DrillReport:
        inp.drill_id = inp.drill_id or workflow.info().workflow_id  # scheduled runs get their own IDs
        snap = await self._act("deployment_snapshot", inp.deployment, dict, 30)
        source = snap["active_region"]
        target = next((r for r, v in snap["health"].items() if r != source), None)
        self.r = DrillReport(
            drill_id=inp.drill_id,
            deployment=inp.deployment,
            kind=inp.kind,
            source=source,
            target=target or "",
            scope=inp.scope or "fleet",
            started_at=workflow.now(),
            criteria=inp.criteria,
        )
        epoch_before = int(snap["epoch"])
        fault_on = False
        moved = False
        try:
            scope = await self._scope(inp, source)
            self._phase("moving")
            t0 = workflow.now()
            if inp.kind == "outage":
                await self._act("set_region_fault", FaultInput(inp.deployment, source, "outage"), str, 30)
                fault_on = True
                moved_by = await self._wait_cutover(
                    WaitCutoverInput(inp.deployment, None, epoch_before, inp.timeout_seconds)
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
                    ),
                )
                moved_by = await self._wait_cutover(WaitCutoverInput(inp.deployment, started.cutover_id))
            moved = moved_by.result not in ("aborted", "failed")
            self._record_cutover(moved_by, t0)
            arrivals = await self._act(
                "arrival_times",
                ArrivalInput(
                    inp.deployment, self.r.target, moved_by.scope, self.r.target, moved_by.epoch, t0
                ),
                ArrivalStats,
                600,
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
        except Exception as e:  # noqa: BLE001 - a drill reports its failure instead of losing the fleet
            self.r.reasons.append(f"drill interrupted: {_message(e)}")
        finally:
            await self._restore(inp, scope_of(self.r, inp), fault_on, moved)
        return await self._finish(inp)

    async def _scope(self, inp: DrillInput, source: str) -> str | None:
        if inp.kind == "outage":
            if inp.scope or inp.percent:
                self.r.reasons.append("an outage takes a whole region down: the scope is the whole fleet")
            return None
        if inp.percent:
            group = f"{inp.drill_id}-scope"
            count = await self._act(
                "sample_scope", SampleInput(inp.deployment, source, inp.percent, group), int, 600
            )
            self.r.scope = f"{group} ({inp.percent:g}% = {count} devices)"
            return group
        return inp.scope

    async def _restore(self, inp: DrillInput, scope: str | None, fault_on: bool, moved: bool) -> None:
        """Put everything back: fault switch off, source healthy again, fleet back where it started."""
        self._phase("restoring")
        try:
            if self._cutover and self._abort is not None:
                await self._act("abort_cutover", self._cutover, str, 30)
                await self._wait_cutover(WaitCutoverInput(inp.deployment, self._cutover))
            if fault_on:
                await self._act(
                    "set_region_fault", FaultInput(inp.deployment, self.r.source, "clear"), str, 60
                )
                await self._act(
                    "wait_region_state",
                    WaitHealthInput(inp.deployment, self.r.source, "Healthy", inp.timeout_seconds),
                    str,
                    inp.timeout_seconds + 60,
                )
                # what the standby never got from the source: the data a real outage would lose
                parity = await self._act(
                    "check_shadow_parity",
                    {"deployment": inp.deployment, "source": self.r.source, "target": self.r.target},
                    dict,
                    600,
                )
                self.r.recovery_point_devices = int(parity.get("differing", 0))
            snap = await self._act("deployment_snapshot", inp.deployment, dict, 30)
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
                    ),
                )
                back = await self._wait_cutover(WaitCutoverInput(inp.deployment, started.cutover_id))
                self.r.failback_seconds = (workflow.now() - t0).total_seconds()
                self.r.moved_back = back.confirmed
                self._record_cutover(back, t0)
            elif moved:
                self.r.reasons.append("the fleet was already back in the source before fail back")
        except Exception as e:  # noqa: BLE001
            self.r.reasons.append(f"restore incomplete, act by hand: {_message(e)}")
            self.r.restored = False

    async def _finish(self, inp: DrillInput) -> DrillReport:
        self.r.finished_at = workflow.now()
        evaluate(self.r, aborted=self._abort is not None)
        self._phase("done: PASS" if self.r.passed else "done: FAIL")
        self.r.report_paths = await self._act(
            "write_drill_report",
            ReportInput(inp.deployment, inp.drill_id, _plain(self.r), render_markdown(self.r)),
            list[str],
            60,
        )
        return self.r

    # ---- helpers ----

    async def _request(self, inp: DrillInput, req: CutoverRequest) -> CutoverStarted:
        started = await self._act("request_cutover", SteerInput(inp.deployment, req), CutoverStarted, 60)
        self._cutover = started.cutover_id
        return started

    async def _wait_cutover(self, w: WaitCutoverInput) -> CutoverProgress:
        result = await workflow.execute_activity(
            "wait_cutover",
            w,
            result_type=CutoverProgress,
            start_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=RETRY,
        )
        self._cutover = None
        return result

    def _record_cutover(self, p: CutoverProgress, t0: datetime) -> None:
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

    async def _act(self, name: str, arg, result_type, seconds: float):
        return await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            start_to_close_timeout=timedelta(seconds=seconds),
            heartbeat_timeout=timedelta(seconds=60) if seconds > 120 else None,
            retry_policy=RETRY,
        )

    def _phase(self, phase: str) -> None:
        self.r.phase = phase
        lines = [
            f"**{self.r.kind} drill {self.r.drill_id}**: {self.r.source} → {self.r.target}, scope {self.r.scope}",
            f"phase: {phase}",
        ]
        lines += [f"- {c}" for c in self.r.cutovers]
        workflow.set_current_details("\n".join(lines))


def scope_of(report: DrillReport, inp: DrillInput) -> str | None:
    if inp.kind == "outage":
        return None
    return report.scope.split(" ", 1)[0] if inp.percent else inp.scope


def _message(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    return str(getattr(cause, "message", None) or e)


def _plain(r: DrillReport) -> dict:
    return dataclasses.asdict(r)
