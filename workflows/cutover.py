"""CutoverWorkflow: move a scope of devices from one region to another, as a saga.

planned:   preflight > shadow sync > bootstrap flip > canary and growing waves (job, verify,
           approval) > stragglers > second shadow sync > routing flip > finalize
emergency: bootstrap flip (and routing) in the healthy regions > verify devices arriving on their
           own > finalize, recording what to reconcile when the source returns. Nothing waits on
           the dead region.
abort:     cancel the running job, roll the flips back under a new epoch and move migrated devices
           back, when the source is healthy; when it is not, stop and keep devices where they are
           served (pointing them at a dead region would take the fleet down).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.jobs import (
        CancelJobInput,
        CountGroupInput,
        Cursor,
        DeleteGroupsInput,
        FilledGroup,
        FillGroupInput,
        JobOutcome,
        JobRef,
        VerifyInput,
        VerifyOutcome,
        WaitJobInput,
        WaveJobInput,
    )
    from core.models import CutoverProgress, OperatorAction, WaveReport
    from core.temporal import SA_PHASE
    from workflows.cutover_steps import CutoverInput, bootstrap_order, job_document, wave_sizes

AWS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["StaleEpoch"],
)
EVENTS_KEPT = 12


def _brief(report: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in report.items() if isinstance(v, int | bool | str))[:200] or "ok"


class AbortRequested(Exception):
    """Raised at a checkpoint once an operator asked to abort."""


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
        )
        self._approved = 0
        self._paused = False
        self._abort: OperatorAction | None = None
        self._hold: str | None = None  # a wave below its success threshold waits for approval
        self._compensating = False  # rollback steps run to the end whatever arrives meanwhile
        self._health: dict[str, str] = dict(inp.health)
        self._jobs_running: list[tuple[str, str]] = []  # (region, job id)

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
            if inp.mode == "planned":
                await self._planned(inp)
            else:
                await self._emergency(inp)
            await self._phase("finalize", self._finalize(inp))
            self.p.result = "succeeded" if not self.p.stragglers else "succeeded-with-stragglers"
        except (AbortRequested, asyncio.CancelledError) as e:
            await self._compensate(inp, "cancelled" if isinstance(e, asyncio.CancelledError) else "aborted")
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
        await self._phase("routing-flip", self._route(inp, inp.epoch, inp.target))

    async def _emergency(self, inp: CutoverInput) -> None:
        dead = [inp.source]
        await self._phase("bootstrap-flip", self._flip(inp, inp.epoch, inp.target, skip=dead))
        await self._phase("routing-flip", self._route(inp, inp.epoch, inp.target))
        await self._phase("verify", self._verify_scope(inp))
        self.p.reconcile_later.append(
            f"merge shadows {inp.source} > {inp.target} for {inp.scope} when {inp.source} is back "
            "(newer leaves win, see the shadow sync's merge rule)"
        )

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
            "replicate_scope",
            {
                "deployment": inp.deployment,
                "source": inp.source,
                "target": inp.target,
                "thing_group": inp.scope,
            },
            dict,
            timedelta(minutes=60),
            f"replicate {inp.scope} to {inp.target}",
            heartbeat=120,
        )
        self._note(f"preflight: scope replicated to {inp.target}: {_brief(report)}")
        self.p.devices_total = await self._act(
            "count_group",
            CountGroupInput(inp.deployment, inp.source, inp.scope),
            int,
            timedelta(minutes=10),
            f"count {inp.scope}",
            heartbeat=60,
        )

    async def _shadow_sync(self, inp: CutoverInput, why: str) -> None:
        self.p.waiting_for = f"shadow sync {inp.source} > {inp.target} ({why})"
        self._report()
        child = f"{inp.cutover_id}-shadows-{len(self.p.phase_seconds)}"
        result = await workflow.execute_child_workflow(
            "ShadowSyncWorkflow",
            {
                "deployment": inp.deployment,
                "source": inp.source,
                "target": inp.target,
                "thing_group": inp.scope,
                "mode": "one-shot",
            },
            id=child,
            result_type=dict,
            static_summary=f"shadow sync for {inp.cutover_id} ({why})",
        )
        self.p.stale_shadow_leaves += int(result.get("stale_leaves", 0) or 0)
        self.p.waiting_for = None

    async def _flip(self, inp: CutoverInput, epoch: int, primary: str, skip: list[str]) -> None:
        result = await self._act(
            "flip_bootstrap",
            {
                "deployment": inp.deployment,
                "epoch": epoch,
                "scope": inp.bootstrap_scope,
                "primary": primary,
                "order": bootstrap_order(inp.regions, primary),
                "reason": f"{inp.cutover_id}: {inp.reason}",
                "regions": [r for r in inp.regions if r not in skip],
            },
            dict,
            timedelta(minutes=5),
            f"bootstrap {inp.bootstrap_scope} > {primary} (epoch {epoch})",
        )
        unreachable = [*result.get("unreachable", []), *skip]
        for r in unreachable:
            if r not in self.p.unreachable_regions:
                self.p.unreachable_regions.append(r)
        self._note(
            f"bootstrap for {inp.bootstrap_scope} now points at {primary} (epoch {epoch})"
            + (f"; unreachable: {', '.join(unreachable)}" if unreachable else "")
        )

    async def _route(self, inp: CutoverInput, epoch: int, region: str) -> None:
        if inp.active_active:
            await self._act(
                "flip_routing",
                {
                    "deployment": inp.deployment,
                    "epoch": epoch,
                    "application": inp.application,
                    "region": region,
                },
                dict,
                timedelta(minutes=5),
                f"route {inp.application} telemetry to {region}",
            )
        if inp.dns:
            await self._act(
                "flip_dns",
                {"deployment": inp.deployment, "epoch": epoch, "region": region},
                dict,
                timedelta(minutes=10),
                f"DNS > {region}",
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
                "fill_group",
                FillGroupInput(inp.deployment, inp.source, inp.scope, inp.source, wave.group, size, cursor),
                FilledGroup,
                timedelta(minutes=30),
                f"wave {index}: choose {size} devices",
            )
            cursor, wave.size = filled.cursor, filled.added
            if wave.size == 0:
                self.p.waves.pop()
                break
            await self._run_wave(inp, wave, filled.group_arn, inp.source, inp.target, inp.epoch)
            wave.seconds = (workflow.now() - started).total_seconds()
            self._tally()
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
        wave.job_id = (
            f"{inp.deployment}-{epoch}-{wave.index if wave.index >= 0 else wave.group.rsplit('-', 1)[-1]}"
        )
        self.p.waiting_for = f"wave {wave.index}: {wave.size} devices moving to {target}"
        self._report()
        ref = await self._act(
            "create_wave_job",
            WaveJobInput(
                inp.deployment,
                region,
                wave.job_id,
                group_arn,
                job_document(inp, epoch, target),
                inp.policy.rollout_per_minute,
                inp.policy.abort_failure_percent,
                inp.policy.in_progress_timeout_minutes,
                f"{inp.cutover_id}: {wave.group} to {target}",
                wave.size,
            ),
            JobRef,
            timedelta(minutes=2),
            f"job {wave.job_id}",
        )
        self._jobs_running.append((region, ref.job_id))
        # the wave lasts as long as verification: devices that never pick the job up (offline,
        # broken) must not hold the cutover until the job's own timeouts
        verified = await self._act(
            "verify_devices",
            VerifyInput(
                inp.deployment,
                region,
                wave.group,
                target,
                epoch,
                inp.policy.verify_timeout_seconds,
                inp.policy.verify_poll_seconds,
            ),
            VerifyOutcome,
            timedelta(seconds=inp.policy.verify_timeout_seconds + 300),
            f"verify {wave.group} in {target}",
            heartbeat=60,
        )
        outcome = await self._act(
            "wait_for_job",
            WaitJobInput(inp.deployment, region, ref.job_id, 0),
            JobOutcome,
            timedelta(minutes=2),
            f"outcome of {ref.job_id}",
        )
        if not outcome.settled:  # what is still queued is retargeted once, as stragglers
            await self._act(
                "cancel_job",
                CancelJobInput(
                    inp.deployment, region, ref.job_id, "wave verified; leftovers retargeted", force=False
                ),
                str,
                timedelta(minutes=2),
                f"close {ref.job_id}",
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
                "verify_devices",
                VerifyInput(
                    inp.deployment,
                    inp.source,
                    wave.group,
                    inp.target,
                    inp.epoch,
                    0,
                    1,
                    stragglers_group=retry.group,
                ),
                VerifyOutcome,
                timedelta(minutes=10),
                f"collect stragglers of {wave.group}",
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
        self.p.waiting_for = f"devices reconnecting to {inp.target} on their own (epoch {inp.epoch})"
        self._report()
        out = await self._act(
            "verify_devices",
            VerifyInput(
                inp.deployment,
                inp.target,
                inp.scope,
                inp.target,
                inp.epoch,
                inp.policy.verify_timeout_seconds,
                inp.policy.verify_poll_seconds,
                fresh_since=self.p.started_at.timestamp(),
            ),
            VerifyOutcome,
            timedelta(seconds=inp.policy.verify_timeout_seconds + 300),
            f"verify {inp.scope} in {inp.target}",
            heartbeat=60,
        )
        self.p.devices_total, self.p.confirmed = out.total, out.confirmed
        self.p.stragglers = [f"{t}: not confirmed in {inp.target}" for t in out.pending_sample]
        self.p.waiting_for = None

    async def _finalize(self, inp: CutoverInput) -> None:
        groups = [w.group for w in self.p.waves]
        if groups:
            await self._act(
                "delete_wave_groups",
                DeleteGroupsInput(inp.deployment, inp.source, groups),
                int,
                timedelta(minutes=5),
                "remove wave groups",
            )

    # ---- rollback ----

    async def _compensate(self, inp: CutoverInput, why: str) -> None:
        self._compensating = True
        self.p.phase = "rolling-back"
        self.p.waiting_for = None
        workflow.upsert_search_attributes([SA_PHASE.value_set("rolling-back")])
        self._note(f"rolling back ({why})")
        self._report()
        for region, job_id in list(self._jobs_running):
            await self._act(
                "cancel_job",
                CancelJobInput(inp.deployment, region, job_id, why),
                str,
                timedelta(minutes=2),
                f"cancel {job_id}",
                abortable=False,
            )
        if self._health.get(inp.source) == "Unhealthy":
            self._note(
                f"{inp.source} is unhealthy: flips kept on {inp.target}, devices stay where they are served"
            )
            return
        back = inp.epoch + 1
        if "bootstrap-flip" in self.p.phase_seconds or inp.mode == "emergency":
            await self._flip(inp, back, inp.source, skip=[])
            await self._route(inp, back, inp.source)
        sources = [(inp.source, w.group) for w in self.p.waves] or [(inp.target, inp.scope)]
        group = f"{inp.deployment}-{back}-rollback"
        moved = FilledGroup("", 0, Cursor())
        for list_region, list_group in sources:
            filled = await self._act(
                "fill_group",
                FillGroupInput(
                    inp.deployment,
                    list_region,
                    list_group,
                    inp.target,
                    group,
                    0,
                    only_confirmed_in=inp.target,
                    min_epoch=inp.epoch,
                ),
                FilledGroup,
                timedelta(minutes=30),
                f"find devices to move back from {list_group}",
                abortable=False,
            )
            moved = FilledGroup(filled.group_arn, moved.added + filled.added, filled.cursor)
        if moved.added:
            wave = WaveReport(index=-2, group=group, size=moved.added)
            await self._run_wave(inp, wave, moved.group_arn, inp.target, inp.source, back)
            self._note(f"moved {wave.confirmed}/{wave.size} devices back to {inp.source}")
        await self._act(
            "delete_wave_groups",
            DeleteGroupsInput(inp.deployment, inp.source, [w.group for w in self.p.waves]),
            int,
            timedelta(minutes=5),
            "remove wave groups",
            abortable=False,
        )

    # ---- helpers ----

    async def _act(
        self,
        name: str,
        arg: Any,
        result_type: type,
        limit: timedelta,
        summary: str,
        heartbeat: float | None = None,
        abortable: bool = True,
    ) -> Any:
        """Run an activity; an abort cancels it (the activity sees the cancel at its next heartbeat)."""
        task = asyncio.ensure_future(
            workflow.execute_activity(
                name,
                arg,
                result_type=result_type,
                start_to_close_timeout=limit,
                heartbeat_timeout=timedelta(seconds=heartbeat) if heartbeat else None,
                retry_policy=AWS_RETRY,
                summary=summary,
            )
        )
        if not abortable or self._compensating:
            return await task
        await workflow.wait_condition(lambda: task.done() or self._abort is not None)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise AbortRequested()
        return task.result()

    async def _gate(self, index: int) -> None:
        """Before a wave: honour the approval policy, a failed wave's hold, and pause."""
        policy = self._inp.approval
        hold = self._hold
        if hold or policy == "every-wave" and index > 0 or policy == "canary" and index == 1:
            seen = self._approved
            self.p.waiting_for = hold or (
                f"approval: wave {index - 1} done ({self.p.confirmed}/{self.p.devices_total} confirmed); "
                f"send signal approve to start wave {index}"
            )
            self._report()
            await workflow.wait_condition(lambda: self._approved > seen or self._abort is not None)
            self._hold = None
        if self._paused:
            self.p.paused = True
            self.p.waiting_for = "paused: send signal resume to continue"
            self._report()
            await workflow.wait_condition(lambda: not self._paused or self._abort is not None)
            self.p.paused = False
        self.p.waiting_for = None
        self._checkpoint()

    def _checkpoint(self) -> None:
        if self._abort is not None:
            raise AbortRequested()

    def _tally(self) -> None:
        forward = [w for w in self.p.waves if w.index >= 0]
        retried = sum(w.confirmed for w in self.p.waves if w.index == -1)
        self.p.confirmed = sum(w.confirmed for w in forward) + retried
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
            lines.append(f"result: {p.result}")
        lines += [f"> {e}" for e in p.events[-3:]]
        workflow.set_current_details("\n".join(lines))
