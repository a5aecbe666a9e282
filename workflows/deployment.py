"""DeploymentWorkflow: one long-lived entity per deployment (ID `deployment-<name>`).

It holds the active region (or each scope's home in active/active), the epoch that fences every
flip, what each region's health monitor last said, the cutover in flight and the history. Cutover
requests arrive as updates whose validator refuses a bad request before anything is recorded;
health changes arrive as signals and may start an automatic emergency cutover under the safety
rules. Every decision, taken or refused, is kept with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, TypedSearchAttributes
from temporalio.exceptions import ChildWorkflowError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from core.config import DeploymentConfig
    from core.models import CutoverProgress, CutoverRequest, CutoverStarted, RegionHealthChange
    from core.temporal import SA_DEPLOYMENT, SA_MODE, SA_PHASE, SA_SOURCE, SA_TARGET
    from workflows.cutover_steps import CutoverInput, bootstrap_order
    from workflows.failover_policy import FailoverContext, RegionStatus, decide_failover, failback_offer

KEEP_HISTORY = 20
KEEP_DECISIONS = 50
RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30), non_retryable_error_types=["StaleEpoch"])


@dataclass
class RegionView:
    state: str = "Unknown"  # Healthy | Degraded | Unhealthy | Unknown (no monitor report yet)
    since: datetime | None = None
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)


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
    catch_up: dict[str, list[str]] = field(default_factory=dict)  # region -> scopes it missed
    failback_offer: str | None = None
    initialized: bool = False


@dataclass
class DeploymentInput:
    config: DeploymentConfig
    state: DeploymentState | None = None


@workflow.defn(name="DeploymentWorkflow")
class DeploymentWorkflow:
    @workflow.init
    def __init__(self, inp: DeploymentInput) -> None:
        # state exists before `run`, so a signal delivered with the first task finds it
        self.cfg: DeploymentConfig = inp.config
        self.s: DeploymentState = inp.state or DeploymentState(active_region=inp.config.primary)
        for r in self.cfg.regions:
            self.s.health.setdefault(r, RegionView())
        self._child: workflow.ChildWorkflowHandle | None = None
        self._auto: CutoverRequest | None = None
        self._lock = asyncio.Lock()
        self._last_refusal = ""

    # ---- handlers ----

    @workflow.update(
        description="Start a cutover: target region, optional scope (thing group), mode, reason, force."
    )
    async def request_cutover(self, req: CutoverRequest) -> CutoverStarted:
        async with self._lock:
            return await self._start_cutover(req)

    @request_cutover.validator
    def _validate_cutover(self, req: CutoverRequest) -> None:
        problem = self._refusal(req)
        if problem:
            raise ValueError(problem)

    @workflow.signal(description="A region health monitor reports a change of state.")
    async def region_health(self, change: RegionHealthChange) -> None:
        await self._on_health(change)

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
        self._report()
        while True:
            with contextlib.suppress(TimeoutError):  # wake every minute to re-evaluate the safety rules
                await workflow.wait_condition(
                    lambda: self._child is not None or self._auto is not None or self._should_continue(),
                    timeout=timedelta(minutes=1),
                )
            self._evaluate_failover()
            if self._auto is not None and self._child is None:
                req, self._auto = self._auto, None
                async with self._lock:
                    refusal = self._refusal(req)
                    if refusal:
                        self._decide("refused", refusal, rule="revalidation", target=req.target)
                    else:
                        await self._start_cutover(req)
            if self._child is not None:
                await self._await_cutover()
            if self._should_continue():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(DeploymentInput(self.cfg, self.s))

    def _should_continue(self) -> bool:
        return self._child is None and workflow.info().is_continue_as_new_suggested()

    async def _initialize(self) -> None:
        """Adopt the highest epoch any region's bootstrap table holds, or write the first answer."""
        epochs = []
        for region in self.cfg.regions:
            try:
                rec = await workflow.execute_activity(
                    "read_bootstrap",
                    {"deployment": self.cfg.name, "region": region, "scope": "default"},
                    result_type=dict | None,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=3),
                )
            except Exception:  # an unreachable region is caught up later
                self.s.catch_up.setdefault(region, []).append("default")
                continue
            if rec:
                epochs.append(int(rec["epoch"]))
                self.s.bootstrap["default"] = BootstrapView(
                    int(rec["epoch"]), rec["primary"], list(rec["order"])
                )
                self.s.active_region = rec["primary"]
        if epochs:
            self.s.epoch = max(epochs)
            self._decide("note", f"adopted epoch {self.s.epoch}, active region {self.s.active_region}")
        else:
            self.s.epoch = 1
            await self._write_bootstrap(
                "default",
                BootstrapView(
                    1, self.s.active_region, bootstrap_order(list(self.cfg.regions), self.s.active_region)
                ),
            )
            self._decide("note", f"first bootstrap answer written: {self.s.active_region} (epoch 1)")
        self.s.initialized = True

    async def _write_bootstrap(
        self, scope: str, view: BootstrapView, regions: list[str] | None = None
    ) -> None:
        result = await workflow.execute_activity(
            "flip_bootstrap",
            {
                "deployment": self.cfg.name,
                "epoch": view.epoch,
                "scope": scope,
                "primary": view.primary,
                "order": view.order,
                "reason": "deployment",
                "regions": regions,
            },
            result_type=dict,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RETRY,
        )
        self.s.bootstrap[scope] = view
        for region in result.get("unreachable", []):
            if scope not in self.s.catch_up.setdefault(region, []):
                self.s.catch_up[region].append(scope)
        for region in result.get("written", []):
            if scope in self.s.catch_up.get(region, []):
                self.s.catch_up[region].remove(scope)

    # ---- cutovers ----

    def _scope_home(self, scope: str | None) -> str:
        return self.s.homes.get(scope, self.s.active_region) if scope else self.s.active_region

    def _refusal(self, req: CutoverRequest) -> str | None:
        """Why this request must be refused, in words a person understands; None to accept."""
        if self.s is None or not self.s.initialized:
            return "the deployment is still initializing; try again in a few seconds"
        regions = list(self.cfg.regions)
        if req.target not in regions:
            return f"unknown region {req.target!r}: this deployment has {', '.join(regions)}"
        if req.force and not (req.reason.strip() and req.requested_by.strip()):
            return "force needs a reason and who asks (--reason, --by): it is recorded"
        if self.s.in_flight is not None or self._child is not None:
            f = self.s.in_flight
            return f"cutover {f.cutover_id if f else ''} is running; wait for it or abort it first"
        source = self._scope_home(req.scope)
        if req.target == source:
            return f"{req.target} is already active for {req.scope or 'the fleet'}"
        health = self.s.health.get(req.target, RegionView())
        if health.state != "Healthy" and not req.force:
            why = f" ({'; '.join(health.reasons)})" if health.reasons else ""
            return (
                f"{req.target} is {health.state}{why}: a cutover never targets a region that is not healthy "
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
        cutover_id = f"cutover-{cfg.name}-{epoch}"
        inp = CutoverInput(
            deployment=cfg.name,
            cutover_id=cutover_id,
            epoch=epoch,
            source=source,
            target=req.target,
            mode=req.mode,
            scope=scope,
            bootstrap_scope=f"group:{req.scope}" if req.scope else "default",
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
        )
        self._child = await workflow.start_child_workflow(
            "CutoverWorkflow",
            inp,
            id=cutover_id,
            result_type=CutoverProgress,
            static_summary=f"{req.mode} cutover of {scope}: {source} → {req.target}",
            static_details=(
                f"deployment {cfg.name}, epoch {epoch}, requested by {req.requested_by or 'operator'}"
                f"{' (forced)' if req.force else ''}{' (automatic)' if req.automatic else ''}: "
                f"{req.reason or 'no reason given'}"
            ),
            search_attributes=TypedSearchAttributes(
                [
                    SA_DEPLOYMENT.value_set(cfg.name),
                    SA_SOURCE.value_set(source),
                    SA_TARGET.value_set(req.target),
                    SA_MODE.value_set(req.mode),
                    SA_PHASE.value_set("starting"),
                ]
            ),
            parent_close_policy=ParentClosePolicy.ABANDON,
        )
        s.in_flight = CutoverRecord(
            cutover_id,
            epoch,
            source,
            req.target,
            req.mode,
            scope,
            req.requested_by,
            req.reason,
            req.force,
            req.automatic,
            started_at=workflow.now(),
        )
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
        return CutoverStarted(cutover_id, epoch, source, req.target, req.mode)

    async def _await_cutover(self) -> None:
        rec = self.s.in_flight
        try:
            result: CutoverProgress = await self._child
        except ChildWorkflowError as e:
            rec.result = "failed"
            self._decide("note", f"{rec.cutover_id} failed: {e.cause or e}")
            result = None
        self._child = None
        if result is not None:
            rec.result, rec.confirmed, rec.devices = result.result, result.confirmed, result.devices_total
            rec.stragglers = len(result.stragglers)
            moved = result.result in ("succeeded", "succeeded-with-stragglers") or (
                result.result == "aborted"
                and self.s.health.get(rec.source, RegionView()).state == "Unhealthy"
            )
            bootstrap_scope = "default" if rec.scope == self.cfg.fleet.thing_group else f"group:{rec.scope}"
            if moved:
                if bootstrap_scope == "default":
                    self.s.active_region = rec.target
                else:
                    self.s.homes[rec.scope] = rec.target
                self.s.bootstrap[bootstrap_scope] = BootstrapView(
                    rec.epoch, rec.target, bootstrap_order(list(self.cfg.regions), rec.target)
                )
            elif "bootstrap-flip" in result.phase_seconds:
                self.s.bootstrap[bootstrap_scope] = BootstrapView(
                    rec.epoch + 1, rec.source, bootstrap_order(list(self.cfg.regions), rec.source)
                )
            for region in result.unreachable_regions:
                if bootstrap_scope not in self.s.catch_up.setdefault(region, []):
                    self.s.catch_up[region].append(bootstrap_scope)
            self._decide(
                "note",
                f"{rec.cutover_id} {result.result}: {result.confirmed}/{result.devices_total} "
                f"devices confirmed in {rec.target}, {len(result.stragglers)} stragglers",
            )
            self._record_metrics(rec, result)
        rec.finished_at = workflow.now()
        self.s.last_cutover_end = rec.finished_at
        self.s.history = [*self.s.history, rec][-KEEP_HISTORY:]
        self.s.in_flight = None
        self._report()

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

    # ---- health ----

    async def _on_health(self, change: RegionHealthChange) -> None:
        if change.region not in self.cfg.regions:
            self._decide(
                "refused", f"health report for unknown region {change.region!r} ignored", rule="input"
            )
            return
        view = self.s.health.setdefault(change.region, RegionView())
        view.state, view.score, view.reasons = change.state, change.score, list(change.reasons)
        view.since = change.at or workflow.now()
        if self._child is not None:
            await self._child.signal("region_health", {change.region: change.state})
        if change.state == "Healthy" and self.s.catch_up.get(change.region):
            await self._catch_up(change.region)
        self._evaluate_failover()
        self._report()

    def _failover_context(self) -> FailoverContext:
        s = self.s
        return FailoverContext(
            active=s.active_region,
            home=self.cfg.primary,
            regions={r: RegionStatus(v.state, v.since) for r, v in s.health.items()},
            standby_order=self.cfg.standbys(),
            automatic_cutovers=list(s.automatic_at),
            last_cutover_end=s.last_cutover_end,
            cutover_running=self._child is not None or self._auto is not None,
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

    async def _catch_up(self, region: str) -> None:
        """Copy the newest bootstrap answers into a region that missed writes while it was down."""
        try:
            result = await workflow.execute_activity(
                "catch_up_bootstrap",
                {"deployment": self.cfg.name, "region": region},
                result_type=dict,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except Exception as e:  # stays pending; retried on the next healthy report
            self._decide("note", f"{region}: bootstrap catch-up failed, will retry: {e}")
            return
        missed = self.s.catch_up.pop(region, [])
        self._decide(
            "catch-up",
            f"{region}: bootstrap caught up ({', '.join(missed)}; "
            f"{len(result.get('written', []))} records written)",
        )

    # ---- reporting ----

    def _decide(self, kind: str, reason: str, rule: str = "", target: str | None = None) -> None:
        self.s.decisions = [*self.s.decisions, Decision(workflow.now(), kind, reason, rule, target)][
            -KEEP_DECISIONS:
        ]
        workflow.logger.info("%s: %s", kind, reason)

    def _report(self) -> None:
        s = self.s
        health = ", ".join(f"{r} {v.state}" for r, v in s.health.items())
        lines = [
            f"**{self.cfg.name}** ({self.cfg.mode}): active **{s.active_region}**, epoch {s.epoch}",
            f"health: {health}",
        ]
        if s.in_flight:
            lines.append(
                f"cutover in flight: {s.in_flight.cutover_id} ({s.in_flight.source} → {s.in_flight.target})"
            )
        if s.failback_offer:
            lines.append(f"offer: {s.failback_offer}")
        if s.catch_up and any(s.catch_up.values()):
            lines.append(
                "to catch up: " + ", ".join(f"{r}: {', '.join(v)}" for r, v in s.catch_up.items() if v)
            )
        lines += [f"- {d.at:%H:%M:%S} {d.kind}: {d.reason}" for d in s.decisions[-5:]]
        workflow.set_current_details("\n".join(lines))
