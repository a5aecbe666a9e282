"""DeploymentWorkflow: one long-lived entity per deployment (ID `deployment-<name>`).

It holds the active region (or each scope's home in active/active), the epoch that fences every
flip, what each region's health monitor and the registry replication last said, the cutover in
flight and the history. Cutover requests arrive as updates whose validator refuses a bad request
before anything is recorded, and are checked again under the lock (several may pass the validator
at once); health changes arrive as signals and may start an automatic emergency cutover under the
safety rules. The main loop watches the running cutover, starts automatic failovers, and catches up
regions that missed a flip until every region agrees. Every decision, taken or refused, is kept
with its reason.

Its parts: the state and records (deployment_state), the bootstrap answers and their catch-up
(deployment_bootstrap), the cutovers (deployment_cutovers); here, the handlers, the main loop and
the automatic failover.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

# not passed through: imported into the sandbox with the activity types their calls decode
from workflows.deployment_bootstrap import BootstrapAnswers
from workflows.deployment_cutovers import Cutovers
from workflows.deployment_state import (
    DeploymentInput,
    DeploymentState,
    RegionView,
    ReplicaView,
)

with workflow.unsafe.imports_passed_through():
    from activities.peers import PeerActivities, ReadHealthInput
    from core.config import DeploymentConfig
    from core.models import (
        HEALTHY,
        REPLICA_STATUS_SIGNAL,
        UNHEALTHY,
        UNKNOWN,
        CutoverRequest,
        CutoverStarted,
        RegionHealthChange,
        ReplicaReport,
    )
    from core.workflow_ids import health_id
    from workflows.failover_policy import FailoverContext, RegionStatus, decide_failover, failback_offer
    from workflows.versions import (
        ASK_HEALTH_AT_START,
        CONTINUE_ONLY_IDLE,
        LOOP_WATCHES_CUTOVER,
        RECHECK_UNDER_LOCK,
    )

__all__ = ["DeploymentInput", "DeploymentState", "DeploymentWorkflow"]


@workflow.defn(name="DeploymentWorkflow")
class DeploymentWorkflow(Cutovers, BootstrapAnswers):
    @workflow.init
    def __init__(self, inp: DeploymentInput) -> None:
        # state exists before `run`, so a signal delivered with the first task finds it
        self.cfg = inp.config
        self.s = inp.state or DeploymentState(active_region=inp.config.primary)
        for r in self.cfg.regions:
            self.s.health.setdefault(r, RegionView())
        self._child = None
        self._outcome = None
        self._catching_up = None
        self._watch = None
        self._auto = None
        self._lock = asyncio.Lock()
        self._last_refusal = ""

    # ---- handlers ----

    @workflow.update(
        description="Start a cutover: target region, optional scope (thing group), mode, reason, force."
    )
    async def request_cutover(self, req: CutoverRequest) -> CutoverStarted:
        async with self._lock:
            refusal = self._refusal(req)  # another request may have started a cutover since validation
            if refusal and workflow.patched(RECHECK_UNDER_LOCK):
                raise ApplicationError(refusal, type="CutoverRefused", non_retryable=True)
            return await self._start_cutover(req)

    @request_cutover.validator
    def _validate_cutover(self, req: CutoverRequest) -> None:
        problem = self._refusal(req)
        if problem:
            raise ValueError(problem)

    @workflow.signal(description="A region health monitor reports a change of state.")
    async def region_health(self, change: RegionHealthChange) -> None:
        if not self._adopt_health(change):
            return
        if self._child is not None:
            await self._tell_cutover(change)
        if change.state != UNHEALTHY and self.s.catch_up.get(change.region):
            if self._watching():
                self.s.catch_up_after.pop(change.region, None)  # the main loop tries again now
            elif change.state == HEALTHY:
                await self._catch_up_inline(change.region)
        self._evaluate_failover()
        self._report()

    @workflow.signal(
        name=REPLICA_STATUS_SIGNAL,
        description="Registry replication reports whether a region holds a complete copy of a source.",
    )
    def replica_status(self, report: ReplicaReport) -> None:
        if report.target not in self.cfg.regions:
            self._decide("refused", f"replica report for unknown region {report.target!r}", rule="input")
            return
        key = f"{report.source}>{report.target}"
        before = self.s.replicas.get(key)
        self.s.replicas[key] = ReplicaView(
            source=report.source,
            target=report.target,
            complete=report.complete,
            reason=report.reason,
            things=report.things,
            fleet_devices=report.fleet_devices,
            at=report.at or workflow.now(),
        )
        if report.source == self.s.active_region and report.fleet_devices:
            self.s.scope_sizes[self.cfg.fleet.thing_group] = report.fleet_devices
        if before is None or (before.complete, before.reason) != (report.complete, report.reason):
            state = "complete" if report.complete else f"incomplete: {report.reason}"
            self._decide("note", f"registry copy {report.source} → {report.target} {state}")
        self._evaluate_failover()
        self._report()

    @workflow.update(description="Adopt a changed deployment config (policies, regions' endpoints).")
    def reload_config(self, cfg: DeploymentConfig) -> str:
        self.cfg = cfg
        self._decide("note", "config reloaded")
        return "reloaded"

    @reload_config.validator
    def _validate_reload(self, cfg: DeploymentConfig) -> None:
        if self.cfg and cfg.name != self.cfg.name:
            raise ValueError(f"config is for deployment {cfg.name!r}, this is {self.cfg.name!r}")
        if self.s and self.s.active_region not in cfg.regions:
            raise ValueError(f"the active region {self.s.active_region} is missing from the new config")

    @workflow.query(
        description="Active region, epoch, health per region, cutover in flight, history, decisions."
    )
    def state(self) -> DeploymentState | None:
        return self.s

    # ---- main loop ----

    @workflow.run
    async def run(self, inp: DeploymentInput) -> None:
        if not self.s.initialized:
            await self._initialize()
        await self._reattach()
        await self._ask_health()
        self._report()
        while True:
            with contextlib.suppress(TimeoutError):  # wake every minute to re-evaluate the safety rules
                await workflow.wait_condition(self._has_work, timeout=self._tick())
            if self._outcome is not None and self._outcome.done():
                await self._finish_cutover()
            self._evaluate_failover()
            if self._auto is not None and self._outcome is None:
                req, self._auto = self._auto, None
                async with self._lock:
                    refusal = self._refusal(req)
                    if refusal:
                        self._decide("refused", refusal, rule="revalidation", target=req.target)
                    else:
                        with contextlib.suppress(FailureError):  # recorded; the next decision retries
                            await self._start_cutover(req)
            if self._outcome is not None and not self._watching():
                await self._finish_cutover()  # recorded before LOOP_WATCHES_CUTOVER: blocks on it
            if self._catch_up_due() and self._watching():
                self._catching_up = asyncio.create_task(self._catch_up())
            if self._should_continue():
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._should_continue() or not workflow.patched(CONTINUE_ONLY_IDLE):
                    workflow.continue_as_new(DeploymentInput(config=self.cfg, state=self.s))

    def _tick(self) -> timedelta:
        """A minute, or less when a region's next catch-up try comes sooner."""
        if self._watch is not True or not self.s.catch_up_after:
            return timedelta(minutes=1)
        soonest = min(self.s.catch_up_after.values()) - workflow.now()
        return max(timedelta(seconds=1), min(timedelta(minutes=1), soonest))

    def _has_work(self) -> bool:
        if self._auto is not None or self._should_continue():
            return True
        if self._watch is True and self._catch_up_due():
            return True
        if self._outcome is None:
            return False
        # before LOOP_WATCHES_CUTOVER the loop woke as soon as a cutover started, to block on it
        return self._outcome.done() or self._watch is not True

    def _should_continue(self) -> bool:
        idle = self._outcome is None and (self._catching_up is None or self._catching_up.done())
        return idle and workflow.info().is_continue_as_new_suggested()

    def _watching(self) -> bool:
        """LOOP_WATCHES_CUTOVER for this run, decided the first time the old and new paths part."""
        if self._watch is None:
            self._watch = workflow.patched(LOOP_WATCHES_CUTOVER)
        return self._watch

    # ---- health and automatic failover ----

    async def _ask_health(self) -> None:
        """Monitors signal changes only: after a restart, ask them what they last reported."""
        unknown = [r for r, v in self.s.health.items() if v.state == UNKNOWN]
        if not unknown or not workflow.patched(ASK_HEALTH_AT_START):
            return
        try:
            readings = await workflow.execute_activity_method(
                PeerActivities.read_region_health,
                ReadHealthInput(
                    deployment=self.cfg.name,
                    monitors={r: health_id(self.cfg.name, r) for r in unknown},
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
        except ActivityError as e:  # the monitors will tell when they next change
            self._decide("note", f"could not read the health monitors: {e.cause or e}")
            return
        readings.changes = [c for c in readings.changes if self.s.health[c.region].state == UNKNOWN]
        for change in readings.changes:  # a signal that arrived meanwhile is newer
            self._adopt_health(change)
        if readings.changes:
            self._decide("note", "health read from the monitors: " + ", ".join(
                f"{c.region} {c.state}" for c in readings.changes
            ))  # fmt: skip

    def _adopt_health(self, change: RegionHealthChange) -> bool:
        if change.region not in self.cfg.regions:
            self._decide(
                "refused", f"health report for unknown region {change.region!r} ignored", rule="input"
            )
            return False
        view = self.s.health.setdefault(change.region, RegionView())
        view.state, view.score, view.reasons = change.state, change.score, list(change.reasons)
        view.since = change.at or workflow.now()
        return True

    def _failover_context(self) -> FailoverContext:
        s = self.s
        return FailoverContext(
            active=s.active_region,
            home=self.cfg.primary,
            regions={
                r: RegionStatus(state=v.state, since=v.since, incomplete=self._incomplete(r))
                for r, v in s.health.items()
            },
            standby_order=self.cfg.standbys(),
            automatic_cutovers=list(s.automatic_at),
            last_cutover_end=s.last_cutover_end,
            cutover_running=self._outcome is not None or self._auto is not None,
            cooldown_minutes=self.cfg.cutover.cooldown_minutes,
        )

    def _evaluate_failover(self) -> None:
        """Health-triggered failover under the safety rules; every refusal is recorded once with its rule."""
        if self._auto is not None:  # a decision is already waiting to start
            return
        ctx, now = self._failover_context(), workflow.now()
        self.s.failback_offer = failback_offer(ctx, self.cfg.failover, now)
        decision = decide_failover(ctx, self.cfg.failover, now)
        meter = workflow.metric_meter().create_counter(
            "iotfailover_failover_decisions_total", "Automatic failover decisions, taken and refused"
        )
        if decision.take and decision.target:
            self._auto = CutoverRequest(
                target=decision.target,
                mode="emergency",
                automatic=True,
                reason=decision.reason,
                requested_by="health-triggered failover",
            )
            self._last_refusal = ""
            meter.add(1, {"deployment": self.cfg.name, "decision": "taken", "reason": decision.rule})
        elif decision.rule != "active_not_unhealthy" and decision.reason != self._last_refusal:
            self._last_refusal = decision.reason
            self._decide("refused", decision.reason, rule=decision.rule, target=decision.target)
            meter.add(1, {"deployment": self.cfg.name, "decision": "refused", "reason": decision.rule})
