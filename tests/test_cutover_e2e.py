"""Cutovers end to end on the e2e stack (tests/e2e_stack.py).

A planned cutover moves every healthy device (faulty ones are reported as stragglers), gated by an
approval sent with the Temporal CLI; an abort rolls the fleet back; an emergency cutover with the
source down completes without it; a worker killed mid-cutover resumes with no duplicate job.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.worker import Replayer

from cli import Exit
from core.aws import all_items
from core.models import RegionHealthChange
from core.temporal import DATA_CONVERTER
from rehearsal import faults
from rehearsal.processes import tool_path
from tests.e2e_stack import DEVICES, EAST, FAULTY, WEST, Stack, until
from workflows import all_workflows

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent


async def test_planned_cutover_with_cli_approval_moves_every_healthy_device(stack: Stack) -> None:
    started = await stack.cutover(target=WEST, reason="e2e", approval="canary")
    p = await until(
        lambda: stack.progress(started.cutover_id),
        lambda p: p and (p.waiting_for or "").startswith("approval"),
        what="the approval gate after the canary",
    )
    assert p.waves[0].size == 4

    # a real client, the Temporal CLI, approves
    addr = stack.client.service_client.config.target_host
    out = await asyncio.to_thread(
        subprocess.run,
        [
            tool_path("temporal"),
            "workflow",
            "signal",
            "--workflow-id",
            started.cutover_id,
            "--name",
            "approve",
            "--address",
            addr,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr

    p = await until(lambda: stack.progress(started.cutover_id), lambda p: p and p.result, what="the cutover")
    assert p.result == "succeeded-with-stragglers", p
    assert p.confirmed == DEVICES - FAULTY and p.devices_total == DEVICES
    assert len(p.stragglers) == FAULTY
    assert stack.regions_of_devices() == {WEST: DEVICES - FAULTY, EAST: FAULTY}

    thing = next(d.thing for d in stack.fleet.devices if d.region == WEST)
    for region in (EAST, WEST):  # every region's bootstrap now answers the standby first
        answer = stack.bootstrap_answer(region, thing)
        assert answer["endpoints"][0]["region"] == WEST and answer["epoch"] == started.epoch
    iot = stack.aws.iot(EAST)
    jobs = [j["jobId"] for j in all_items(iot, "list_jobs", "jobs")]
    assert jobs and all(j.startswith(f"{stack.cfg.name}-{started.epoch}-") for j in jobs)
    succeeded = sum(
        iot.describe_job(jobId=j)["job"]["jobProcessDetails"].get("numberOfSucceededThings", 0) for j in jobs
    )
    assert succeeded == DEVICES - FAULTY
    s = await stack.state()
    assert s.active_region == WEST and s.history[-1].stragglers == FAULTY

    history = await stack.client.get_workflow_handle(started.cutover_id).fetch_history()
    assert len(history.events) < 400  # grows with waves and pages, not with devices
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    for name in ("fill_group", "flip_bootstrap"):  # a dead worker is noticed within a minute (item 11)
        beats = [
            a.heartbeat_timeout.ToTimedelta().total_seconds()
            for a in scheduled
            if a.activity_type.name == name
        ]
        assert beats and all(0 < b <= 60 for b in beats), (name, beats)
    # the recorded histories replay against today's code: changes to running workflows stay safe
    replayer = Replayer(workflows=all_workflows(), data_converter=DATA_CONVERTER)
    await replayer.replay_workflow(history)
    await replayer.replay_workflow(await stack.handle.fetch_history())


async def test_abort_mid_way_rolls_the_fleet_back(stack: Stack) -> None:
    started = await stack.cutover(target=WEST, reason="e2e abort", approval="every-wave")
    await until(
        lambda: stack.progress(started.cutover_id),
        lambda p: p and (p.waiting_for or "").startswith("approval"),
        what="the first approval gate",
    )
    # an application writes to a device that moved: the rollback must not lose it (item 15)
    moved = next(d.thing for d in stack.fleet.devices if d.region == WEST)
    desired = json.dumps({"state": {"desired": {"setpoint": 42}}})
    stack.aws.iot_data(WEST).update_thing_shadow(thingName=moved, payload=desired)
    await stack.client.get_workflow_handle(started.cutover_id).signal("pause")
    await stack.client.get_workflow_handle(started.cutover_id).signal(
        "abort", {"by": "e2e", "reason": "test"}
    )
    p = await until(lambda: stack.progress(started.cutover_id), lambda p: p and p.result, what="the rollback")
    assert p.result == "aborted"
    await until(
        lambda: asyncio.sleep(0, stack.regions_of_devices()),
        lambda c: c.get(EAST) == DEVICES,
        what="every device back in us-east-1",
    )
    shadow = json.loads(stack.aws.iot_data(EAST).get_thing_shadow(thingName=moved)["payload"].read())
    assert shadow["state"]["desired"]["setpoint"] == 42
    with pytest.raises(stack.aws.iot(WEST).exceptions.ResourceNotFoundException):  # item 20
        stack.aws.iot(WEST).describe_thing_group(
            thingGroupName=f"{stack.cfg.name}-{started.epoch + 1}-rollback"
        )
    thing = stack.fleet.devices[0].thing
    answer = stack.bootstrap_answer(EAST, thing)
    assert answer["endpoints"][0]["region"] == EAST and answer["epoch"] == started.epoch + 1
    s = await stack.state()
    assert s.active_region == EAST and s.epoch == started.epoch + 1


async def test_emergency_cutover_does_not_wait_on_the_dead_region(stack: Stack) -> None:
    east = stack.cfg.regions[EAST].endpoint_url
    faults.set_fault(east, "outage")
    try:
        await stack.handle.signal(
            "region_health", RegionHealthChange(EAST, "Unhealthy", at=datetime.now(UTC))
        )
        s = await until(stack.state, lambda s: s.history, what="the automatic emergency cutover")
        record = s.history[-1]
        assert record.mode == "emergency" and record.automatic and record.result.startswith("succeeded")
        assert s.active_region == WEST
        assert stack.regions_of_devices().get(WEST, 0) >= DEVICES - FAULTY
        assert EAST in s.catch_up  # east missed the flip
    finally:
        faults.set_fault(east, "clear")
    await stack.handle.signal("region_health", RegionHealthChange(EAST, "Healthy", at=datetime.now(UTC)))
    s = await until(stack.state, lambda s: EAST not in s.catch_up, what="the catch-up of us-east-1")
    thing = stack.fleet.devices[0].thing
    answer = await until(
        lambda: asyncio.to_thread(stack.try_bootstrap_answer, EAST, thing),
        bool,
        within=30,
        what="the east bootstrap service to notice its region is back",
    )
    assert answer["endpoints"][0]["region"] == WEST
    assert any(d.kind == "catch-up" for d in s.decisions)


async def test_worker_killed_mid_cutover_resumes_without_duplicates(stack: Stack) -> None:
    started = await stack.cutover(target=WEST, reason="e2e restart")
    await until(
        lambda: stack.progress(started.cutover_id), lambda p: p and len(p.waves) >= 2, what="the second wave"
    )
    await stack.stop_worker()
    await asyncio.sleep(2)  # devices keep moving while no worker runs
    stack.start_worker()
    p = await until(lambda: stack.progress(started.cutover_id), lambda p: p and p.result, what="the cutover")
    assert p.result.startswith("succeeded") and p.epoch == started.epoch
    forward = [w for w in p.waves if w.kind == "wave"]
    assert [w.index for w in forward] == list(range(len(forward)))  # no wave skipped
    assert sum(w.size for w in forward) == DEVICES  # every device in exactly one wave
    jobs = sorted(j["jobId"] for j in all_items(stack.aws.iot(EAST), "list_jobs", "jobs"))
    assert jobs == sorted({w.job_id for w in p.waves})  # one job per wave, none duplicated
    assert stack.regions_of_devices().get(WEST) == DEVICES - FAULTY


def _starter(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    """The operator CLI, pointed at the test's Temporal server."""
    env = {**os.environ, "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host}
    return subprocess.run(
        [sys.executable, "starter.py", "--config", stack.cfg.source_path, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def test_pause_holds_the_next_wave_until_resumed_from_the_starter(stack: Stack) -> None:
    started = await stack.cutover(target=WEST, reason="e2e pause")
    await until(lambda: stack.progress(started.cutover_id), lambda p: p and p.waves, what="the canary wave")
    paused = await asyncio.to_thread(_starter, stack, "pause", started.cutover_id, "--by", "e2e")
    assert paused.returncode == 0, paused.stderr
    held = await until(lambda: stack.progress(started.cutover_id), lambda p: p.paused, what="the pause")
    waves = len(held.waves)
    await asyncio.sleep(5)
    still = await stack.progress(started.cutover_id)
    assert still.paused and len(still.waves) == waves and still.result is None  # no new wave started

    status = await asyncio.to_thread(_starter, stack, "status")
    assert status.returncode == 0 and started.cutover_id in status.stdout and "paused" in status.stdout
    bad = await asyncio.to_thread(_starter, stack, "approve", started.cutover_id)
    assert (
        bad.returncode == Exit.REFUSED
        and "nothing waits for approval" in bad.stderr
        and "Traceback" not in bad.stderr
    )

    resumed = await asyncio.to_thread(_starter, stack, "resume", started.cutover_id)
    assert resumed.returncode == 0, resumed.stderr
    p = await until(lambda: stack.progress(started.cutover_id), lambda p: p.result, what="the cutover")
    assert p.result.startswith("succeeded") and len(p.waves) > waves


async def test_devices_already_in_the_target_are_confirmed_without_a_job(stack: Stack) -> None:
    """A planned cutover toward where the devices already are (they failed over on their own, or a
    drill's fail back of devices that never left) must not wait on jobs nobody will pick up."""
    east = stack.cfg.regions[EAST].endpoint_url
    faults.set_fault(east, "outage")  # a blip the health monitors never call Unhealthy
    try:
        await until(
            lambda: asyncio.sleep(0, stack.regions_of_devices()),
            lambda c: c.get(WEST) == DEVICES,
            what="every device failing over to us-west-2 on its own",
        )
    finally:
        faults.set_fault(east, "clear")
    started = await stack.cutover(target=WEST, reason="catch the controller up with the devices")
    p = await until(lambda: stack.progress(started.cutover_id), lambda p: p and p.result, what="the cutover")
    assert p.result == "succeeded", p
    assert (p.already_there, p.confirmed, p.devices_total) == (DEVICES, DEVICES, DEVICES)
    assert not p.waves and not list(all_items(stack.aws.iot(EAST), "list_jobs", "jobs"))
