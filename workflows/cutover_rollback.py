"""The cutover's rollback: undo what was done, step by step, and move devices back to the source.

It runs to its end whatever arrives (an abort, a cancel of the workflow); only the loss of a region a
step needs stops that step, which is then recorded for later and skipped.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError

from workflows.cutover_actions import HEARTBEAT, CutoverActions, RegionLost

with workflow.unsafe.imports_passed_through():
    from activities.jobs import (
        CancelJobInput,
        Cursor,
        DeleteGroupsInput,
        FilledGroup,
        FillGroupInput,
        JobActivities,
    )
    from core.models import HEALTHY, UNHEALTHY, UNKNOWN, WaveReport
    from core.temporal import SA_PHASE
    from workflows.cutover_steps import CutoverInput
    from workflows.versions import (
        FLIPS_RUN_TO_THE_END,
        MOVE_BACK_IS_A_STEP,
        ROLLBACK_ONTO_HEALTHY_ONLY,
        ROLLBACK_SYNCS_SHADOWS,
    )


class CutoverRollback(CutoverActions):
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
        source = self._health.get(inp.source, UNKNOWN)
        if source == UNHEALTHY or (source != HEALTHY and workflow.patched(ROLLBACK_ONTO_HEALTHY_ONLY)):
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
        group = f"{inp.deployment}-{back}-rollback"
        await self._undo("move devices back", self._wave_back(inp, back, group), patch=MOVE_BACK_IS_A_STEP)
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

    async def _wave_back(self, inp: CutoverInput, back: int, group: str) -> None:
        """The devices confirmed in the target, found through the waves that moved them, and their wave."""
        sources = [(inp.source, w.group) for w in self.p.waves] or [(inp.target, inp.scope)]
        moved = FilledGroup(group_arn="", added=0, cursor=Cursor())
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
            moved = FilledGroup(
                group_arn=filled.group_arn, added=moved.added + filled.added, cursor=filled.cursor
            )
        if moved.added:
            wave = WaveReport(kind="rollback", group=group, size=moved.added)
            await self._run_wave(inp, wave, moved.group_arn, inp.target, inp.source, back)
            self._note(f"moved {wave.confirmed}/{wave.size} devices back to {inp.source}")

    async def _undo(self, what: str, step: Awaitable[object], patch: str = "") -> None:
        """One compensation step; its failure is recorded and the rollback goes on (for a step that
        became one under `patch`, only in runs that took it)."""
        try:
            await step
        except (RegionLost, ActivityError, ChildWorkflowError) as e:
            if patch and not workflow.patched(patch):
                raise
            cause = getattr(e, "cause", None) or e
            self._note(f"rollback step {what!r} not done: {cause}")
            self.p.reconcile_later.append(f"{what}: not done during rollback ({cause})"[:300])
