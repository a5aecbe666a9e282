"""The waves of a planned cutover: the gate before each, the jobs, the stragglers' retry, and the
verification of an emergency cutover's devices."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow

from workflows.cutover_actions import HEARTBEAT, CutoverActions, RegionLost

with workflow.unsafe.imports_passed_through():
    from activities.jobs import Cursor, DeleteGroupsInput, FillGroupInput, JobActivities
    from activities.verification import VerifyInput
    from core.models import WaveReport
    from workflows.cutover_steps import CutoverInput, wave_sizes


class CutoverWaves(CutoverActions):
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

    async def _retry_stragglers(self, inp: CutoverInput) -> None:
        """Retarget every unconfirmed device once, then report what is left."""
        retry = WaveReport(kind="stragglers", group=f"{inp.deployment}-{inp.epoch}-stragglers")
        arn = None
        for wave in [w for w in self.p.waves if w.kind == "wave" and w.pending]:
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
                fresh_since=(self.p.started_at or workflow.now()).timestamp(),
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

    async def _gate(self, index: int) -> None:
        """Before a wave: honour the approval policy, a failed wave's hold, and pause."""
        policy = self._inp.approval
        hold = self._hold
        regions = [self._inp.source, self._inp.target]
        step = f"the gate before wave {index}"
        if hold or policy == "every-wave" and index > 0 or policy == "canary" and index == 1:
            seen = self._approved
            self.p.waiting_for = hold or (
                f"approval: wave {index - 1} done ({self.p.confirmed}/{self.p.devices_total} confirmed); "
                f"send signal approve to start wave {index}"
            )
            self._report()
            await self._during(step, regions, self._until(lambda: self._approved > seen))
            self._hold = None
        if self._paused:
            self.p.paused = True
            self.p.waiting_for = "paused: send signal resume to continue"
            self._report()
            await self._during(step, regions, self._until(lambda: not self._paused))
            self.p.paused = False
        self.p.waiting_for = None
        self._checkpoint()
        lost = self._lost(regions)
        if lost:
            raise RegionLost(lost, step)

    def _until(self, condition: Callable[[], bool]) -> asyncio.Task[None]:
        return asyncio.create_task(workflow.wait_condition(condition))

    def _tally(self) -> None:
        forward = [w for w in self.p.waves if w.kind == "wave"]
        retried = sum(w.confirmed for w in self.p.waves if w.kind == "stragglers")
        self.p.confirmed = sum(w.confirmed for w in forward) + retried + self.p.already_there
        self.p.failed = sum(w.pending for w in forward) - retried
