"""DeploymentWorkflow's cutovers: why a request is refused, starting the CutoverWorkflow child, and
recording its outcome (where the scope's devices are told to go now, and which regions missed it).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ChildWorkflowError, FailureError
from temporalio.workflow import ParentClosePolicy

# not passed through: imported into the sandbox with the activity types their calls decode
from workflows.deployment_state import (
    KEEP_HISTORY,
    RETRY,
    BootstrapView,
    CutoverRecord,
    DeploymentEntity,
    RegionView,
)

with workflow.unsafe.imports_passed_through():
    from activities.peers import AwaitCutoverInput, PeerActivities
    from core import workflow_ids
    from core.bootstrap_records import DEFAULT_SCOPE, group_scope
    from core.models import (
        HEALTHY,
        UNHEALTHY,
        CutoverProgress,
        CutoverRequest,
        CutoverStarted,
        RegionHealthChange,
    )
    from core.temporal import SA_DEPLOYMENT, SA_MODE, SA_PHASE, SA_SOURCE, SA_TARGET
    from workflows.cutover import CutoverWorkflow
    from workflows.cutover_steps import CutoverInput, bootstrap_order
    from workflows.versions import CATCH_UP_DURING_CUTOVER, REATTACH_CUTOVER


class Cutovers(DeploymentEntity):
    def _refusal(self, req: CutoverRequest) -> str | None:
        """Why this request must be refused, in words a person understands; None to accept."""
        if self.s is None or not self.s.initialized:
            return "the deployment is still initializing; try again in a few seconds"
        regions = list(self.cfg.regions)
        if req.target not in regions:
            return f"unknown region {req.target!r}: this deployment has {', '.join(regions)}"
        if req.force and not (req.reason.strip() and req.requested_by.strip()):
            return "force needs a reason and who asks (--reason, --by): it is recorded"
        if self.s.in_flight is not None or self._outcome is not None:
            f = self.s.in_flight
            return f"cutover {f.cutover_id if f else ''} is running; wait for it or abort it first"
        source = self._scope_home(req.scope)
        if req.target == source:
            return f"{req.target} is already active for {req.scope or 'the fleet'}"
        health = self.s.health.get(req.target, RegionView())
        if health.state != HEALTHY and not req.force:
            why = f" ({'; '.join(health.reasons)})" if health.reasons else ""
            return (
                f"{req.target} is {health.state}{why}: a cutover never targets a region that is not healthy "
                "(a person may override with force, which is recorded)"
            )
        incomplete = self._incomplete(req.target)
        if req.mode == "emergency" and incomplete and not req.force:
            return (
                f"{req.target}'s copy of the registry is incomplete ({incomplete}): an emergency "
                "cutover has no preflight to fix it, so devices it lacks could not connect there "
                "(a person may override with force, which is recorded)"
            )
        cooldown = timedelta(minutes=self.cfg.cutover.cooldown_minutes)
        if self.s.last_cutover_end and workflow.now() - self.s.last_cutover_end < cooldown and not req.force:
            left = cooldown - (workflow.now() - self.s.last_cutover_end)
            return f"inside the cooldown after the last cutover: {int(left.total_seconds())}s left"
        return None

    async def _start_cutover(self, req: CutoverRequest) -> CutoverStarted:
        cfg, s = self.cfg, self.s
        epoch = s.epoch + 1
        s.epoch += 2  # epoch + 1 is reserved for this cutover's rollback
        source = self._scope_home(req.scope)
        scope = req.scope or cfg.fleet.thing_group
        cutover_id = workflow_ids.cutover_id(cfg.name, epoch)
        # recorded before the first await: a request handled meanwhile sees a cutover in flight
        s.in_flight = CutoverRecord(
            cutover_id=cutover_id,
            epoch=epoch,
            source=source,
            target=req.target,
            mode=req.mode,
            scope=scope,
            requested_by=req.requested_by,
            reason=req.reason,
            forced=req.force,
            automatic=req.automatic,
            started_at=workflow.now(),
        )
        inp = CutoverInput(
            deployment=cfg.name,
            cutover_id=cutover_id,
            epoch=epoch,
            source=source,
            target=req.target,
            mode=req.mode,
            scope=scope,
            bootstrap_scope=group_scope(req.scope) if req.scope else DEFAULT_SCOPE,
            regions=list(cfg.regions),
            policy=cfg.cutover,
            approval=req.approval or cfg.cutover.approval,
            application=cfg.fleet.application,
            active_active=cfg.mode == "active-active",
            dns=bool(cfg.dns_record),
            reason=req.reason,
            requested_by=req.requested_by,
            forced=req.force,
            automatic=req.automatic,
            health={r: v.state for r, v in s.health.items()},
            known_devices=s.scope_sizes.get(scope, 0),
            quotas=cfg.quotas,
        )
        try:
            child = await workflow.start_child_workflow(
                CutoverWorkflow.run,
                inp,
                id=cutover_id,
                static_summary=f"{req.mode} cutover of {scope}: {source} → {req.target}",
                static_details=(
                    f"deployment {cfg.name}, epoch {epoch}, requested by {req.requested_by or 'operator'}"
                    f"{' (forced)' if req.force else ''}{' (automatic)' if req.automatic else ''}: "
                    f"{req.reason or 'no reason given'}"
                ),
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(SA_DEPLOYMENT, cfg.name),
                        SearchAttributePair(SA_SOURCE, source),
                        SearchAttributePair(SA_TARGET, req.target),
                        SearchAttributePair(SA_MODE, req.mode),
                        SearchAttributePair(SA_PHASE, "starting"),
                    ]
                ),
                parent_close_policy=ParentClosePolicy.ABANDON,
            )
        except BaseException as e:
            s.in_flight = None
            self._decide("note", f"{cutover_id} could not start: {e}")
            raise
        self._child = self._outcome = child
        lost = [r for r in cfg.regions if s.health.get(r, RegionView()).state == UNHEALTHY]
        if lost and workflow.patched(CATCH_UP_DURING_CUTOVER):
            for region in lost:  # the cutover's flips skip them: caught up once back, even mid-cutover
                self._missed(region, inp.bootstrap_scope)
        kind = "automatic-failover" if req.automatic else "cutover"
        self._decide(
            kind,
            f"{cutover_id}: {req.mode} {source} → {req.target}"
            f"{' FORCED by ' + req.requested_by if req.force else ''}: {req.reason}",
            target=req.target,
        )
        if req.automatic:
            s.automatic_at.append(workflow.now())
        s.failback_offer = None
        self._report()
        return CutoverStarted(
            cutover_id=cutover_id, epoch=epoch, source=source, target=req.target, mode=req.mode
        )

    async def _reattach(self) -> None:
        """A cutover in flight inherited without its handle (continued-as-new mid-cutover by an
        older version): wait for its outcome through an activity, so no later cutover is refused."""
        rec = self.s.in_flight
        if rec is None or self._outcome is not None or not workflow.patched(REATTACH_CUTOVER):
            return
        self._child = workflow.get_external_workflow_handle(rec.cutover_id)
        self._outcome = workflow.start_activity_method(
            PeerActivities.await_cutover,
            AwaitCutoverInput(deployment=self.cfg.name, cutover_id=rec.cutover_id),
            start_to_close_timeout=timedelta(days=7),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=RETRY,
        )
        self._decide("note", f"waiting for {rec.cutover_id}, started by an earlier run of this entity")

    async def _finish_cutover(self) -> None:
        """Record the cutover's outcome: where its scope's devices are told to go now, and who missed it."""
        rec, outcome = self.s.in_flight, self._outcome
        assert rec is not None and outcome is not None, "a cutover in flight has its record and outcome"
        try:
            result: CutoverProgress | None = await outcome
        except (ChildWorkflowError, ActivityError) as e:
            rec.result = "failed"
            self._decide("note", f"{rec.cutover_id} failed: {e.cause or e}")
            result = None
        self._child = self._outcome = None
        if result is not None:
            self._record_outcome(rec, result)
        rec.finished_at = workflow.now()
        if result is None or not result.handed_over:  # a cutover that changed nothing starts no cooldown
            self.s.last_cutover_end = rec.finished_at
        self.s.history = [*self.s.history, rec][-KEEP_HISTORY:]
        self.s.in_flight = None
        self._report()

    def _record_outcome(self, rec: CutoverRecord, result: CutoverProgress) -> None:
        rec.result, rec.confirmed, rec.devices = result.result, result.confirmed, result.devices_total
        rec.stragglers = len(result.stragglers)
        rec.note = result.takeover or result.error or ""
        bootstrap_scope = DEFAULT_SCOPE if rec.scope == self.cfg.fleet.thing_group else group_scope(rec.scope)
        primary, epoch = self._outcome_of(rec, result, bootstrap_scope)
        if bootstrap_scope == DEFAULT_SCOPE:
            self.s.active_region = primary
        elif primary != self.s.active_region or rec.scope in self.s.homes:
            self.s.homes[rec.scope] = primary
        if epoch:
            self.s.bootstrap[bootstrap_scope] = BootstrapView(
                epoch=epoch, primary=primary, order=bootstrap_order(self.cfg.region_names, primary)
            )
        if result.mode == "planned" and result.devices_total and not result.takeover:
            self.s.scope_sizes[rec.scope] = result.devices_total  # counted in the source
        for region in result.unreachable_regions:
            self._missed(region, bootstrap_scope)
        self._decide(
            "note",
            f"{rec.cutover_id} {result.result}: {result.confirmed}/{result.devices_total} "
            f"devices confirmed in {rec.target}, {len(result.stragglers)} stragglers"
            + (f"; {rec.note}" if rec.note else ""),
        )
        self._record_metrics(rec, result)

    def _outcome_of(self, rec: CutoverRecord, result: CutoverProgress, scope: str) -> tuple[str, int]:
        """(primary, epoch) the scope's bootstrap answer names now; epoch 0 when unchanged."""
        if result.primary_after:  # the cutover says what it left in place
            return result.primary_after, result.epoch_after
        moved = result.result in ("succeeded", "succeeded-with-stragglers") or (
            result.result == "aborted" and self.s.health.get(rec.source, RegionView()).state == UNHEALTHY
        )
        if moved:
            return rec.target, rec.epoch
        if "bootstrap-flip" in result.phase_seconds:
            return rec.source, rec.epoch + 1
        current = self.s.bootstrap.get(scope)
        home = self._scope_home(None if scope == DEFAULT_SCOPE else rec.scope)
        return home, current.epoch if current else 0

    async def _tell_cutover(self, change: RegionHealthChange) -> None:
        """Forward a health change to the running cutover (it acts when a region it needs is lost);
        a cutover that just ended cannot take it, which is harmless."""
        rec, child = self.s.in_flight, self._child
        if child is None:
            return
        states: dict[str, str] = {change.region: change.state}
        try:
            await child.signal(CutoverWorkflow.region_health, states)
        except FailureError as e:
            workflow.logger.info("health change not delivered to the cutover: %s", e)
            return
        if rec and change.state == UNHEALTHY and change.region in (rec.source, rec.target):
            what = (
                f"its source {rec.source} is Unhealthy: it continues as an emergency cutover once its "
                "flip has started, else it ends and automatic failover decides"
                if change.region == rec.source
                else f"its target {rec.target} is Unhealthy: it rolls back to {rec.source}"
            )
            rec.note = what
            self._decide("note", f"{rec.cutover_id}: {what}")

    def _record_metrics(self, rec: CutoverRecord, result: CutoverProgress) -> None:
        """Cutovers by mode and result, their duration and phases, devices moved or not (SDK meter)."""
        meter = workflow.metric_meter()
        labels = {"deployment": self.cfg.name, "mode": rec.mode}
        meter.create_counter("iotfailover_cutovers_total", "Cutovers by mode and result").add(
            1, {**labels, "result": result.result or "unknown"}
        )
        if result.started_at and result.finished_at:
            meter.create_histogram_float("iotfailover_cutover_seconds", "Cutover duration", "s").record(
                (result.finished_at - result.started_at).total_seconds(), labels
            )
        phases = meter.create_histogram_float(
            "iotfailover_cutover_phase_seconds", "Time per cutover phase", "s"
        )
        for phase, seconds in result.phase_seconds.items():
            phases.record(seconds, {"deployment": self.cfg.name, "phase": phase})
        devices = meter.create_counter(
            "iotfailover_devices_migrated_total", "Devices confirmed or not in the target"
        )
        devices.add(
            result.confirmed, {"deployment": self.cfg.name, "target": rec.target, "outcome": "confirmed"}
        )
        devices.add(
            result.pending, {"deployment": self.cfg.name, "target": rec.target, "outcome": "unconfirmed"}
        )
