"""Drills end to end on the e2e stack: a failed criterion still restores the fleet; so does an abort."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.e2e_stack import DEVICES, EAST, FAULTY, WEST, Stack, until
from workflows.drill import DrillInput
from workflows.drill_report import DrillCriteria, DrillReport

pytestmark = pytest.mark.e2e


async def _drill(stack: Stack, **kw) -> tuple[str, object]:
    drill_id = f"drill-{stack.cfg.name}-{uuid.uuid4().hex[:4]}"
    handle = await stack.client.start_workflow(
        "DrillWorkflow",
        DrillInput(deployment=stack.cfg.name, drill_id=drill_id, **kw),
        id=drill_id,
        task_queue=stack.task_queue,
        result_type=DrillReport,
    )
    return drill_id, handle


async def _restored(stack: Stack) -> None:
    await until(
        lambda: asyncio.sleep(0, stack.regions_of_devices()),
        lambda c: c.get(EAST) == DEVICES,
        what="every device back in us-east-1",
    )
    answer = await asyncio.to_thread(stack.bootstrap_answer, EAST, stack.fleet.devices[0].thing)
    assert answer["endpoints"][0]["region"] == EAST
    assert (await stack.state()).active_region == EAST


async def test_a_drill_missing_its_criteria_fails_with_reasons_and_restores(stack: Stack) -> None:
    _, handle = await _drill(
        stack,
        kind="planned",
        hold_seconds=1,
        criteria=DrillCriteria(min_confirmed_percent=100, max_recovery_seconds=600),
    )
    report: DrillReport = await handle.result()
    assert not report.passed
    assert any(f"{DEVICES - FAULTY}/{DEVICES} devices" in r for r in report.reasons), report.reasons
    assert report.moved == DEVICES - FAULTY and report.restored
    assert report.recovery_95_seconds is not None and report.failback_seconds is not None
    assert len(report.report_paths) == 2 and report.report_paths[1].endswith(".md")
    await _restored(stack)


async def test_an_aborted_drill_restores_the_fleet_and_the_bootstrap_answer(stack: Stack) -> None:
    _, handle = await _drill(stack, kind="planned", hold_seconds=600)
    await until(
        lambda: handle.query("report", result_type=DrillReport),
        lambda r: r and r.phase.startswith("holding"),
        what="the drill to hold in us-west-2",
    )
    assert stack.regions_of_devices().get(WEST) == DEVICES - FAULTY
    await handle.signal("abort", {"by": "e2e", "reason": "test"})
    report: DrillReport = await handle.result()
    assert not report.passed and "the drill was aborted" in report.reasons
    await _restored(stack)
