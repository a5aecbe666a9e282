"""The bootstrap activities called from a workflow on the real dev server: inputs, outputs and the
StaleEpoch refusal survive the data converter the way DeploymentWorkflow will see them."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from activities import bootstrap as bootstrap_activities
    from activities.bootstrap import BootstrapRecord, FlipBootstrapInput, FlipResult, ReadBootstrapInput
    from activities.context import Deployments
    from core.config import DeploymentConfig


@dataclass
class FlipTwiceInput:
    deployment: str
    regions: list[str]


@dataclass
class FlipTwiceResult:
    first: FlipResult
    record: BootstrapRecord | None
    stale_type: str
    stale_refused: list[str]


@workflow.defn
class FlipTwiceWorkflow:
    """Flip to the second region at epoch 2, read it back, then try a stale epoch 1."""

    @workflow.run
    async def run(self, inp: FlipTwiceInput) -> FlipTwiceResult:
        opts = {
            "start_to_close_timeout": timedelta(seconds=60),
            "retry_policy": RetryPolicy(maximum_attempts=2),
        }
        first = await workflow.execute_activity(
            "flip_bootstrap",
            FlipBootstrapInput(inp.deployment, 2, inp.regions[1], inp.regions, reason="test"),
            result_type=FlipResult,
            **opts,
        )
        record = await workflow.execute_activity(
            "read_bootstrap",
            ReadBootstrapInput(inp.deployment, inp.regions[0]),
            result_type=BootstrapRecord,
            **opts,
        )
        try:
            await workflow.execute_activity(
                "flip_bootstrap", FlipBootstrapInput(inp.deployment, 1, inp.regions[0], inp.regions), **opts
            )
            return FlipTwiceResult(first, record, "", [])
        except ActivityError as e:
            cause = e.cause
            assert isinstance(cause, ApplicationError)
            return FlipTwiceResult(first, record, cause.type or "", cause.details[0]["refused"])


async def test_flip_and_read_through_a_workflow(
    temporal_env: WorkflowEnvironment, config: DeploymentConfig, task_queue: str
) -> None:
    acts = bootstrap_activities.activities(Deployments([config]))
    async with Worker(
        temporal_env.client,
        task_queue=task_queue,
        workflows=[FlipTwiceWorkflow],
        activities=acts,
        activity_executor=ThreadPoolExecutor(4),
    ):
        result = await temporal_env.client.execute_workflow(
            FlipTwiceWorkflow.run,
            FlipTwiceInput(config.name, config.region_names),
            id=f"flip-twice-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
    assert sorted(result.first.written) == sorted(config.region_names)
    assert result.record is not None and result.record.epoch == 2
    assert result.record.order == [config.region_names[1], config.region_names[0]]
    assert result.stale_type == "StaleEpoch"
    assert sorted(result.stale_refused) == sorted(config.region_names)
