"""DrillWorkflow alone, with stand-in activities under the real names (the real ones are tested against
the emulators in test_drill_activities.py and end to end in test_drill_e2e.py)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.drill import AbortCutoverInput, ReportInput, SteerInput, WaitCutoverInput
from activities.recovery_point import RecoveryPoint
from activities.shadows import RecoveryPointInput
from core.models import CutoverProgress, CutoverStarted
from workflows.drill import DrillInput, DrillWorkflow

EAST, WEST = "us-east-1", "us-west-2"


class StandIns:
    """A deployment active in us-east-1 whose drill cutover starts and never ends by itself; once
    aborted it rolls back at once, or (`rollback_ends` False) never."""

    def __init__(self, rollback_ends: bool = True) -> None:
        self.waiting = asyncio.Event()  # wait_cutover is running
        self.rollback_ends = rollback_ends
        self.aborted = False
        self.calls: list[str] = []

    def all(self) -> list:
        @activity.defn(name="deployment_snapshot")
        async def deployment_snapshot(deployment: str) -> dict:
            self.calls.append("deployment_snapshot")
            health = {r: {"state": "Healthy"} for r in (EAST, WEST)}
            return {"active_region": EAST, "epoch": 1, "health": health, "homes": {}, "in_flight": None}

        @activity.defn(name="measure_recovery_point")
        async def measure_recovery_point(inp: RecoveryPointInput) -> RecoveryPoint:
            return RecoveryPoint(inp.source, inp.target, "fleet", inp.as_of or datetime.now(UTC))

        @activity.defn(name="request_cutover")
        async def request_cutover(inp: SteerInput) -> CutoverStarted:
            self.calls.append("request_cutover")
            return CutoverStarted("cutover-d-2", 2, EAST, inp.request.target, inp.request.mode)

        @activity.defn(name="wait_cutover")
        async def wait_cutover(inp: WaitCutoverInput) -> CutoverProgress:
            self.calls.append("wait_cutover")
            self.waiting.set()
            while not (self.aborted and self.rollback_ends):  # or until the drill cancels it
                activity.heartbeat()
                await asyncio.sleep(0.2)
            return CutoverProgress(
                cutover_id=inp.cutover_id or "cutover-d-2",
                deployment=inp.deployment,
                mode="planned",
                source=EAST,
                target=WEST,
                scope="fleet",
                epoch=2,
                result="aborted",
            )

        @activity.defn(name="abort_cutover")
        async def abort_cutover(inp: str | AbortCutoverInput) -> str:
            self.calls.append("abort_cutover")
            self.aborted = True
            return "abort sent"

        @activity.defn(name="write_drill_report")
        async def write_drill_report(inp: ReportInput) -> list[str]:
            self.calls.append("write_drill_report")
            return []

        return [
            deployment_snapshot,
            measure_recovery_point,
            request_cutover,
            wait_cutover,
            abort_cutover,
            write_drill_report,
        ]


async def _drill_waiting(client: Client, task_queue: str, stand_ins: StandIns):
    handle = await client.start_workflow(
        DrillWorkflow.run,
        DrillInput(deployment="d", drill_id=f"drill-{uuid.uuid4().hex[:8]}", timeout_seconds=600),
        id=f"drill-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
    )
    await asyncio.wait_for(stand_ins.waiting.wait(), timeout=30)
    return handle


async def test_a_cancel_arriving_while_the_drill_stops_its_cutover_cancels_the_drill(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    """The drill's abort cancels its wait for the cutover (the activity's cancellation, never
    raised) and waits for the rollback; a cancel of the drill itself arriving then is the drill's
    own: it restores and ends cancelled, not "interrupted" and completed."""
    client, stand_ins = time_skipping_env.client, StandIns(rollback_ends=False)
    async with Worker(client, task_queue=task_queue, workflows=[DrillWorkflow], activities=stand_ins.all()):
        handle = await _drill_waiting(client, task_queue, stand_ins)
        await handle.signal(DrillWorkflow.abort)
        for _ in range(100):  # the wait for the rollback runs
            if stand_ins.calls.count("wait_cutover") == 2:
                break
            await asyncio.sleep(0.1)
        assert stand_ins.calls[-2:] == ["abort_cutover", "wait_cutover"]
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as e:
            await handle.result()
        assert isinstance(e.value.cause, CancelledError)
        assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    assert stand_ins.calls[-1] == "deployment_snapshot"  # restored (nothing to move back), no report


async def test_an_abort_stops_the_drill_with_a_failed_report(
    time_skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    client, stand_ins = time_skipping_env.client, StandIns()
    async with Worker(client, task_queue=task_queue, workflows=[DrillWorkflow], activities=stand_ins.all()):
        handle = await _drill_waiting(client, task_queue, stand_ins)
        await handle.signal(DrillWorkflow.abort)
        report = await handle.result()
    assert not report.passed
    assert any("aborted while waiting for cutover-d-2" in r for r in report.reasons)
    assert "abort_cutover" in stand_ins.calls and stand_ins.calls[-1] == "write_drill_report"
