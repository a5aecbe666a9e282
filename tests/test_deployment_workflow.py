"""DeploymentWorkflow on the dev server with the real activities against the emulators.

The fleet group is empty here, so cutovers are quick; moving real devices is tested end to end
with the simulator in test_cutover_e2e.py.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.context import Deployments
from core.aws import AwsClients
from core.config import DeploymentConfig
from core.models import CutoverRequest, RegionHealthChange
from tests.conftest import make_config
from worker import build_worker
from workflows.deployment import DeploymentInput, DeploymentState, DeploymentWorkflow


@pytest.fixture
def cfg(emulators: dict[str, str], local_ca, tmp_path: Path) -> DeploymentConfig:
    ca = tmp_path / "ca.pem"
    ca.write_text(local_ca.cert_pem)
    cfg = make_config(
        emulators,
        ca,
        cutover={"verify_timeout_seconds": 3, "verify_poll_seconds": 1, "cooldown_minutes": 30},
        failover={"min_interval_minutes": 0, "max_per_day": 5},
    )
    aws = AwsClients(cfg)
    for region in cfg.regions:
        aws.iot(region).create_thing_group(thingGroupName=cfg.fleet.thing_group)
    return cfg


async def _state(handle: WorkflowHandle) -> DeploymentState:
    for _ in range(200):
        s = await handle.query(DeploymentWorkflow.state)
        if s and s.initialized:
            return s
        await asyncio.sleep(0.2)
    raise AssertionError("deployment never initialized")


async def _refused(handle: WorkflowHandle, req: CutoverRequest) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as e:
        await handle.execute_update(DeploymentWorkflow.request_cutover, req)
    return e.value.cause.message


async def _health(handle: WorkflowHandle, region: str, state: str, since: datetime | None = None) -> None:
    change = RegionHealthChange(region=region, state=state, at=since or datetime.now(UTC))
    await handle.signal(DeploymentWorkflow.region_health, change)


async def _wait(handle: WorkflowHandle, check, what: str) -> DeploymentState:
    for _ in range(300):
        s = await handle.query(DeploymentWorkflow.state)
        if check(s):
            return s
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {s}")


async def _start(client: Client, cfg: DeploymentConfig, task_queue: str) -> WorkflowHandle:
    return await client.start_workflow(
        DeploymentWorkflow.run,
        DeploymentInput(config=cfg),
        id=f"deployment-{cfg.name}-{uuid.uuid4().hex[:6]}",
        task_queue=task_queue,
    )


async def test_validators_refuse_bad_requests_before_anything_is_recorded(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    client = temporal_env.client
    async with build_worker(client, task_queue, Deployments([cfg], client=client)):
        handle = await _start(client, cfg, task_queue)
        s = await _state(handle)
        assert (s.active_region, s.epoch) == ("us-east-1", 1)  # first bootstrap answer written

        assert "unknown region 'eu-central-9'" in await _refused(
            handle, CutoverRequest(target="eu-central-9")
        )
        assert "not healthy" in await _refused(handle, CutoverRequest(target="us-west-2"))
        assert "already active" in await _refused(handle, CutoverRequest(target="us-east-1"))
        assert "force needs a reason" in await _refused(
            handle, CutoverRequest(target="us-west-2", force=True, requested_by="")
        )
        after = await handle.query(DeploymentWorkflow.state)
        assert after.epoch == 1 and after.in_flight is None and not after.history  # nothing recorded

        await _health(handle, "us-west-2", "Healthy")
        await _wait(handle, lambda st: st.health["us-west-2"].state == "Healthy", "health")
        started = await handle.execute_update(
            DeploymentWorkflow.request_cutover,
            CutoverRequest(target="us-west-2", mode="emergency", reason="test"),
        )
        assert started.cutover_id == f"cutover-{cfg.name}-2" and started.epoch == 2
        assert "is running" in await _refused(handle, CutoverRequest(target="us-west-2"))

        done = await _wait(handle, lambda st: st.history, "the cutover to finish")
        assert done.history[-1].result in ("succeeded", "succeeded-with-stragglers")
        assert done.active_region == "us-west-2" and done.epoch == 3  # epoch 3 reserved for a rollback
        await _health(handle, "us-east-1", "Healthy")
        assert "cooldown" in await _refused(handle, CutoverRequest(target="us-east-1"))
        forced = await handle.execute_update(
            DeploymentWorkflow.request_cutover,
            CutoverRequest(
                target="us-east-1",
                mode="emergency",
                force=True,
                reason="failback after test",
                requested_by="tester",
            ),
        )
        assert forced.epoch == 4
        final = await _wait(handle, lambda st: len(st.history) == 2, "the forced cutover")
        assert final.active_region == "us-east-1"
        assert any("FORCED by tester" in d.reason for d in final.decisions)
        await handle.terminate()


async def test_unhealthy_active_region_fails_over_automatically_and_never_back(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    client = temporal_env.client
    async with build_worker(client, task_queue, Deployments([cfg], client=client)):
        handle = await _start(client, cfg, task_queue)
        await _state(handle)
        await _health(handle, "us-west-2", "Healthy")
        await _health(handle, "us-east-1", "Degraded")  # degraded triggers nothing
        await asyncio.sleep(1)
        assert not (await handle.query(DeploymentWorkflow.state)).history

        await _health(handle, "us-east-1", "Unhealthy")
        s = await _wait(handle, lambda st: st.history, "the automatic failover")
        assert s.active_region == "us-west-2"
        assert s.history[-1].automatic and s.history[-1].mode == "emergency"
        assert any(d.kind == "automatic-failover" for d in s.decisions)

        # the new active region fails too, but home (us-east-1) is unhealthy: refused, with its rule
        await _health(handle, "us-west-2", "Unhealthy")
        s = await _wait(handle, lambda st: any(d.kind == "refused" for d in st.decisions), "a refusal")
        refusal = next(d for d in s.decisions if d.kind == "refused")
        assert refusal.rule and refusal.reason
        assert len(s.history) == 1

        # home healthy again (for an hour): never failed back automatically, offered to a person
        await _health(handle, "us-east-1", "Healthy", since=datetime.now(UTC) - timedelta(hours=1))
        s = await _wait(
            handle,
            lambda st: any(d.rule == "no_automatic_failback" for d in st.decisions),
            "the automatic failback refused",
        )
        assert s.failback_offer and "cutover --to us-east-1 --reason failback" in s.failback_offer
        await _health(handle, "us-west-2", "Healthy")
        s = await _wait(handle, lambda st: st.health["us-west-2"].state == "Healthy", "health")
        assert s.failback_offer and "us-east-1 healthy for 60m" in s.failback_offer  # still offered
        await asyncio.sleep(1)
        assert len((await handle.query(DeploymentWorkflow.state)).history) == 1
        await handle.terminate()


async def test_deployment_lives_through_idle_hours(
    time_skipping_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    """The entity wakes every minute to re-check the safety rules; quiet hours must not end it."""
    client = time_skipping_env.client
    async with build_worker(client, task_queue, Deployments([cfg], client=client)):
        handle = await _start(client, cfg, task_queue)
        await _state(handle)
        await time_skipping_env.sleep(timedelta(hours=3))
        desc = await handle.describe()
        assert desc.status == WorkflowExecutionStatus.RUNNING
        assert (await handle.query(DeploymentWorkflow.state)).active_region == "us-east-1"
        await handle.terminate()
