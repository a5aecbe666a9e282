"""The cutover's steps, each an activity or a child the workflow can stop, and the state they share.

The runbook (workflows/cutover.py) and the rollback (workflows/cutover_rollback.py) run each as one
asyncio task. The step a task is at names the regions it needs and whether an abort stops it; the
workflow cancels the task when the step must stop, and the step then cancels its activity or child,
waits for it to end and raises why (AbortRequested, RegionLost). A flip is never stopped: it runs to
its end whatever arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.bootstrap import BootstrapActivities, FlipBootstrapInput
    from activities.jobs import CancelJobInput, JobActivities, WaitJobInput, WaveJobInput
    from activities.routing import FlipDnsInput, FlipRoutingInput, RoutingActivities
    from activities.verification import VerifyInput
    from core.models import UNHEALTHY, CutoverProgress, OperatorAction, WaveReport
    from workflows.cutover_render import details
    from workflows.cutover_steps import CutoverInput, bootstrap_order, job_document, job_id
    from workflows.shadow_sync import ShadowSyncInput, ShadowSyncWorkflow
    from workflows.versions import FLIPS_RUN_TO_THE_END, ROUTE_WHOLE_FLEET_ONLY

AWS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["StaleEpoch"],
)
EVENTS_KEPT = 12
HEARTBEAT = 30  # seconds: a worker that dies mid-step is noticed this fast

In = TypeVar("In")
Out = TypeVar("Out")


class AbortRequested(Exception):
    """An operator asked to abort: raised at a phase's start, or by the step the abort stopped."""


class RegionLost(Exception):
    """A region a step needs became Unhealthy (as the deployment's health monitors report it)."""

    def __init__(self, region: str, step: str):
        super().__init__(f"{region} became Unhealthy during {step}")
        self.region = region


@dataclass
class Step:
    """The step a task is at: what the workflow checks to decide whether to stop it."""

    name: str
    needs: list[str]
    abortable: bool | None  # None: decided when an abort arrives (a shadow sync, ABORT_CANCELS_SHADOW_SYNC)


class CutoverActions:
    """State and steps shared by the runbook and the rollback; CutoverWorkflow sets the state up."""

    _inp: CutoverInput
    p: CutoverProgress
    _approved: int
    _paused: bool
    _abort: OperatorAction | None
    _hold: str | None  # a wave below its success threshold waits for approval
    _compensating: bool  # the rollback runs: no abort stops a step any more
    _health: dict[str, str]
    _jobs_running: list[tuple[str, str]]  # (region, job id)
    _flip_started: bool  # a forward flip was scheduled: devices may be told the target
    _flips_abortable: bool | None  # FLIPS_RUN_TO_THE_END, decided at the first flip
    _syncs_back: int
    _step: Step | None  # the step the running task is at
    _stop: AbortRequested | RegionLost | None  # why the workflow cancelled the task
    _left_running: bool  # before CANCEL_STOPS_THE_STEP: a cancelled workflow left its step running

    # ---- steps ----

    async def _act(
        self,
        activity: Callable[[Any, In], Out],
        arg: In,
        *,
        limit: timedelta,
        summary: str,
        needs: Sequence[str] = (),
        heartbeat: float | None = None,
    ) -> Out:
        """Run an activity that needs the regions `needs`, as a step an abort or their loss stops (the
        activity sees the cancel at its next heartbeat)."""
        lost = self._lost(needs)
        if lost:
            raise RegionLost(lost, summary)
        return await self._during(summary, needs, self._start(activity, arg, limit, summary, heartbeat))

    def _start(
        self,
        activity: Callable[[Any, In], Out],
        arg: In,
        limit: timedelta,
        summary: str,
        heartbeat: float | None,
    ) -> workflow.ActivityHandle[Out]:
        return workflow.start_activity_method(
            activity,
            arg,
            start_to_close_timeout=limit,
            heartbeat_timeout=timedelta(seconds=heartbeat) if heartbeat else None,
            retry_policy=AWS_RETRY,
            summary=summary,
        )

    async def _during(
        self, name: str, needs: Sequence[str], work: asyncio.Task[Out], abortable: bool | None = True
    ) -> Out:
        """Await `work` (an activity, a child, a wait) as the step its task is at. When the workflow
        cancels the task, `work` is cancelled and awaited to its end, so nothing runs on behind the
        rollback; then the step raises why it was stopped."""
        self._step = Step(name=name, needs=list(needs), abortable=False if self._compensating else abortable)
        try:
            await workflow.wait([work])
        except asyncio.CancelledError:
            if self._stop is None and self._left_running:
                raise
            work.cancel()
            await workflow.wait([work])
            stop, self._stop = self._stop, None
            if stop is None:
                raise  # the workflow itself was cancelled
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled: the task goes on (a takeover, or the next rollback step)
            raise stop from None
        finally:
            self._step = None
        return work.result()

    def _why_stop(self) -> AbortRequested | RegionLost | None:
        """Why the step the running task is at must stop now, if it must (read in wait conditions)."""
        step = self._step
        if step is None:
            return None
        lost = self._lost(step.needs)
        if lost:
            return RegionLost(lost, step.name)
        if self._abort is not None and step.abortable is not False:
            return AbortRequested()
        return None

    async def _flip(self, inp: CutoverInput, epoch: int, primary: str, skip: list[str]) -> None:
        """Point the scope's bootstrap answer at `primary`. Once scheduled a flip counts as applied
        (it may land whatever happens to this workflow), and it runs to its end."""
        forward = primary == inp.target
        if forward:
            self._flip_started = True
            self.p.primary_after, self.p.epoch_after = primary, epoch
        if self._flips_abortable is None:
            self._flips_abortable = not workflow.patched(FLIPS_RUN_TO_THE_END)
        summary = f"bootstrap {inp.bootstrap_scope} > {primary} (epoch {epoch})"
        flip = self._start(
            BootstrapActivities.flip_bootstrap,
            FlipBootstrapInput(
                deployment=inp.deployment,
                epoch=epoch,
                primary=primary,
                order=bootstrap_order(inp.regions, primary),
                scope=inp.bootstrap_scope,
                reason=f"{inp.cutover_id}: {inp.reason}",
                regions=[r for r in inp.regions if r not in skip],
            ),
            timedelta(minutes=5),
            summary,
            HEARTBEAT,
        )
        cancelled = False
        if self._flips_abortable:
            result = await self._during(summary, (), flip)
        else:  # not a step: nothing stops it, a cancel of the workflow waits for its end
            while not flip.done():
                try:
                    await workflow.wait([flip])
                except asyncio.CancelledError:
                    if self._left_running:
                        raise
                    cancelled = True
            result = flip.result()
        self.p.primary_after, self.p.epoch_after = primary, epoch
        self._unreachable([*result.unreachable, *skip])
        self._note(
            f"bootstrap for {inp.bootstrap_scope} now points at {primary} (epoch {epoch})"
            + (f"; unreachable: {', '.join(result.unreachable + skip)}" if result.unreachable or skip else "")
        )
        if cancelled:
            raise asyncio.CancelledError()

    async def _route(self, inp: CutoverInput, epoch: int, region: str, skip: list[str]) -> None:
        """Telemetry routing (active/active) and DNS follow a whole-fleet cutover only."""
        if not (inp.active_active or inp.dns):
            return
        if inp.bootstrap_scope != "default" and workflow.patched(ROUTE_WHOLE_FLEET_ONLY):
            self._note(f"routing and DNS stay: {inp.scope} is part of the fleet, they follow the whole fleet")
            return
        alive = [r for r in inp.regions if r not in skip and not self._lost([r])]
        if inp.active_active:
            result = await self._act(
                RoutingActivities.flip_routing,
                FlipRoutingInput(
                    deployment=inp.deployment,
                    epoch=epoch,
                    application=inp.application,
                    region=region,
                    regions=alive if skip else None,
                ),
                limit=timedelta(minutes=5),
                summary=f"route {inp.application} telemetry to {region}",
                heartbeat=HEARTBEAT,
            )
            self._unreachable([*result.unreachable, *(r for r in inp.regions if r not in alive)])
        if inp.dns:
            await self._act(
                RoutingActivities.flip_dns,
                # Route 53 is global: reached through the first region that answers, dead ones skipped
                FlipDnsInput(deployment=inp.deployment, epoch=epoch, region=region, via_regions=alive),
                limit=timedelta(minutes=10),
                summary=f"DNS > {region}",
                heartbeat=HEARTBEAT,
            )

    async def _shadow_sync(self, inp: CutoverInput, why: str, back: bool = False) -> None:
        """One-shot sync of the scope's shadows (target > source when `back`), as a child workflow."""
        source, target = (inp.target, inp.source) if back else (inp.source, inp.target)
        self.p.waiting_for = f"shadow sync {source} > {target} ({why})"
        self._report()
        if back:
            self._syncs_back += 1
            child = f"{inp.cutover_id}-shadows-back-{self._syncs_back}"
        else:
            child = f"{inp.cutover_id}-shadows-{len(self.p.phase_seconds)}"
        handle = await workflow.start_child_workflow(
            ShadowSyncWorkflow.run,
            ShadowSyncInput(
                deployment=inp.deployment,
                source=source,
                target=target,
                thing_group=inp.scope,
                mode="one-shot",
            ),
            id=child,
            static_summary=f"shadow sync for {inp.cutover_id} ({why})",
        )
        result = await self._during(f"shadow sync ({why})", [source, target], handle, abortable=None)
        self.p.stale_shadow_leaves += int(result.stale_leaves or 0)
        self.p.waiting_for = None

    async def _run_wave(
        self, inp: CutoverInput, wave: WaveReport, group_arn: str, region: str, target: str, epoch: int
    ) -> None:
        """One job in `region` telling the group's devices to move to `target`, then verification there."""
        wave.job_id = job_id(
            inp.deployment, epoch, str(wave.index) if wave.kind == "wave" else wave.group.rsplit("-", 1)[-1]
        )
        label = f"wave {wave.index}" if wave.kind == "wave" else wave.kind
        self.p.waiting_for = f"{label}: {wave.size} devices moving to {target}"
        self._report()
        ref = await self._act(
            JobActivities.create_wave_job,
            WaveJobInput(
                deployment=inp.deployment,
                region=region,
                job_id=wave.job_id,
                target_arn=group_arn,
                document=job_document(inp, epoch, target),
                rollout_per_minute=inp.policy.rollout_per_minute,
                abort_failure_percent=inp.policy.abort_failure_percent,
                in_progress_timeout_minutes=inp.policy.in_progress_timeout_minutes,
                description=f"{inp.cutover_id}: {wave.group} to {target}",
                wave_size=wave.size,
            ),
            limit=timedelta(minutes=2),
            summary=f"job {wave.job_id}",
            needs=[region],
        )
        self._jobs_running.append((region, ref.job_id))
        # the wave lasts as long as verification: devices that never pick the job up (offline,
        # broken) must not hold the cutover until the job's own timeouts
        verified = await self._act(
            JobActivities.verify_devices,
            VerifyInput(
                deployment=inp.deployment,
                list_region=region,
                list_group=wave.group,
                target=target,
                epoch=epoch,
                timeout_seconds=inp.policy.verify_timeout_seconds,
                poll_seconds=inp.policy.verify_poll_seconds,
            ),
            limit=timedelta(seconds=inp.policy.verify_timeout_seconds + 300),
            summary=f"verify {wave.group} in {target}",
            needs=[region, target],
            heartbeat=60,
        )
        outcome = await self._act(
            JobActivities.wait_for_job,
            WaitJobInput(deployment=inp.deployment, region=region, job_id=ref.job_id, timeout_seconds=0),
            limit=timedelta(minutes=2),
            summary=f"outcome of {ref.job_id}",
            needs=[region],
        )
        if not outcome.settled:  # what is still queued is retargeted once, as stragglers
            await self._act(
                JobActivities.cancel_job,
                CancelJobInput(
                    deployment=inp.deployment,
                    region=region,
                    job_id=ref.job_id,
                    reason="wave verified; leftovers retargeted",
                    force=False,
                ),
                limit=timedelta(minutes=2),
                summary=f"close {ref.job_id}",
                needs=[region],
            )
        self._jobs_running.remove((region, ref.job_id))
        wave.job_status, wave.failures = outcome.status, outcome.failures
        wave.confirmed, wave.pending = verified.confirmed, verified.pending
        for s in verified.pending_sample:
            reason = next(
                (f for f in outcome.failures if f.startswith(f"{s}:")), f"{s}: not confirmed in {target}"
            )
            if reason not in self.p.stragglers:
                self.p.stragglers.append(reason)

    # ---- state ----

    def _checkpoint(self) -> None:
        if self._abort is not None:
            raise AbortRequested()

    def _lost(self, regions: Sequence[str]) -> str | None:
        return next((r for r in regions if self._health.get(r) == UNHEALTHY), None)

    def _unreachable(self, regions: Sequence[str]) -> None:
        for r in regions:
            if r not in self.p.unreachable_regions:
                self.p.unreachable_regions.append(r)

    def _note(self, event: str) -> None:
        self.p.events = [*self.p.events, f"{workflow.now():%H:%M:%S} {event}"][-EVENTS_KEPT:]
        workflow.logger.info(event)

    def _report(self) -> None:
        """Keep the Temporal UI's current details up to date."""
        workflow.set_current_details(details(self.p, self._paused))
