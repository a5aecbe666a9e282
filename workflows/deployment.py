"""DeploymentWorkflow: one long-lived entity per deployment (ID `deployment-<name>`).

It holds the active region (or each scope's home in active/active), the epoch that fences every
flip, what each region's health monitor and the registry replication last said, the cutover in
flight and the history. Cutover requests arrive as updates whose validator refuses a bad request
before anything is recorded, and are checked again under the lock (several may pass the validator
at once); health changes arrive as signals and may start an automatic emergency cutover under the
safety rules. The main loop watches the running cutover, starts automatic failovers, and catches up
regions that missed a flip until every region agrees. Every decision, taken or refused, is kept
with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.bootstrap import (
        BootstrapActivities,
        CatchUpBootstrapInput,
        FlipBootstrapInput,
        ReadFencesInput,
    )
    from activities.peers import AwaitCutoverInput, PeerActivities, ReadHealthInput
    from core import workflow_ids
    from core.config import DeploymentConfig
    from core.models import (
        CutoverProgress,
        CutoverRequest,
        CutoverStarted,
        RegionHealthChange,
        ReplicaReport,
    )
    from core.temporal import SA_DEPLOYMENT, SA_MODE, SA_PHASE, SA_SOURCE, SA_TARGET
    from core.workflow_ids import health_id
    from workflows.cutover import CutoverWorkflow
    from workflows.cutover_steps import CutoverInput, bootstrap_order
    from workflows.failover_policy import FailoverContext, RegionStatus, decide_failover, failback_offer
    from workflows.versions import (
        ADOPT_HIGHEST_EPOCH,
        ASK_HEALTH_AT_START,
        CONTINUE_ONLY_IDLE,
        LOOP_WATCHES_CUTOVER,
        REATTACH_CUTOVER,
        RECHECK_UNDER_LOCK,
    )

KEEP_HISTORY = 20
KEEP_DECISIONS = 50
RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30), non_retryable_error_types=["StaleEpoch"])
CATCH_UP_BACKOFF_FIRST = timedelta(seconds=20)  # then doubling, up to the max
CATCH_UP_BACKOFF_MAX = timedelta(minutes=15)


@dataclass
class RegionView:
    state: str = "Unknown"  # Healthy | Degraded | Unhealthy | Unknown (no monitor report yet)
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


@workflow.defn(name="DeploymentWorkflow")
class DeploymentWorkflow:
    @workflow.init
    def __init__(self, inp: DeploymentInput) -> None:
        # state exists before `run`, so a signal delivered with the first task finds it
        self.cfg: DeploymentConfig = inp.config
        self.s: DeploymentState = inp.state or DeploymentState(active_region=inp.config.primary)
        for r in self.cfg.regions:
            self.s.health.setdefault(r, RegionView())
        self._child: workflow.ChildWorkflowHandle | workflow.ExternalWorkflowHandle | None = None
        self._outcome: asyncio.Task | None = None  # resolves to the running cutover's CutoverProgress
        self._catching_up: asyncio.Task | None = None
        self._watch: bool | None = None  # LOOP_WATCHES_CUTOVER, decided where the paths part
        self._auto: CutoverRequest | None = None
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
        if change.state != "Unhealthy" and self.s.catch_up.get(change.region):
            if self._watching():
                self.s.catch_up_after.pop(change.region, None)  # the main loop tries again now
            elif change.state == "Healthy":
                await self._catch_up_inline(change.region)
        self._evaluate_failover()
        self._report()

    @workflow.signal(
        name="replica_status",
        description="Registry replication reports whether a region holds a complete copy of a source.",
    )
    def replica_status(self, report: ReplicaReport) -> None:
        if report.target not in self.cfg.regions:
            self._decide("refused", f"replica report for unknown region {report.target!r}", rule="input")
            return
        key = f"{report.source}>{report.target}"
        before = self.s.replicas.get(key)
        self.s.replicas[key] = ReplicaView(
            report.source,
            report.target,
            report.complete,
            report.reason,
            report.things,
            report.fleet_devices,
            report.at or workflow.now(),
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
                    workflow.continue_as_new(DeploymentInput(self.cfg, self.s))

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

    async def _initialize(self) -> None:
        """Adopt the highest epoch of every fence in every region, or write the first answer."""
        if not workflow.patched(ADOPT_HIGHEST_EPOCH):
            return await self._initialize_from_default_scope()
        while True:  # no epoch, no cutover: keep asking until a region answers
            try:
                fences = await workflow.execute_activity_method(
                    BootstrapActivities.read_fences,
                    ReadFencesInput(self.cfg.name),
                    start_to_close_timeout=timedelta(minutes=2),
                    heartbeat_timeout=timedelta(seconds=30),
                    retry_policy=RETRY,
                )
                break
            except ActivityError as e:  # e.g. access denied: shown in status until it is fixed
                self._decide("note", f"cannot read the fences: {e.cause or e}; trying again in a minute")
                self._report()
                await workflow.sleep(timedelta(minutes=1))
        for region in [*fences.unreachable, *fences.lagging]:
            self._missed(region, "default")
        self.s.epoch = fences.epoch
        for scope, rec in fences.records.items():
            if scope.startswith("routing:") or rec.cleared:
                continue
            view = BootstrapView(rec.epoch, rec.primary, rec.order or [rec.primary])
            self.s.bootstrap[scope] = view
            if scope == "default":
                self.s.active_region = view.primary
        for scope, view in self.s.bootstrap.items():
            if scope != "default" and view.primary != self.s.active_region:
                self.s.homes[scope.removeprefix("group:")] = view.primary
        if "default" in self.s.bootstrap:
            self._decide(
                "note",
                f"adopted epoch {self.s.epoch} (the highest fence), active region {self.s.active_region}",
            )
        else:
            self.s.epoch += 1
            first = BootstrapView(
                self.s.epoch,
                self.s.active_region,
                bootstrap_order(self.cfg.region_names, self.s.active_region),
            )
            await self._write_bootstrap("default", first)
            self._decide("note", f"first bootstrap answer written: {first.primary} (epoch {first.epoch})")
        self.s.initialized = True

    async def _initialize_from_default_scope(self) -> None:
        """Before ADOPT_HIGHEST_EPOCH: the epoch of the `default` scope only."""
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
                self._missed(region, "default")
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
                    1, self.s.active_region, bootstrap_order(self.cfg.region_names, self.s.active_region)
                ),
            )
            self._decide("note", f"first bootstrap answer written: {self.s.active_region} (epoch 1)")
        self.s.initialized = True

    async def _write_bootstrap(self, scope: str, view: BootstrapView) -> None:
        result = await workflow.execute_activity_method(
            BootstrapActivities.flip_bootstrap,
            FlipBootstrapInput(
                deployment=self.cfg.name,
                epoch=view.epoch,
                primary=view.primary,
                order=view.order,
                scope=scope,
                reason="deployment",
            ),
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RETRY,
        )
        self.s.bootstrap[scope] = view
        for region in result.unreachable:
            self._missed(region, scope)

    async def _reattach(self) -> None:
        """A cutover in flight inherited without its handle (continued-as-new mid-cutover by an
        older version): wait for its outcome through an activity, so no later cutover is refused."""
        rec = self.s.in_flight
        if rec is None or self._outcome is not None or not workflow.patched(REATTACH_CUTOVER):
            return
        self._child = workflow.get_external_workflow_handle(rec.cutover_id)
        self._outcome = workflow.start_activity_method(
            PeerActivities.await_cutover,
            AwaitCutoverInput(self.cfg.name, rec.cutover_id),
            start_to_close_timeout=timedelta(days=7),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=RETRY,
        )
        self._decide("note", f"waiting for {rec.cutover_id}, started by an earlier run of this entity")

    async def _ask_health(self) -> None:
        """Monitors signal changes only: after a restart, ask them what they last reported."""
        unknown = [r for r, v in self.s.health.items() if v.state == "Unknown"]
        if not unknown or not workflow.patched(ASK_HEALTH_AT_START):
            return
        try:
            readings = await workflow.execute_activity_method(
                PeerActivities.read_region_health,
                ReadHealthInput(self.cfg.name, {r: health_id(self.cfg.name, r) for r in unknown}),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
        except ActivityError as e:  # the monitors will tell when they next change
            self._decide("note", f"could not read the health monitors: {e.cause or e}")
            return
        readings.changes = [c for c in readings.changes if self.s.health[c.region].state == "Unknown"]
        for change in readings.changes:  # a signal that arrived meanwhile is newer
            self._adopt_health(change)
        if readings.changes:
            self._decide("note", "health read from the monitors: " + ", ".join(
                f"{c.region} {c.state}" for c in readings.changes
            ))  # fmt: skip

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
        if self.s.in_flight is not None or self._outcome is not None:
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
            known_devices=s.scope_sizes.get(scope, 0),
        )
        try:
            self._child = await workflow.start_child_workflow(
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
                        SA_DEPLOYMENT.value_set(cfg.name),
                        SA_SOURCE.value_set(source),
                        SA_TARGET.value_set(req.target),
                        SA_MODE.value_set(req.mode),
                        SA_PHASE.value_set("starting"),
                    ]
                ),
                parent_close_policy=ParentClosePolicy.ABANDON,
            )
        except BaseException as e:
            s.in_flight = None
            self._decide("note", f"{cutover_id} could not start: {e}")
            raise
        self._outcome = self._child
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

    async def _finish_cutover(self) -> None:
        """Record the cutover's outcome: where its scope's devices are told to go now, and who missed it."""
        rec = self.s.in_flight
        try:
            result: CutoverProgress | None = await self._outcome
        except (ChildWorkflowError, ActivityError) as e:
            rec.result = "failed"
            self._decide("note", f"{rec.cutover_id} failed: {e.cause or e}")
            result = None
        self._child = self._outcome = None
        if result is not None:
            rec.result, rec.confirmed, rec.devices = result.result, result.confirmed, result.devices_total
            rec.stragglers = len(result.stragglers)
            rec.note = result.takeover or result.error or ""
            bootstrap_scope = "default" if rec.scope == self.cfg.fleet.thing_group else f"group:{rec.scope}"
            primary, epoch = self._outcome_of(rec, result, bootstrap_scope)
            if bootstrap_scope == "default":
                self.s.active_region = primary
            elif primary != self.s.active_region or rec.scope in self.s.homes:
                self.s.homes[rec.scope] = primary
            if epoch:
                self.s.bootstrap[bootstrap_scope] = BootstrapView(
                    epoch, primary, bootstrap_order(self.cfg.region_names, primary)
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
        rec.finished_at = workflow.now()
        if result is None or not result.handed_over:  # a cutover that changed nothing starts no cooldown
            self.s.last_cutover_end = rec.finished_at
        self.s.history = [*self.s.history, rec][-KEEP_HISTORY:]
        self.s.in_flight = None
        self._report()

    def _outcome_of(self, rec: CutoverRecord, result: CutoverProgress, scope: str) -> tuple[str, int]:
        """(primary, epoch) the scope's bootstrap answer names now; epoch 0 when unchanged."""
        if result.primary_after:  # the cutover says what it left in place
            return result.primary_after, result.epoch_after
        moved = result.result in ("succeeded", "succeeded-with-stragglers") or (
            result.result == "aborted" and self.s.health.get(rec.source, RegionView()).state == "Unhealthy"
        )
        if moved:
            return rec.target, rec.epoch
        if "bootstrap-flip" in result.phase_seconds:
            return rec.source, rec.epoch + 1
        current = self.s.bootstrap.get(scope)
        return self._scope_home(None if scope == "default" else rec.scope), current.epoch if current else 0

    async def _tell_cutover(self, change: RegionHealthChange) -> None:
        """Forward a health change to the running cutover (it acts when a region it needs is lost);
        a cutover that just ended cannot take it, which is harmless."""
        rec = self.s.in_flight
        try:
            await self._child.signal(CutoverWorkflow.region_health, {change.region: change.state})
        except FailureError as e:
            workflow.logger.info("health change not delivered to the cutover: %s", e)
            return
        if rec and change.state == "Unhealthy" and change.region in (rec.source, rec.target):
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

    # ---- health and catch-up ----

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
            regions={r: RegionStatus(v.state, v.since, self._incomplete(r)) for r, v in s.health.items()},
            standby_order=self.cfg.standbys(),
            automatic_cutovers=list(s.automatic_at),
            last_cutover_end=s.last_cutover_end,
            cutover_running=self._outcome is not None or self._auto is not None,
            cooldown_minutes=self.cfg.cutover.cooldown_minutes,
        )

    def _incomplete(self, region: str) -> str:
        """Why `region`'s copy of the registry is known incomplete ("" when it is not known so)."""
        return "; ".join(
            f"from {v.source}: {v.reason or 'incomplete'}"
            for v in self.s.replicas.values()
            if v.target == region and not v.complete
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

    def _missed(self, region: str, what: str) -> None:
        if what not in self.s.catch_up.setdefault(region, []):
            self.s.catch_up[region].append(what)

    def _catch_up_due(self) -> bool:
        if self._catching_up is not None and not self._catching_up.done():
            return False
        now = workflow.now()
        return any(
            missed
            and self.s.health.get(r, RegionView()).state != "Unhealthy"
            and self.s.catch_up_after.get(r, now) <= now
            for r, missed in self.s.catch_up.items()
        )

    async def _catch_up(self) -> None:
        """Copy the newest bootstrap and routing records into every region that missed some, until
        every region agrees; a failed try is retried with a growing pause (shown in `status`)."""
        now = workflow.now()
        for region, missed in list(self.s.catch_up.items()):
            if not missed or self.s.health.get(region, RegionView()).state == "Unhealthy":
                continue
            if self.s.catch_up_after.get(region, now) > now:
                continue
            pending = list(missed)
            try:
                result = await workflow.execute_activity_method(
                    BootstrapActivities.catch_up_bootstrap,
                    CatchUpBootstrapInput(self.cfg.name, region),
                    start_to_close_timeout=timedelta(minutes=2),
                    heartbeat_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=2),
                )
            except ActivityError as e:
                failures = self.s.catch_up_failures.get(region, 0) + 1
                self.s.catch_up_failures[region] = failures
                pause = min(CATCH_UP_BACKOFF_MAX, CATCH_UP_BACKOFF_FIRST * 2 ** min(failures - 1, 6))
                self.s.catch_up_after[region] = workflow.now() + pause
                self._decide("note", f"{region}: catch-up failed ({e.cause or e}); next try in {pause}")
                continue
            left = [x for x in self.s.catch_up.get(region, []) if x not in pending]  # missed meanwhile
            if left:
                self.s.catch_up[region] = left
            else:
                self.s.catch_up.pop(region, None)
            self.s.catch_up_failures.pop(region, None)
            self.s.catch_up_after.pop(region, None)
            self._decide(
                "catch-up",
                f"{region}: caught up ({', '.join(pending)}; {len(result.written)} records written)",
            )
        self._report()

    async def _catch_up_inline(self, region: str) -> None:
        """Before LOOP_WATCHES_CUTOVER: the catch-up ran in the health signal handler."""
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
