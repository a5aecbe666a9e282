"""ShadowSyncWorkflow end to end: real Temporal dev server, real worker, one emulator per region."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.context import Deployments
from activities.shadows import ShadowActivities, ShadowParityInput
from core.config import DeploymentConfig
from rehearsal import faults, pki
from tests.shadow_helpers import NAMED, SOURCE, TARGET, fast_config, fleet, read, target_versions, write
from worker import build_worker
from workflows.shadow_sync import ShadowSyncInput, ShadowSyncResult, ShadowSyncWorkflow


@pytest.fixture
def cfg(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path) -> DeploymentConfig:
    return fast_config(emulators, local_ca.cert_pem, tmp_path)


async def start(client: Client, tq: str, inp: ShadowSyncInput) -> WorkflowHandle:
    """Started with a deadline, so that a workflow bug fails the test instead of hanging it."""
    return await client.start_workflow(
        ShadowSyncWorkflow.run,
        inp,
        id=f"shadows-test-{uuid.uuid4().hex[:8]}",
        task_queue=tq,
        execution_timeout=timedelta(minutes=4),
    )


def parity(cfg: DeploymentConfig, group: str | None = None):
    return ShadowActivities(Deployments([cfg])).check_shadow_parity(
        ShadowParityInput(cfg.name, SOURCE, TARGET, group, concurrency=8)
    )


async def history_length(client: Client, workflow_id: str) -> int:
    return len([e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()])


async def test_500_things_fan_out_to_children_and_reach_parity(
    temporal_env: WorkflowEnvironment, task_queue: str, cfg: DeploymentConfig
) -> None:
    client = temporal_env.client
    aws = Deployments([cfg]).aws(cfg.name)
    things = fleet(aws, 500, group="fleet-500")
    await asyncio.sleep(1.1)  # the devices' writes below are provably newer (timestamps are seconds)
    reported_in_target = things[:25]  # these devices already moved and reported in the target
    for thing in reported_in_target:
        write(aws, TARGET, thing, {"reported": {"temp": 31, "connectivity": {"region": TARGET, "epoch": 2}}})

    inp = ShadowSyncInput(
        cfg.name, SOURCE, TARGET, thing_group="fleet-500", page_size=50, things_per_child=150, concurrency=8
    )
    async with build_worker(client, task_queue, Deployments([cfg]), max_activity_threads=8):
        handle = await start(client, task_queue, inp)
        result = await handle.result()
        progress = await handle.query(ShadowSyncWorkflow.progress)

        assert (result.things_scanned, result.failed, result.failures) == (500, 0, [])
        assert (result.shadows_copied, result.merged, result.unchanged) == (1500 - 25, 25, 0)
        assert (
            result.stale_leaves == 475 * 8 + 25 * 7
        )  # classic 4 leaves (3 where the device wrote), named 2+2
        assert (progress.phase, progress.children_done) == ("done", 4)
        report = parity(cfg, "fleet-500")
        assert (report.things_checked, report.differing, report.ok) == (500, 0, True)
        for thing in reported_in_target:
            assert read(aws, TARGET, thing)["state"]["reported"]["connectivity"] == {
                "region": TARGET,
                "epoch": 2,
            }

        parent = await history_length(client, handle.id)
        children = [await history_length(client, f"{handle.id}-r1-c{i}") for i in range(4)]
        print(f"history events: parent {parent}, children {children} (500 things, 4 children, 10 pages)")
        assert parent < 100 and max(children) < 40  # grows with pages and chunks, never with things

        # the whole-fleet scope pages the registry and continues-as-new; a second sync changes nothing
        again = ShadowSyncInput(
            cfg.name, SOURCE, TARGET, page_size=100, things_per_child=200, chunks_per_run=1, concurrency=8
        )
        result = await (await start(client, task_queue, again)).result()
        assert (result.things_scanned, result.unchanged, result.shadows_copied, result.merged) == (
            500,
            1500,
            0,
            0,
        )


async def test_device_writes_in_the_target_during_a_sync_are_kept(
    temporal_env: WorkflowEnvironment, task_queue: str, cfg: DeploymentConfig
) -> None:
    client = temporal_env.client
    aws = Deployments([cfg]).aws(cfg.name)
    things = fleet(aws, 150)
    for thing in things:
        write(aws, TARGET, thing, {"reported": {"boot": 1}})
    last: dict[str, int] = {}
    stop = threading.Event()

    def devices() -> None:
        rng, seq = random.Random(7), 0
        while not stop.is_set():
            thing, seq = rng.choice(things), seq + 1
            write(aws, TARGET, thing, {"reported": {"temp": 1000 + seq, "seq": seq}})
            last[thing] = seq

    inp = ShadowSyncInput(cfg.name, SOURCE, TARGET, things=things, page_size=25, concurrency=4)
    device_thread = threading.Thread(target=devices)
    async with build_worker(client, task_queue, Deployments([cfg]), max_activity_threads=8):
        device_thread.start()
        try:
            result = await (await start(client, task_queue, inp)).result()
        finally:
            stop.set()
            device_thread.join()

    assert (result.things_scanned, result.failed) == (150, 0)
    assert len(last) > 20, "the devices should have written during the sync"
    for thing, seq in last.items():
        reported = read(aws, TARGET, thing)["state"]["reported"]
        assert (reported["seq"], reported["temp"], reported["boot"]) == (seq, 1000 + seq, 1)
    assert parity(cfg).ok


async def test_outage_mid_sync_waits_then_finishes(
    temporal_env: WorkflowEnvironment, task_queue: str, cfg: DeploymentConfig
) -> None:
    client = temporal_env.client
    aws = Deployments([cfg]).aws(cfg.name)
    things = fleet(aws, 120)
    target_url = cfg.regions[TARGET].endpoint_url
    assert target_url
    inp = ShadowSyncInput(
        cfg.name,
        SOURCE,
        TARGET,
        things=things,
        page_size=10,
        concurrency=2,
        pages_in_flight=1,
        retry_max_interval_seconds=1,
    )
    async with build_worker(client, task_queue, Deployments([cfg]), max_activity_threads=8):
        handle = await start(client, task_queue, inp)
        while (await handle.query(ShadowSyncWorkflow.progress)).pages_done < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        faults.set_fault(target_url, "outage")
        try:
            await asyncio.sleep(2)
            stalled = await handle.query(ShadowSyncWorkflow.progress)
            await asyncio.sleep(3)
            assert (await handle.query(ShadowSyncWorkflow.progress)).pages_done == stalled.pages_done
            assert stalled.totals.things_scanned < 120
        finally:
            faults.set_fault(target_url, "clear")
        result = await handle.result()

    assert (result.things_scanned, result.failed) == (120, 0)
    assert result.shadows_copied + result.unchanged == 360 and result.merged == 0
    assert target_versions(aws, things) == [1] * 360  # every shadow written exactly once
    assert parity(cfg).ok


async def test_worker_killed_mid_page_loses_and_duplicates_nothing(
    temporal_env: WorkflowEnvironment, task_queue: str, cfg: DeploymentConfig
) -> None:
    client = temporal_env.client
    aws = Deployments([cfg]).aws(cfg.name)
    things = fleet(aws, 100)
    inp = ShadowSyncInput(
        cfg.name,
        SOURCE,
        TARGET,
        things=things,
        page_size=100,
        concurrency=2,
        heartbeat_timeout_seconds=5,
        retry_max_interval_seconds=1,
    )
    faults.set_fault(cfg.regions[TARGET].endpoint_url or "", "latency", latency_ms=20)
    try:
        first = build_worker(client, task_queue, Deployments([cfg]), max_activity_threads=4)
        running = asyncio.create_task(first.run())
        handle = await start(client, task_queue, inp)
        while not await asyncio.to_thread(_has_shadow, aws, things[15]):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        await first.shutdown()  # mid-page: the activity is cancelled, its heartbeat keeps what it did
        await running
        assert not _has_shadow(aws, things[-1])
        async with build_worker(client, task_queue, Deployments([cfg]), max_activity_threads=4):
            result: ShadowSyncResult = await handle.result()
    finally:
        faults.set_fault(cfg.regions[TARGET].endpoint_url or "", "clear")

    assert (result.things_scanned, result.failed, result.merged) == (100, 0, 0)
    assert result.shadows_copied + result.unchanged == 300
    # at least 16 things (48 shadows) were done before the kill: the retry resumed from the heartbeat
    assert result.unchanged < 48, f"the retried page redid {result.unchanged // 3} things"
    assert target_versions(aws, things) == [1] * 300  # nothing written twice
    assert parity(cfg).ok


def _has_shadow(aws, thing: str) -> bool:
    try:
        read(aws, TARGET, thing, NAMED[-1])
        return True
    except aws.iot_data(TARGET).exceptions.ResourceNotFoundException:
        return False


async def test_periodic_sync_continues_as_new_each_round_and_picks_up_new_writes(
    temporal_env: WorkflowEnvironment, task_queue: str, cfg: DeploymentConfig
) -> None:
    client = temporal_env.client
    aws = Deployments([cfg]).aws(cfg.name)
    things = fleet(aws, 5)
    inp = ShadowSyncInput(cfg.name, SOURCE, TARGET, things=things, mode="periodic", interval_seconds=1)
    async with build_worker(client, task_queue, Deployments([cfg]), max_activity_threads=4):
        handle = await start(client, task_queue, inp)
        while (progress := await handle.query(ShadowSyncWorkflow.progress)).round < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.3)
        assert progress.last_round is not None
        assert (progress.last_round.things_scanned, progress.last_round.shadows_copied) == (5, 15)
        await asyncio.sleep(1.1)
        await asyncio.to_thread(write, aws, SOURCE, things[3], {"reported": {"late": 1}}, "config")
        while (progress := await handle.query(ShadowSyncWorkflow.progress)).round < 4:  # noqa: ASYNC110
            await asyncio.sleep(0.3)
        await handle.terminate("test over")
    assert read(aws, TARGET, things[3], "config")["state"]["reported"]["late"] == 1
    first_run = client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
    assert await history_length(client, handle.id) < 40
    assert len([e async for e in first_run.fetch_history_events()]) < 40


async def test_started_by_name_with_a_plain_dict_as_the_cutover_does(
    temporal_env: WorkflowEnvironment, task_queue: str, cfg: DeploymentConfig
) -> None:
    client = temporal_env.client
    fleet(Deployments([cfg]).aws(cfg.name), 4, group="scope-a")
    inp = {
        "deployment": cfg.name,
        "source": SOURCE,
        "target": TARGET,
        "thing_group": "scope-a",
        "mode": "one-shot",
    }
    async with build_worker(client, task_queue, Deployments([cfg]), max_activity_threads=4):
        result = await client.execute_workflow(
            "ShadowSyncWorkflow",
            inp,
            id=f"cutover-x-1-shadows-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
            result_type=dict,
            execution_timeout=timedelta(minutes=2),
        )
    assert (result["things_scanned"], result["shadows_copied"], result["stale_leaves"]) == (4, 12, 4 * 8)
    assert len(result["stale_sample"]) == 20
