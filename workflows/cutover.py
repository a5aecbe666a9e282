"""CutoverWorkflow: move a scope of devices from one region to another, as a saga.

planned:   preflight > shadow sync > bootstrap flip > canary and growing waves (job, verify,
           approval) > stragglers > second shadow sync > routing flip > finalize
emergency: bootstrap flip (and routing) in the healthy regions > verify devices arriving on their
           own > finalize, recording what to reconcile when the source returns. Nothing waits on
           the dead region.
a region lost mid-way (the deployment forwards every health change; each step names the regions
           it needs): the source of a planned cutover fails after its flip started > the cutover
           continues as an emergency one; before the flip > it ends and hands over to automatic
           failover; the target fails > roll back to the source.
abort:     cancel the running job, roll the flips back under a new epoch, carry the target's
           shadows back and move migrated devices back, when the source is Healthy; otherwise stop
           and keep devices where they are served (pointing them at a region that is not known
           healthy could take the fleet down). A flip, once started, counts as applied.

The runbook runs as one asyncio task; an abort, or the loss of a region the step it is at needs,
cancels it (the step cancels its activity or child, waits for it to end, and raises why), and the
rollback then runs as a task of its own that nothing but a region loss stops
(workflows/cutover_actions.py, workflows/cutover_rollback.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow

from workflows.cutover_actions import AbortRequested, RegionLost
from workflows.cutover_rollback import CutoverRollback
from workflows.cutover_waves import CutoverWaves

with workflow.unsafe.imports_passed_through():
    from activities.jobs import CountGroupInput, JobActivities
    from activities.registry import RegistryActivities, ReplicateScopeInput
    from core.models import CutoverProgress, CutoverResultKind, OperatorAction
    from core.temporal import SA_PHASE
    from workflows.cutover_plan import plan
    from workflows.cutover_steps import CutoverInput
    from workflows.versions import (
        ABORT_CANCELS_SHADOW_SYNC,
        CANCEL_STOPS_THE_STEP,
        EMERGENCY_FLIPS_A_LIVE_SOURCE,
    )

Result = TypeVar("Result")


class HandOver(Exception):
    """The source failed before anything pointed devices at the target: end, automatic failover decides."""


@workflow.defn(name="CutoverWorkflow")
class CutoverWorkflow(CutoverRollback, CutoverWaves):
    @workflow.init
    def __init__(self, inp: CutoverInput) -> None:
        # state exists before `run`, so a signal delivered with the first task finds it
        self._inp = inp
        self.p = CutoverProgress(
            cutover_id=inp.cutover_id,
            deployment=inp.deployment,
            mode=inp.mode,
            source=inp.source,
            target=inp.target,
            scope=inp.scope,
            epoch=inp.epoch,
            primary_after=inp.source,
        )
        self._approved = 0
        self._paused = False
        self._abort = None
        self._hold = None
        self._compensating = False
        self._health = dict(inp.health)
        self._jobs_running = []
        self._flip_started = False
        self._flips_abortable = None
        self._syncs_back = 0
        self._step = None
        self._stop = None
        self._left_running = False

    # ---- operator controls (Temporal UI, CLI, `temporal workflow signal`) ----

    @workflow.signal(description="Let the cutover continue past an approval gate.")
    def approve(self, action: OperatorAction | None = None) -> None:
        self._approved += 1
        self._note(f"approved by {(action or OperatorAction()).by or 'operator'}")

    @workflow.signal(description="Hold before the next wave (the running wave finishes).")
    def pause(self, action: OperatorAction | None = None) -> None:
        self._paused = True
        self._note(f"paused by {(action or OperatorAction()).by or 'operator'}")

    @workflow.signal(description="Continue after a pause.")
    def resume(self, action: OperatorAction | None = None) -> None:
        self._paused = False
        self._note(f"resumed by {(action or OperatorAction()).by or 'operator'}")

    @workflow.signal(
        description="Stop and roll back: cancel jobs, flip back under a new epoch, move devices back."
    )
    def abort(self, action: OperatorAction | None = None) -> None:
        if self._abort is None:
            self._abort = action or OperatorAction()
            self._note(f"abort requested by {self._abort.by or 'operator'}: {self._abort.reason}")

    @workflow.signal(name="region_health", description="Region health as the deployment sees it.")
    def region_health(self, health: dict[str, str]) -> None:
        self._health.update(health)

    @workflow.update(description="approve | pause | resume | abort, answering with the progress.")
    def control(self, command: str, action: OperatorAction | None = None) -> CutoverProgress:
        {"approve": self.approve, "pause": self.pause, "resume": self.resume, "abort": self.abort}[command](
            action
        )
        return self.p

    @control.validator
    def _validate_control(self, command: str, action: OperatorAction | None = None) -> None:
        if command not in ("approve", "pause", "resume", "abort"):
            raise ValueError(f"unknown command {command!r}: use approve, pause, resume or abort")
        if self.p.result is not None:
            raise ValueError("this cutover has finished")
        if command == "approve" and not (self.p.waiting_for or "").startswith("approval"):
            raise ValueError(f"nothing waits for approval (phase {self.p.phase})")
        if command == "resume" and not self._paused:
            raise ValueError("the cutover is not paused")

    @workflow.query(description="Phase, waves, devices confirmed/failed/pending, timings.")
    def progress(self) -> CutoverProgress:
        return self.p

    # ---- the runbook ----

    @workflow.run
    async def run(self, inp: CutoverInput) -> CutoverProgress:
        self.p.started_at = workflow.now()
        try:
            await self._stoppable(self._runbook(inp))
            self.p.result = self._verdict()
        except HandOver as e:
            self.p.result, self.p.error, self.p.handed_over = "aborted", str(e), True
            self._note(str(e))
        except (AbortRequested, asyncio.CancelledError) as e:
            await self._rollback(inp, "cancelled" if isinstance(e, asyncio.CancelledError) else "aborted")
            self.p.result = "aborted"
        except RegionLost as lost:  # the target (or, in an emergency, the last region left) failed
            self.p.error = f"{lost}: rolled back"
            await self._rollback(inp, str(lost))
            self.p.result = "aborted"
        except Exception as e:  # compensate, then let the failure show in the UI
            self.p.error = str(e)
            await self._rollback(inp, f"failed: {e}")
            self.p.result = "failed"
            self._report()
            raise
        finally:
            self.p.finished_at = workflow.now()
            self.p.waiting_for = None
        self._report()
        return self.p

    async def _runbook(self, inp: CutoverInput) -> None:
        try:
            if inp.mode == "planned":
                await self._planned(inp)
            else:
                await self._emergency(inp)
        except RegionLost as lost:
            if lost.region != inp.source or inp.mode != "planned":
                raise
            await self._take_over(inp, lost)
        with self._phase("finalize"):
            await self._finalize(inp)

    async def _rollback(self, inp: CutoverInput, why: str) -> None:
        self._compensating = True  # before the task starts: a cancel arriving now must not stop it
        await self._stoppable(self._compensate(inp, why))

    async def _stoppable(self, work: Coroutine[Any, Any, Result]) -> Result:
        """Run `work` (the runbook, the rollback) as a task, cancelled when the step it is at must
        stop (CutoverActions._why_stop). A cancel of this workflow stops the runbook, never the
        rollback, and is raised once the runbook ended: no step swallows it."""
        task = asyncio.create_task(work)
        cancelled = False
        while not task.done():
            try:
                await workflow.wait_condition(
                    lambda: task.done() or (self._stop is None and self._why_stop() is not None)
                )
            except asyncio.CancelledError:
                if not workflow.patched(CANCEL_STOPS_THE_STEP):
                    self._left_running = True  # as before: the rollback starts at once, or stops
                    task.cancel()
                    raise
                if self._compensating:
                    self._note("cancel requested during the rollback: the rollback runs to its end")
                elif not cancelled and self._stop is None:
                    task.cancel()
                cancelled = True
                continue
            if not task.done():
                self._stop_step(task)
        stop, self._stop = self._stop, None
        if cancelled and not self._compensating:
            raise asyncio.CancelledError()
        if stop is not None and task.cancelled():  # stopped between steps: raise why
            raise stop
        return task.result()

    def _stop_step(self, task: asyncio.Task[Any]) -> None:
        stop, step = self._why_stop(), self._step
        if step is not None and step.abortable is None and isinstance(stop, AbortRequested):
            # before ABORT_CANCELS_SHADOW_SYNC an abort waited for the running shadow sync to end
            step.abortable = workflow.patched(ABORT_CANCELS_SHADOW_SYNC)
            if not step.abortable:
                return
        self._stop = stop
        task.cancel()

    async def _planned(self, inp: CutoverInput) -> None:
        with self._phase("preflight"):
            await self._preflight(inp)
        with self._phase("shadow-sync"):
            await self._shadow_sync(inp, "before the flip")
        with self._phase("bootstrap-flip"):
            await self._flip(inp, inp.epoch, inp.target, skip=[])
        with self._phase("waves"):
            await self._waves(inp)
        if self.p.stragglers:
            with self._phase("stragglers"):
                await self._retry_stragglers(inp)
        with self._phase("shadow-sync-2"):
            await self._shadow_sync(inp, "late writes after the flip")
        with self._phase("routing-flip"):
            await self._route(inp, inp.epoch, inp.target, skip=[])

    async def _emergency(self, inp: CutoverInput) -> None:
        dead = [r for r in inp.regions if self._lost([r])]
        if inp.source not in dead and not workflow.patched(EMERGENCY_FLIPS_A_LIVE_SOURCE):
            dead.insert(0, inp.source)
        with self._phase("bootstrap-flip"):
            await self._flip(inp, inp.epoch, inp.target, skip=dead)
        with self._phase("routing-flip"):
            await self._route(inp, inp.epoch, inp.target, skip=dead)
        with self._phase("verify"):
            await self._verify_scope(inp)
        self.p.reconcile_later.append(
            f"merge shadows {inp.source} > {inp.target} for {inp.scope} when {inp.source} is back "
            "(newer leaves win, see the shadow sync's merge rule)"
        )

    async def _take_over(self, inp: CutoverInput, lost: RegionLost) -> None:
        """The source failed mid-way: finish as an emergency cutover, without the dead region."""
        if not self._flip_started:
            raise HandOver(
                f"{lost}, before the bootstrap flip: nothing was moved; automatic failover decides"
            )
        self.p.takeover = f"{lost}: continued as an emergency cutover to {inp.target}"
        self.p.mode = "emergency"
        self._note(self.p.takeover)
        for region, job in self._jobs_running:
            self.p.reconcile_later.append(f"cancel job {job} in {region} when it is back")
        self._jobs_running = []
        dead = [inp.source]
        with self._phase("takeover-flip"):
            await self._flip(inp, inp.epoch, inp.target, skip=dead)
        with self._phase("takeover-routing"):
            await self._route(inp, inp.epoch, inp.target, skip=dead)
        with self._phase("verify"):
            await self._verify_scope(inp)
        self.p.reconcile_later.append(
            f"merge shadows {inp.source} > {inp.target} for {inp.scope} when {inp.source} is back"
        )

    def _verdict(self) -> CutoverResultKind:
        p = self.p
        if p.devices_total and not p.confirmed:
            p.error = p.error or f"none of the {p.devices_total} devices of {p.scope} confirmed in {p.target}"
            return "failed"
        return "succeeded-with-stragglers" if p.stragglers or p.confirmed < p.devices_total else "succeeded"

    # ---- phases ----

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """One phase of the runbook: it starts only if no abort came, is named in the UI and the
        search attributes, and timed."""
        self._checkpoint()
        self.p.phase = name
        workflow.upsert_search_attributes([SA_PHASE.value_set(name)])
        self._report()
        started = workflow.now()
        yield
        self.p.phase_seconds[name] = (workflow.now() - started).total_seconds()

    async def _preflight(self, inp: CutoverInput) -> None:
        """Target has the scope's CA, certificates, things and policies (replicated now if not)."""
        report = await self._act(
            RegistryActivities.replicate_scope,
            ReplicateScopeInput(
                deployment=inp.deployment, source=inp.source, target=inp.target, thing_group=inp.scope
            ),
            limit=timedelta(minutes=60),
            summary=f"replicate {inp.scope} to {inp.target}",
            needs=[inp.source, inp.target],
            heartbeat=120,
        )
        applied = sum(report.applied.values())
        self._note(f"preflight: scope replicated to {inp.target}: {applied} applied, drift {report.drift}")
        self.p.devices_total = await self._act(
            JobActivities.count_group,
            CountGroupInput(deployment=inp.deployment, region=inp.source, group=inp.scope),
            limit=timedelta(minutes=10),
            summary=f"count {inp.scope}",
            needs=[inp.source],
            heartbeat=60,
        )
        self.p.plan = plan(self.p.devices_total, inp.policy, inp.quotas)
        self._note(f"plan: {self.p.plan.brief()}")
