"""Drills end to end on the e2e stack: a failed criterion still restores the fleet; so does an abort.

A drill is unattended: a failed wave, its timeout or its abort stops its cutover at once (FAIL with
the reason), the fail back of devices that never moved does not wait either, and the sampled scope
group is deleted whatever the outcome.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError
from temporalio.worker import Replayer

from core.models import CutoverProgress, RegionHealthChange
from core.temporal import DATA_CONVERTER
from rehearsal import faults
from tests.e2e_stack import DEVICES, EAST, FAULTY, WEST, Stack, until
from workflows import all_workflows
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
    assert report.recovery_point_checked == DEVICES  # measured before the move, over the scope
    await _restored(stack)
    history = await handle.fetch_history()
    assert len(history.events) < 100  # a step per activity, never per device
    await Replayer(workflows=all_workflows(), data_converter=DATA_CONVERTER).replay_workflow(history)


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


async def _ends(handle, within: float) -> DrillReport:
    """The drill's report, or a failure naming the phase it still waits in."""
    try:
        return await asyncio.wait_for(handle.result(), within)
    except TimeoutError:
        report = await handle.query("report", result_type=DrillReport)
        raise AssertionError(f"the drill still waits after {within:.0f}s: {report.phase}") from None


def _group_exists(stack: Stack, region: str, group: str) -> bool:
    try:
        stack.aws.iot(region).describe_thing_group(thingGroupName=group)
        return True
    except ClientError:
        return False


async def _gate(stack: Stack) -> CutoverProgress:
    """The drill's cutover waiting at an approval gate of its policy (every-wave)."""
    s = await until(stack.state, lambda s: s.in_flight, what="the drill's cutover")
    return await until(
        lambda: stack.progress(s.in_flight.cutover_id),
        lambda p: p and (p.waiting_for or "").startswith("approval: wave 0 done"),
        what="the approval gate after the canary",
    )


async def test_a_failed_wave_stops_the_drill_at_once_and_its_group_is_deleted(stack: Stack) -> None:
    await stack.fleet.stop()  # offline devices: the canary confirms 0/4, below its 50% threshold
    drill_id, handle = await _drill(stack, kind="planned", percent=50, hold_seconds=1)
    await until(
        lambda: asyncio.sleep(0, _group_exists(stack, EAST, f"{drill_id}-scope")), bool, what="the sample"
    )
    report = await _ends(handle, 150)
    assert not report.passed and report.restored
    held = [r for r in report.reasons if "held: wave 0 confirmed 0/4, below 50%" in r]
    assert held and "the drill aborted it" in held[0], report.reasons
    assert len(report.cutovers) == 1 and ": aborted (" in report.cutovers[0], report.cutovers
    assert report.failback_seconds is None  # the aborted cutover rolled itself back: nothing to fail back
    for region in (EAST, WEST):
        assert not _group_exists(stack, region, f"{drill_id}-scope")
    s = await stack.state()
    assert s.in_flight is None and s.history[-1].result == "aborted" and not s.homes


async def test_an_abort_while_the_drill_waits_on_its_cutover_aborts_the_cutover(stack: Stack) -> None:
    gates = stack.cfg.model_copy(
        update={"cutover": stack.cfg.cutover.model_copy(update={"approval": "every-wave"})}
    )
    await stack.handle.execute_update("reload_config", gates)
    _, handle = await _drill(stack, kind="planned", hold_seconds=1, approval=None)  # the deployment's policy
    gate = await _gate(stack)  # waits for a person
    await handle.signal("abort", {"by": "e2e", "reason": "test"})
    p = await until(
        lambda: stack.progress(gate.cutover_id),
        lambda p: any("abort requested by drill" in e for e in p.events),
        within=15,
        what="the cutover to get the drill's abort",
    )
    assert any("the drill was aborted while waiting for" in e for e in p.events), p.events
    report = await _ends(handle, 120)
    assert not report.passed and "the drill was aborted" in report.reasons
    assert any(c.startswith(f"{gate.cutover_id}: planned") and "aborted" in c for c in report.cutovers)
    await _restored(stack)


async def test_a_cutover_outlasting_the_drill_timeout_is_aborted_and_the_drill_fails(stack: Stack) -> None:
    _, handle = await _drill(stack, kind="planned", hold_seconds=1, approval="every-wave", timeout_seconds=45)
    gate = await _gate(stack)  # DrillInput.approval reached the cutover, and no one approves
    report = await _ends(handle, 150)
    assert not report.passed and report.restored
    assert f"waited 45s for {gate.cutover_id} (the drill's timeout_seconds)" in report.reasons, report.reasons
    assert (await stack.progress(gate.cutover_id)).result == "aborted"
    await _restored(stack)


async def test_an_outage_drill_whose_devices_never_moved_ends_without_waiting(stack: Stack) -> None:
    """The reported drill: the failover confirmed 0 devices, and its fail back then waited for the
    approval of a canary of devices that had never left. It ends with FAIL and its reasons now: the
    fail back finds every device last heard of at home and confirms them without a job. The recovery
    point counts the fleet's devices only, not every thing of the region."""
    data = stack.aws.iot_data(EAST)

    def reported_home() -> int:
        shadows = (data.get_thing_shadow(thingName=d.thing)["payload"].read() for d in stack.fleet.devices)
        return sum(
            json.loads(s)["state"]["reported"].get("connectivity", {}).get("region") == EAST for s in shadows
        )

    # the fleet last spoke at home: what the fail back goes by (stopping earlier is a race with the reports)
    await until(
        lambda: asyncio.to_thread(reported_home), lambda n: n == DEVICES, what="every device's report"
    )
    await stack.fleet.stop()
    iot = stack.aws.iot(EAST)
    iot.create_thing(thingName="not-in-the-fleet")  # like the health canary: outside the drill's scope
    data.update_thing_shadow(
        thingName="not-in-the-fleet", payload=json.dumps({"state": {"reported": {"x": 1}}})
    )
    drill_id, handle = await _drill(stack, kind="outage", hold_seconds=1, timeout_seconds=120)

    async def health_monitor() -> None:  # what RegionHealthWorkflow would report
        await until(
            lambda: asyncio.to_thread(faults.get_fault, stack.cfg.regions[EAST].endpoint_url),
            lambda f: f.get("mode") == "outage",
            what="the drill's outage",
        )
        await stack.handle.signal(
            "region_health", RegionHealthChange(EAST, "Unhealthy", at=datetime.now(UTC))
        )
        await until(
            lambda: handle.query("report", result_type=DrillReport),
            lambda r: r.phase == "restoring",
            what="the drill to restore",
        )
        await until(
            lambda: asyncio.to_thread(faults.get_fault, stack.cfg.regions[EAST].endpoint_url),
            lambda f: f.get("mode") != "outage",
            what="the fault to clear",
        )
        await stack.handle.signal("region_health", RegionHealthChange(EAST, "Healthy", at=datetime.now(UTC)))

    monitor = asyncio.create_task(health_monitor())
    report = await _ends(handle, 240)
    await monitor
    assert not report.passed
    failover = report.cutovers[0]  # its result is the cutover's to judge; nobody moved
    assert f"emergency {EAST} → {WEST}: " in failover and failover.endswith(f"(0/{DEVICES} confirmed)")
    assert report.restored and report.moved_back == DEVICES, report.reasons  # already there: no job, no wait
    assert not [r for r in report.reasons if r.startswith("restore incomplete")], report.reasons
    # the standby holds the registry but none of the shadows: every device of the fleet would lose them
    assert (report.recovery_point_checked, report.recovery_point_devices) == (DEVICES, DEVICES)
    assert 0 < report.recovery_point_p50_seconds <= report.recovery_point_max_seconds
    assert faults.get_fault(stack.cfg.regions[EAST].endpoint_url).get("mode") != "outage"
    assert (await stack.state()).in_flight is None
