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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from activities.bootstrap import BootstrapActivities, FlipBootstrapInput
    from activities.jobs import (
        CancelJobInput,
        CountGroupInput,
        Cursor,
        DeleteGroupsInput,
        FilledGroup,
        FillGroupInput,
        JobActivities,
        VerifyInput,
        WaitJobInput,
        WaveJobInput,
    )
    from activities.registry import RegistryActivities, ReplicateScopeInput
    from activities.routing import FlipDnsInput, FlipRoutingInput, RoutingActivities
    from core.models import CutoverProgress, OperatorAction, WaveReport
    from core.temporal import SA_PHASE
    from workflows.cutover_steps import CutoverInput, bootstrap_order, job_document, job_id, wave_sizes
    from workflows.shadow_sync import ShadowSyncInput, ShadowSyncWorkflow
    from workflows.versions import (
        FLIPS_RUN_TO_THE_END,
        ROLLBACK_ONTO_HEALTHY_ONLY,
        ROLLBACK_SYNCS_SHADOWS,
        ROUTE_WHOLE_FLEET_ONLY,
    )

AWS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["StaleEpoch"],
)
EVENTS_KEPT = 12
HEARTBEAT = 30  # seconds: a worker that dies mid-step is noticed this fast


class AbortRequested(Exception):
    """Raised at a checkpoint once an operator asked to abort."""


class RegionLost(Exception):
    """A region a step needs became Unhealthy (as the deployment's health monitors report it)."""

    def __init__(self, region: str, step: str):
        super().__init__(f"{region} became Unhealthy during {step}")
        self.region = region


class HandOver(Exception):
    """The source failed before anything pointed devices at the target: end, automatic failover decides."""


@workflow.defn(name="CutoverWorkflow")
class CutoverWorkflow:
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
        self._abort: OperatorAction | None = None
        self._hold: str | None = None  # a wave below its success threshold waits for approval
        self._compensating = False  # rollback steps run to the end whatever arrives meanwhile
        self._health: dict[str, str] = dict(inp.health)
        self._jobs_running: list[tuple[str, str]] = []  # (region, job id)
        self._flip_started = False  # a forward flip was scheduled: devices may be told the target
        self._flips_abortable: bool | None = None  # FLIPS_RUN_TO_THE_END, decided at the first flip
        self._syncs_back = 0

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
        assert self.p is not None
        return self.p

    @control.validator
    def _validate_control(self, command: str, action: OperatorAction | None = None) -> None:
        if command not in ("approve", "pause", "resume", "abort"):
            raise ValueError(f"unknown command {command!r}: use approve, pause, resume or abort")
        if self.p is None or self.p.result is not None:
            raise ValueError("this cutover has finished")
        if command == "approve" and not (self.p.waiting_for or "").startswith("approval"):
            raise ValueError(f"nothing waits for approval (phase {self.p.phase})")
        if command == "resume" and not self._paused:
            raise ValueError("the cutover is not paused")

    @workflow.query(description="Phase, waves, devices confirmed/failed/pending, timings.")
    def progress(self) -> CutoverProgress | None:
        return self.p

    # ---- the runbook ----

    @workflow.run
    async def run(self, inp: CutoverInput) -> CutoverProgress:
        self.p.started_at = workflow.now()
        try:
            try:
                if inp.mode == "planned":
                    await self._planned(inp)
                else:
                    await self._emergency(inp)
            except RegionLost as lost:
                if lost.region != inp.source or inp.mode != "planned":
                    raise
                await self._take_over(inp, lost)
            await self._phase("finalize", self._finalize(inp))
            self.p.result = self._verdict()
        except HandOver as e:
            self.p.result, self.p.error, self.p.handed_over = "aborted", str(e), True
            self._note(str(e))
        except (AbortRequested, asyncio.CancelledError) as e:
            await self._compensate(inp, "cancelled" if isinstance(e, asyncio.CancelledError) else "aborted")
            self.p.result = "aborted"
        except RegionLost as lost:  # the target (or, in an emergency, the last region left) failed
            self.p.error = f"{lost}: rolled back"
            await self._compensate(inp, str(lost))
            self.p.result = "aborted"
        except Exception as e:  # compensate, then let the failure show in the UI
            self.p.error = str(e)
            await self._compensate(inp, f"failed: {e}")
            self.p.result = "failed"
            self._report()
            raise
        finally:
            self.p.finished_at = workflow.now()
            self.p.waiting_for = None
        self._report()
        return self.p

    async def _planned(self, inp: CutoverInput) -> None:
        await self._phase("preflight", self._preflight(inp))
        await self._phase("shadow-sync", self._shadow_sync(inp, "before the flip"))
        await self._phase("bootstrap-flip", self._flip(inp, inp.epoch, inp.target, skip=[]))
        await self._phase("waves", self._waves(inp))
        if self.p.stragglers:
            await self._phase("stragglers", self._retry_stragglers(inp))
        await self._phase("shadow-sync-2", self._shadow_sync(inp, "late writes after the flip"))
        await self._phase("routing-flip", self._route(inp, inp.epoch, inp.target, skip=[]))

    async def _emergency(self, inp: CutoverInput) -> None:
        dead = [inp.source, *[r for r in inp.regions if r != inp.source and self._lost([r])]]
        await self._phase("bootstrap-flip", self._flip(inp, inp.epoch, inp.target, skip=dead))
        await self._phase("routing-flip", self._route(inp, inp.epoch, inp.target, skip=dead))
        await self._phase("verify", self._verify_scope(inp))
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
        await self._phase("takeover-flip", self._flip(inp, inp.epoch, inp.target, skip=dead))
        await self._phase("takeover-routing", self._route(inp, inp.epoch, inp.target, skip=dead))
        await self._phase("verify", self._verify_scope(inp))
        self.p.reconcile_later.append(
            f"merge shadows {inp.source} > {inp.target} for {inp.scope} when {inp.source} is back"
        )

    def _verdict(self) -> str:
        p = self.p
        if p.devices_total and not p.confirmed:
            p.error = p.error or f"none of the {p.devices_total} devices of {p.scope} confirmed in {p.target}"
            return "failed"
        return "succeeded-with-stragglers" if p.stragglers or p.confirmed < p.devices_total else "succeeded"

    # ---- phases ----

    async def _phase(self, name: str, work: Any) -> None:
        """Run one phase of the runbook: name it in the UI and search attributes, time it."""
        if self._abort is not None:
            work.close()  # the phase never starts
            raise AbortRequested()
        self.p.phase = name
        workflow.upsert_search_attributes([SA_PHASE.value_set(name)])
        self._report()
        started = workflow.now()
        await work
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
        result = await self._race(handle, [source, target], abortable=False, step=f"shadow sync ({why})")
        self.p.stale_shadow_leaves += int(result.stale_leaves or 0)
        self.p.waiting_for = None

    async def _flip(self, inp: CutoverInput, epoch: int, primary: str, skip: list[str]) -> None:
        """Point the scope's bootstrap answer at `primary`. Once scheduled a flip counts as applied
        (it may land whatever happens to this workflow), and it runs to its end."""
        forward = primary == inp.target
        if forward:
            self._flip_started = True
            self.p.primary_after, self.p.epoch_after = primary, epoch
        if self._flips_abortable is None:
            self._flips_abortable = not workflow.patched(FLIPS_RUN_TO_THE_END)
        result = await self._act(
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
            limit=timedelta(minutes=5),
            summary=f"bootstrap {inp.bootstrap_scope} > {primary} (epoch {epoch})",
            heartbeat=HEARTBEAT,
            abortable=self._flips_abortable,
        )
        self.p.primary_after, self.p.epoch_after = primary, epoch
        self._unreachable([*result.unreachable, *skip])
        self._note(
            f"bootstrap for {inp.bootstrap_scope} now points at {primary} (epoch {epoch})"
            + (f"; unreachable: {', '.join(result.unreachable + skip)}" if result.unreachable or skip else "")
        )

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

    async def _waves(self, inp: CutoverInput) -> None:
        cursor = Cursor()
        policy = inp.policy
        for index, size in enumerate(
            wave_sizes(self.p.devices_total, policy.canary_size, policy.wave_growth, policy.max_wave_size)
        ):
            if cursor.exhausted:
                break
            await self._gate(index)
            wave = WaveReport(index=index, group=f"{inp.deployment}-{inp.epoch}-w{index}")
            self.p.waves.append(wave)
            started = workflow.now()
            filled = await self._act(
                JobActivities.fill_group,
                FillGroupInput(
                    deployment=inp.deployment,
                    list_region=inp.source,
                    list_group=inp.scope,
                    into_region=inp.source,
                    into_group=wave.group,
                    size=size,
                    cursor=cursor,
                    skip_in=inp.target,
                ),
                limit=timedelta(minutes=30),
                summary=f"wave {index}: choose {size} devices",
                needs=[inp.source],
                heartbeat=HEARTBEAT,
            )
            cursor, wave.size = filled.cursor, filled.added
            self.p.already_there += filled.already
            if wave.size == 0:
                self._tally()
                self.p.waves.pop()
                break
            await self._run_wave(inp, wave, filled.group_arn, inp.source, inp.target, inp.epoch)
            wave.seconds = (workflow.now() - started).total_seconds()
            self._tally()
            if filled.already:
                self._note(f"{filled.already} devices already connected to {inp.target}: confirmed, no job")
            if 100 * wave.confirmed / wave.size < policy.wave_success_percent:
                self._hold = (
                    f"approval: wave {index} confirmed {wave.confirmed}/{wave.size}, below "
                    f"{policy.wave_success_percent:g}%; send signal approve to go on or abort"
                )
                self._note(self._hold)

    async def _run_wave(
        self, inp: CutoverInput, wave: WaveReport, group_arn: str, region: str, target: str, epoch: int
    ) -> None:
        """One job in `region` telling the group's devices to move to `target`, then verification there."""
        wave.job_id = job_id(
            inp.deployment, epoch, str(wave.index) if wave.index >= 0 else wave.group.rsplit("-", 1)[-1]
        )
        self.p.waiting_for = f"wave {wave.index}: {wave.size} devices moving to {target}"
        self._report()
        needs = [region, target]
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
            needs=needs,
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

    async def _retry_stragglers(self, inp: CutoverInput) -> None:
        """Retarget every unconfirmed device once, then report what is left."""
        retry = WaveReport(index=-1, group=f"{inp.deployment}-{inp.epoch}-stragglers")
        arn = None
        for wave in [w for w in self.p.waves if w.index >= 0 and w.pending]:
            out = await self._act(
                JobActivities.verify_devices,
                VerifyInput(
                    deployment=inp.deployment,
                    list_region=inp.source,
                    list_group=wave.group,
                    target=inp.target,
                    epoch=inp.epoch,
                    timeout_seconds=0,
                    poll_seconds=1,
                    stragglers_group=retry.group,
                ),
                limit=timedelta(minutes=10),
                summary=f"collect stragglers of {wave.group}",
                needs=[inp.source, inp.target],
                heartbeat=60,
            )
            retry.size += out.pending
            arn = out.stragglers_arn or arn
        if retry.size and arn:
            self.p.stragglers = []
            self.p.waves.append(retry)
            await self._run_wave(inp, retry, arn, inp.source, inp.target, inp.epoch)
            self._tally()

    async def _verify_scope(self, inp: CutoverInput) -> None:
        """Devices arriving in the target on their own. How many there should be comes from the
        source of truth (counted in the source before, or the deployment's last count), never
        from the target's listing alone: a target missing devices must not look done."""
        self.p.waiting_for = f"devices reconnecting to {inp.target} on their own (epoch {inp.epoch})"
        self._report()
        out = await self._act(
            JobActivities.verify_devices,
            VerifyInput(
                deployment=inp.deployment,
                list_region=inp.target,
                list_group=inp.scope,
                target=inp.target,
                epoch=inp.epoch,
                timeout_seconds=inp.policy.verify_timeout_seconds,
                poll_seconds=inp.policy.verify_poll_seconds,
                fresh_since=self.p.started_at.timestamp(),
            ),
            limit=timedelta(seconds=inp.policy.verify_timeout_seconds + 300),
            summary=f"verify {inp.scope} in {inp.target}",
            needs=[inp.target],
            heartbeat=60,
        )
        expected = max(out.total, inp.known_devices, self.p.devices_total)
        self.p.devices_total, self.p.confirmed = expected, out.confirmed
        self.p.stragglers = [f"{t}: not confirmed in {inp.target}" for t in out.pending_sample]
        if expected > out.total:
            self.p.stragglers.append(
                f"{expected - out.total} devices of {inp.scope} are not registered in {inp.target} "
                f"(it lists {out.total} of {expected})"
            )
        self.p.waiting_for = None

    async def _finalize(self, inp: CutoverInput) -> None:
        groups = [w.group for w in self.p.waves]
        if groups and self._lost([inp.source]):
            self.p.reconcile_later.append(f"delete wave groups {', '.join(groups)} in {inp.source}")
        elif groups:
            await self._act(
                JobActivities.delete_wave_groups,
                DeleteGroupsInput(deployment=inp.deployment, region=inp.source, groups=groups),
                limit=timedelta(minutes=5),
                summary="remove wave groups",
                needs=[inp.source],
            )

    # ---- rollback ----

    async def _compensate(self, inp: CutoverInput, why: str) -> None:
        """Undo what was done, step by step; a step whose region is gone is skipped and recorded."""
        self._compensating = True
        self.p.phase = "rolling-back"
        self.p.waiting_for = None
        workflow.upsert_search_attributes([SA_PHASE.value_set("rolling-back")])
        self._note(f"rolling back ({why})")
        self._report()
        for region, job in list(self._jobs_running):
            await self._undo(
                f"cancel {job}",
                self._act(
                    JobActivities.cancel_job,
                    CancelJobInput(deployment=inp.deployment, region=region, job_id=job, reason=why),
                    limit=timedelta(minutes=2),
                    summary=f"cancel {job}",
                    needs=[region],
                ),
            )
        flipped = "bootstrap-flip" in self.p.phase_seconds or inp.mode == "emergency"
        if not flipped and self._flip_started and workflow.patched(FLIPS_RUN_TO_THE_END):
            flipped = True  # it may have landed in some regions: flip back everywhere
        source = self._health.get(inp.source, "Unknown")
        if source == "Unhealthy" or (source != "Healthy" and workflow.patched(ROLLBACK_ONTO_HEALTHY_ONLY)):
            self._note(
                f"{inp.source} is {source}: flips kept on {inp.target}, devices stay where they are served"
            )
            return
        back = inp.epoch + 1
        dead = [r for r in inp.regions if self._lost([r])]
        if flipped:
            await self._undo("flip back", self._flip(inp, back, inp.source, skip=dead))
            await self._undo("route back", self._route(inp, back, inp.source, skip=dead))
        if self._lost([inp.target]):
            self._note(
                f"{inp.target} is Unhealthy: its devices fail over to {inp.source} on their own (their "
                "endpoint lists name it)"
            )
            self.p.reconcile_later.append(
                f"merge shadows {inp.target} > {inp.source} for {inp.scope} when {inp.target} is back"
            )
        else:
            await self._move_back(inp, back)
        await self._undo(
            "remove wave groups",
            self._act(
                JobActivities.delete_wave_groups,
                DeleteGroupsInput(
                    deployment=inp.deployment, region=inp.source, groups=[w.group for w in self.p.waves]
                ),
                limit=timedelta(minutes=5),
                summary="remove wave groups",
                needs=[inp.source],
            ),
        )

    async def _move_back(self, inp: CutoverInput, back: int) -> None:
        """Devices confirmed in the target go back with a wave of their own, their shadows first."""
        syncs = workflow.patched(ROLLBACK_SYNCS_SHADOWS)
        if syncs:
            await self._undo(
                "shadows back", self._shadow_sync(inp, "writes made in the target, before moving back", True)
            )
        sources = [(inp.source, w.group) for w in self.p.waves] or [(inp.target, inp.scope)]
        group = f"{inp.deployment}-{back}-rollback"
        moved = FilledGroup("", 0, Cursor())
        for list_region, list_group in sources:
            filled = await self._act(
                JobActivities.fill_group,
                FillGroupInput(
                    deployment=inp.deployment,
                    list_region=list_region,
                    list_group=list_group,
                    into_region=inp.target,
                    into_group=group,
                    size=0,
                    only_confirmed_in=inp.target,
                    min_epoch=inp.epoch,
                ),
                limit=timedelta(minutes=30),
                summary=f"find devices to move back from {list_group}",
                needs=[list_region, inp.target],
                heartbeat=HEARTBEAT,
            )
            moved = FilledGroup(filled.group_arn, moved.added + filled.added, filled.cursor)
        if moved.added:
            wave = WaveReport(index=-2, group=group, size=moved.added)
            await self._run_wave(inp, wave, moved.group_arn, inp.target, inp.source, back)
            self._note(f"moved {wave.confirmed}/{wave.size} devices back to {inp.source}")
        if syncs:
            await self._undo(
                "shadows back (late writes)",
                self._shadow_sync(inp, "late writes in the target, after moving back", True),
            )
            await self._undo(
                "remove the rollback group",
                self._act(
                    JobActivities.delete_wave_groups,
                    DeleteGroupsInput(deployment=inp.deployment, region=inp.target, groups=[group]),
                    limit=timedelta(minutes=5),
                    summary="remove the rollback group",
                    needs=[inp.target],
                ),
            )

    async def _undo(self, what: str, step: Any) -> None:
        """One compensation step; its failure is recorded and the rollback goes on."""
        try:
            await step
        except (RegionLost, ActivityError, ChildWorkflowError) as e:
            cause = getattr(e, "cause", None) or e
            self._note(f"rollback step {what!r} not done: {cause}")
            self.p.reconcile_later.append(f"{what}: not done during rollback ({cause})"[:300])

    # ---- helpers ----

    async def _act(
        self,
        activity: Any,
        arg: Any,
        *,
        limit: timedelta,
        summary: str,
        needs: Sequence[str] = (),
        heartbeat: float | None = None,
        abortable: bool = True,
    ) -> Any:
        """Run an activity that needs the regions `needs`; an abort or the loss of one of them
        cancels it (the activity sees the cancel at its next heartbeat)."""
        lost = self._lost(needs)
        if lost:
            raise RegionLost(lost, summary)
        handle = workflow.start_activity_method(
            activity,
            arg,
            start_to_close_timeout=limit,
            heartbeat_timeout=timedelta(seconds=heartbeat) if heartbeat else None,
            retry_policy=AWS_RETRY,
            summary=summary,
        )
        return await self._race(handle, needs, abortable, summary)

    async def _race(self, task: asyncio.Task, needs: Sequence[str], abortable: bool, step: str) -> Any:
        abortable = abortable and not self._compensating
        await workflow.wait_condition(
            lambda: task.done() or (abortable and self._abort is not None) or self._lost(needs) is not None
        )
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        lost = self._lost(needs)
        if lost:
            raise RegionLost(lost, step)
        raise AbortRequested()

    def _lost(self, regions: Sequence[str]) -> str | None:
        return next((r for r in regions if self._health.get(r) == "Unhealthy"), None)

    def _unreachable(self, regions: Sequence[str]) -> None:
        for r in regions:
            if r not in self.p.unreachable_regions:
                self.p.unreachable_regions.append(r)

    async def _gate(self, index: int) -> None:
        """Before a wave: honour the approval policy, a failed wave's hold, and pause."""
        policy = self._inp.approval
        hold = self._hold
        regions = [self._inp.source, self._inp.target]
        if hold or policy == "every-wave" and index > 0 or policy == "canary" and index == 1:
            seen = self._approved
            self.p.waiting_for = hold or (
                f"approval: wave {index - 1} done ({self.p.confirmed}/{self.p.devices_total} confirmed); "
                f"send signal approve to start wave {index}"
            )
            self._report()
            await workflow.wait_condition(
                lambda: self._approved > seen or self._abort is not None or self._lost(regions) is not None
            )
            self._hold = None
        if self._paused:
            self.p.paused = True
            self.p.waiting_for = "paused: send signal resume to continue"
            self._report()
            await workflow.wait_condition(
                lambda: not self._paused or self._abort is not None or self._lost(regions) is not None
            )
            self.p.paused = False
        self.p.waiting_for = None
        self._checkpoint()
        lost = self._lost(regions)
        if lost:
            raise RegionLost(lost, f"the gate before wave {index}")

    def _checkpoint(self) -> None:
        if self._abort is not None:
            raise AbortRequested()

    def _tally(self) -> None:
        forward = [w for w in self.p.waves if w.index >= 0]
        retried = sum(w.confirmed for w in self.p.waves if w.index == -1)
        self.p.confirmed = sum(w.confirmed for w in forward) + retried + self.p.already_there
        self.p.failed = sum(w.pending for w in forward) - retried

    def _note(self, event: str) -> None:
        if self.p is not None:
            self.p.events = [*self.p.events, f"{workflow.now():%H:%M:%S} {event}"][-EVENTS_KEPT:]
            workflow.logger.info(event)

    def _report(self) -> None:
        """Keep the Temporal UI's current details up to date."""
        p = self.p
        lines = [
            f"**{p.mode} cutover {p.source} → {p.target}** (epoch {p.epoch}, scope {p.scope})",
            f"phase: {p.phase}" + (" (paused)" if self._paused else ""),
        ]
        if p.takeover:
            lines.append(f"takeover: {p.takeover}")
        if p.waiting_for:
            lines.append(f"waiting for: {p.waiting_for}")
        if p.devices_total:
            lines.append(
                f"devices: {p.confirmed}/{p.devices_total} confirmed in {p.target}, {p.failed} failed"
            )
        for w in p.waves[-6:]:
            name = "canary" if w.index == 0 else ("stragglers" if w.index == -1 else f"wave {w.index}")
            lines.append(f"- {name}: {w.confirmed}/{w.size} confirmed, job {w.job_status or 'running'}")
        if p.result:
            lines.append(f"result: {p.result}" + (f" ({p.error})" if p.error else ""))
        lines += [f"> {e}" for e in p.events[-3:]]
        workflow.set_current_details("\n".join(lines))
