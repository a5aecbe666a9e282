"""RegistryReplicationWorkflow: one per deployment, keeps every region's registry a copy of its sources.

Two loops run side by side: the event stream (drain every region's registry-event queue, apply,
dead-letter what cannot be applied) for low lag, and anti-entropy (a full paged reconcile of every
(source, target) pair) on a schedule and on demand. The workflow continues-as-new with its state
after a bounded number of drains, so its history stays small however long it runs.

It tells the DeploymentWorkflow whether each target holds a complete copy of its source
(`ReplicaReport`, signal `replica_status`), so automatic failover never moves devices into a region
that cannot authenticate them: at the start, after every full reconcile, and when the event
stream falls behind (dead letters, lag over `max_lag_seconds`) or recovers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.registry import (
        DeadLetter,
        DrainInput,
        DrainResult,
        ReadyInput,
        ReconcileInput,
        ReconcileResult,
        RegionPair,
        RegistryActivities,
    )
    from core.models import ReplicaReport
    from core.temporal import SA_DEPLOYMENT, SA_PHASE
    from workflows.deployment import DeploymentWorkflow
    from workflows.versions import REPLICA_REPORTS

DEAD_LETTERS_KEPT = 20
FIRST_RECONCILE = "first full reconcile still running"
DEAD_LETTERED = (
    "registry events were dead-lettered since the last full reconcile "
    "(`starter.py replicate dead-letters`; the next full reconcile repairs what they missed)"
)


@dataclass
class ReplicationState:
    """Everything the workflow knows; carried across continue-as-new."""

    ca_ids: dict[str, str] = field(default_factory=dict)
    pairs: list[RegionPair] = field(default_factory=list)
    last_full_reconcile: datetime | None = None
    reconciles: int = 0
    reconcile_requested: bool = False
    reconcile_running: bool = False
    last_results: list[ReconcileResult] = field(default_factory=list)
    drift: dict[str, int] = field(default_factory=dict)  # kind -> differences the last reconcile found
    lag_seconds: dict[str, float] = field(default_factory=dict)  # target region -> event lag
    events_received: int = 0
    events_applied: int = 0
    jitr_registered: int = 0
    dead_letter_count: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)  # the latest, newest last
    last_error: str = ""
    runs: int = 0
    dead_letters_by_region: dict[str, int] = field(default_factory=dict)  # queue region -> dead letters
    dead_letters_at_reconcile: dict[str, int] = field(default_factory=dict)  # the same, at its start
    dead_letter_queue_depth: dict[str, int] = field(default_factory=dict)  # region -> waiting in its DLQ
    reconciled: dict[str, str] = field(default_factory=dict)  # "src>tgt" -> "" clean, else why not
    replicas: list[ReplicaReport] = field(default_factory=list)  # the latest report per pair
    replica_unsent: bool = False  # the DeploymentWorkflow did not take the last one: all go again
    replica_signal_error: str = ""


@dataclass
class ReplicationInput:
    deployment: str
    reconcile_interval_seconds: float = 900
    drain_seconds: float = 5
    reconcile_on_start: bool = True
    concurrency: int = 16
    page_size: int = 250
    heartbeat_timeout_seconds: float = 60
    drains_per_run: int = 300  # continue-as-new after this many drains
    state: ReplicationState | None = None
    deployment_workflow_id: str = ""  # where replica reports go ("": nowhere)
    max_lag_seconds: float = 300  # event lag over which a target's copy counts as incomplete


@dataclass
class ReconcileNowInput:
    wait: bool = True  # return after the reconcile finished (False: as soon as it is queued)


@dataclass
class ReconcileNowResult:
    reconciles: int
    drift: dict[str, int] = field(default_factory=dict)
    results: list[ReconcileResult] = field(default_factory=list)
    queued_only: bool = False


@workflow.defn
class RegistryReplicationWorkflow:
    @workflow.init
    def __init__(self, inp: ReplicationInput) -> None:
        # State is set here, not in run(): an update delivered with the first task runs before run().
        self.inp = inp
        self.state = inp.state or ReplicationState()
        self._stopping = False
        self._reporting = False
        self._report_lock = asyncio.Lock()

    @workflow.run
    async def run(self, inp: ReplicationInput) -> None:
        self.state.runs += 1
        self.state.reconcile_running = False
        workflow.upsert_search_attributes([SA_DEPLOYMENT.value_set(inp.deployment)])
        if not self.state.pairs:
            await self._prepare()
        self._reporting = bool(inp.deployment_workflow_id) and workflow.patched(REPLICA_REPORTS)
        await self._report()
        if inp.reconcile_on_start and self.state.last_full_reconcile is None:
            self.state.reconcile_requested = True
        reconciling = asyncio.create_task(self._reconcile_loop())
        drains = 0
        while drains < inp.drains_per_run and not workflow.info().is_continue_as_new_suggested():
            await self._drain()
            await self._report()
            drains += 1
        self._stopping = True
        await reconciling
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(replace(inp, state=self.state))

    # ------------------------------------------------------------------ handlers
    @workflow.query(description="Lag, drift per kind, last full reconcile, dead letters")
    def status(self) -> ReplicationState:
        return self.state

    @workflow.update(description="Run a full reconcile now (after the running one, if any)")
    async def reconcile_now(self, req: ReconcileNowInput) -> ReconcileNowResult:
        wanted = self.state.reconciles + (2 if self.state.reconcile_running else 1)
        self.state.reconcile_requested = True
        if req.wait and not self._stopping:
            await workflow.wait_condition(lambda: self.state.reconciles >= wanted)
            return ReconcileNowResult(self.state.reconciles, self.state.drift, self.state.last_results)
        return ReconcileNowResult(self.state.reconciles, queued_only=True)

    # ------------------------------------------------------------------ phases
    async def _prepare(self) -> None:
        ready = await workflow.execute_activity_method(
            RegistryActivities.ensure_replication_ready,
            ReadyInput(deployment=self._deployment),
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
        )
        self.state.ca_ids, self.state.pairs = ready.ca_ids, ready.pairs
        self._show()

    async def _drain(self) -> None:
        try:
            res: DrainResult = await workflow.execute_activity_method(
                RegistryActivities.drain_registry_events,
                DrainInput(deployment=self._deployment, max_seconds=self.inp.drain_seconds),
                start_to_close_timeout=timedelta(seconds=self.inp.drain_seconds + 120),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3, maximum_interval=timedelta(seconds=30)),
            )
        except ActivityError as e:
            self.state.last_error = f"event drain: {e.cause or e}"[:500]
            await workflow.sleep(timedelta(seconds=10))
            return
        s = self.state
        s.events_received += res.received
        s.events_applied += res.applied
        s.jitr_registered += res.jitr
        s.dead_letter_count += res.dead_letter_count
        s.dead_letters = (s.dead_letters + res.dead_letters)[-DEAD_LETTERS_KEPT:]
        s.lag_seconds = res.lag_seconds
        for region, n in res.dead_letters_by_region.items():
            s.dead_letters_by_region[region] = s.dead_letters_by_region.get(region, 0) + n
        s.dead_letter_queue_depth.update(res.dead_letter_queue_depth)
        if res.received:
            self._show()

    async def _reconcile_loop(self) -> None:
        interval = timedelta(seconds=self.inp.reconcile_interval_seconds)
        while True:
            last = self.state.last_full_reconcile
            wait = (last + interval - workflow.now()) if last else interval
            try:
                await workflow.wait_condition(
                    lambda: self.state.reconcile_requested or self._stopping,
                    timeout=max(wait, timedelta(seconds=1)),
                )
            except TimeoutError:
                self.state.reconcile_requested = True
            if not self.state.reconcile_requested:
                return  # stopping, nothing asked for
            await self._reconcile()

    async def _reconcile(self) -> None:
        s = self.state
        s.reconcile_requested, s.reconcile_running = False, True
        workflow.upsert_search_attributes([SA_PHASE.value_set("reconciling")])
        self._show()
        pairs, dead_at_start = s.pairs, dict(s.dead_letters_by_region)
        outcomes = await asyncio.gather(*(self._reconcile_pair(p) for p in pairs), return_exceptions=True)
        results = [o for o in outcomes if isinstance(o, ReconcileResult)]
        errors = [
            f"{p.source}->{p.target}: {o}"
            for p, o in zip(pairs, outcomes, strict=True)
            if isinstance(o, BaseException)
        ]
        s.dead_letters_at_reconcile = dead_at_start  # what it started after, it has repaired
        for p, o in zip(pairs, outcomes, strict=True):
            s.reconciled[_key(p)] = _reconcile_outcome(o)
        drift: dict[str, int] = {}
        for r in results:
            for kind, n in r.drift.items():
                drift[kind] = drift.get(kind, 0) + n
        s.last_results, s.drift = results, drift
        s.last_error = "; ".join(errors)[:500]
        if not errors:
            s.last_full_reconcile = workflow.now()
        s.reconciles += 1
        s.reconcile_running = False
        workflow.upsert_search_attributes([SA_PHASE.value_set("streaming")])
        await self._report(after_reconcile=True)
        self._show()

    async def _reconcile_pair(self, pair: RegionPair) -> ReconcileResult:
        try:
            return await workflow.execute_activity_method(
                RegistryActivities.reconcile_registry,
                ReconcileInput(
                    deployment=self._deployment,
                    source=pair.source,
                    target=pair.target,
                    concurrency=self.inp.concurrency,
                    page_size=self.inp.page_size,
                ),
                start_to_close_timeout=timedelta(hours=12),
                heartbeat_timeout=timedelta(seconds=self.inp.heartbeat_timeout_seconds),
                retry_policy=RetryPolicy(maximum_attempts=10, maximum_interval=timedelta(minutes=2)),
            )
        except ActivityError as e:
            raise RuntimeError(str(e.cause or e)) from None

    async def _report(self, after_reconcile: bool = False) -> None:
        """Tell the DeploymentWorkflow about each pair's copy: after a full reconcile, else on a change."""
        if not self._reporting:
            return
        async with self._report_lock:
            s = self.state
            old = {(r.source, r.target): r for r in s.replicas}
            last = {(r.source, r.target): r for r in s.last_results}
            new = [
                self._replica(p, old.get((p.source, p.target)), last.get((p.source, p.target)))
                for p in s.pairs
            ]
            changed = [r for r in new if (r.complete, r.reason) != _verdict(old.get((r.source, r.target)))]
            if not after_reconcile and not changed:
                return
            s.replicas = new
            due = new if after_reconcile or s.replica_unsent else changed
            handle = workflow.get_external_workflow_handle(self.inp.deployment_workflow_id)
            try:
                for r in due:
                    await handle.signal(DeploymentWorkflow.replica_status, r)
                s.replica_unsent, s.replica_signal_error = False, ""
            except ApplicationError as e:  # e.g. the DeploymentWorkflow is not running: all go with the next
                s.replica_unsent, s.replica_signal_error = True, str(e)[:200]
                workflow.logger.warning("could not signal %s: %s", self.inp.deployment_workflow_id, e)
            self._show()

    def _replica(
        self, pair: RegionPair, previous: ReplicaReport | None, result: ReconcileResult | None
    ) -> ReplicaReport:
        s = self.state
        complete, reason = replica_verdict(
            s.reconciled.get(_key(pair)),
            _new_dead_letters(s, pair, {p.source for p in s.pairs}),
            s.lag_seconds.get(pair.target, 0.0),
            self.inp.max_lag_seconds,
        )
        things = result.things if result else previous.things if previous else 0
        fleet = result.fleet_devices if result else previous.fleet_devices if previous else 0
        return ReplicaReport(
            source=pair.source,
            target=pair.target,
            complete=complete,
            reason=reason,
            things=things,
            fleet_devices=fleet,
            at=workflow.now(),
        )

    # ------------------------------------------------------------------ helpers
    @property
    def _deployment(self) -> str:
        return self.inp.deployment

    def _show(self) -> None:
        s = self.state
        lag = max(s.lag_seconds.values(), default=0.0)
        drift = ", ".join(f"{k} {v}" for k, v in sorted(s.drift.items()) if v) or "none"
        lines = [
            f"**Registry replication** `{self._deployment}`: "
            + ("reconciling" if s.reconcile_running else "streaming events"),
            f"- pairs: {', '.join(f'{p.source} → {p.target}' for p in s.pairs) or '-'}",
            f"- last full reconcile: {s.last_full_reconcile.isoformat() if s.last_full_reconcile else 'never'}"
            f" (#{s.reconciles}); drift found: {drift}",
            f"- event lag: {lag:.1f}s; events applied {s.events_applied}, JITR {s.jitr_registered}",
            f"- dead letters: {s.dead_letter_count}"
            + (
                f" (latest: {s.dead_letters[-1].reason}: {s.dead_letters[-1].detail[:120]})"
                if s.dead_letters
                else ""
            ),
        ]
        for r in s.replicas:
            verdict = "complete" if r.complete else f"incomplete: {r.reason[:120]}"
            lines.append(f"- copy in {r.target} of {r.source}: {verdict}")
        if s.replica_unsent:
            lines.append(
                f"- deployment not told (retried with the next report): {s.replica_signal_error[:120]}"
            )
        if s.last_error:
            lines.append(f"- last error: {s.last_error[:200]}")
        workflow.set_current_details("\n".join(lines))


def replica_verdict(
    reconciled: str | None, new_dead_letters: int, lag_seconds: float, max_lag_seconds: float
) -> tuple[bool, str]:
    """Whether a target holds a complete copy, and if not why (a fixed text: sent again only on change).

    `reconciled` is None before the pair's first full reconcile finished, "" when the last one was
    clean, else what went wrong.
    """
    if reconciled is None:
        return False, FIRST_RECONCILE
    if reconciled:
        return False, reconciled
    if new_dead_letters:
        return False, DEAD_LETTERED
    if lag_seconds > max_lag_seconds:
        return False, f"the registry event stream is more than {max_lag_seconds:.0f}s behind"
    return True, ""


def _reconcile_outcome(outcome: ReconcileResult | BaseException) -> str:
    if isinstance(outcome, BaseException):
        return f"the last full reconcile did not finish: {outcome}"[:300]
    if outcome.failed:
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(outcome.failed.items()))
        return (
            f"the last full reconcile could not replicate {counts} (`starter.py replicate --now` lists them)"
        )
    return ""


def _new_dead_letters(s: ReplicationState, pair: RegionPair, sources: set[str]) -> int:
    """Dead letters since the last full reconcile started, of the pair's source or of a non-source (JITR)."""
    return sum(
        n - s.dead_letters_at_reconcile.get(region, 0)
        for region, n in s.dead_letters_by_region.items()
        if region == pair.source or region not in sources
    )


def _key(pair: RegionPair) -> str:
    return f"{pair.source}>{pair.target}"


def _verdict(report: ReplicaReport | None) -> tuple[bool, str] | None:
    return (report.complete, report.reason) if report else None
