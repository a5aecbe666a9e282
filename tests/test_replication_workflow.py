"""RegistryReplicationWorkflow on a real Temporal dev server and the emulators."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.context import Deployments
from activities.registry import registry_parity
from core.aws import AwsClients, all_items
from core.config import DeploymentConfig
from core.models import REPLICA_STATUS_SIGNAL, ReplicaReport
from rehearsal import pki
from tests.conftest import make_config
from tests.replication_fleet import provision
from worker import build_worker
from workflows.replication import (
    DEAD_LETTERED,
    FIRST_RECONCILE,
    ReconcileNowInput,
    RegistryReplicationWorkflow,
    ReplicationInput,
    ReplicationState,
    replica_verdict,
)

E, W = "us-east-1", "us-west-2"


def _config(emulators: dict[str, str], ca: pki.LocalCA, tmp_path: Path, **per_api: float) -> DeploymentConfig:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.cert_pem)
    return make_config(emulators, ca_file, quotas={"default_rps": 5000, "per_api": per_api})


async def _status(handle: WorkflowHandle) -> ReplicationState:
    return await handle.query(RegistryReplicationWorkflow.status)


async def _until(handle: WorkflowHandle, check, wait_s: float = 60) -> ReplicationState:
    for _ in range(int(wait_s * 4)):
        s = await _status(handle)
        if check(s):
            return s
        await asyncio.sleep(0.25)
    raise AssertionError(f"condition not reached; status: {await _status(handle)}")


async def test_reconcile_now_status_events_and_continue_as_new(
    temporal_env: WorkflowEnvironment,
    emulators: dict[str, str],
    local_ca: pki.LocalCA,
    tmp_path: Path,
    task_queue: str,
) -> None:
    cfg = _config(emulators, local_ca, tmp_path)
    aws = AwsClients(cfg)
    provision(aws.iot(E), local_ca, 6)
    client = temporal_env.client
    async with build_worker(client, task_queue, Deployments([cfg]), 8):
        handle = await client.start_workflow(
            RegistryReplicationWorkflow.run,
            ReplicationInput(cfg.name, reconcile_interval_seconds=3600, drain_seconds=1, reconcile_on_start=False,
                             drains_per_run=6),
            id=f"replication-{cfg.name}-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
        )  # fmt: skip
        res = await handle.execute_update(RegistryReplicationWorkflow.reconcile_now, ReconcileNowInput())
        assert res.reconciles == 1 and res.results[0].applied["thing:create"] == 6
        assert res.drift["thing"] == 6
        assert registry_parity(aws, E, W).ok
        url = aws.sqs(E).get_queue_url(QueueName=cfg.replication.events_queue)["QueueUrl"]
        aws.iot(E).update_thing(
            thingName="dev-0001", attributePayload={"attributes": {"sku": "z"}, "merge": True}
        )
        for body in (
            "not json",
            json.dumps({"eventType": "THING_EVENT", "operation": "UPDATED", "thingName": "dev-0001"}),
        ):
            aws.sqs(E).send_message(QueueUrl=url, MessageBody=body)
        s = await _until(handle, lambda s: s.events_applied >= 1 and s.dead_letter_count >= 1)
        assert s.dead_letters[-1].reason == "bad_json" and s.last_full_reconcile is not None
        assert aws.iot(W).describe_thing(thingName="dev-0001")["attributes"]["sku"] == "z"
        meta = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
        assert "dead letters: 1 (latest: bad_json" in meta.current_details  # what the UI shows
        assert "us-east-1 → us-west-2" in meta.current_details
        # continued as new after a few drains, state carried over
        s = await _until(handle, lambda s: s.runs >= 2)
        assert s.reconciles == 1 and s.dead_letter_count == 1
        desc = await handle.describe()
        assert desc.status is not None
        await handle.terminate("test done")


async def test_worker_killed_mid_reconcile_resumes_without_duplicates_or_losses(
    temporal_env: WorkflowEnvironment,
    emulators: dict[str, str],
    local_ca: pki.LocalCA,
    tmp_path: Path,
    task_queue: str,
) -> None:
    n = 40
    # slow creates (10/s) so that the reconcile is still running when the worker dies
    cfg = _config(emulators, local_ca, tmp_path, CreateThing=10, RegisterCertificate=20)
    aws = AwsClients(cfg)
    provision(aws.iot(E), local_ca, n)
    client = temporal_env.client
    handle = None
    worker = build_worker(client, task_queue, Deployments([cfg]), 8)
    async with worker:
        handle = await client.start_workflow(
            RegistryReplicationWorkflow.run,
            ReplicationInput(cfg.name, reconcile_interval_seconds=3600, drain_seconds=1, page_size=10,
                             heartbeat_timeout_seconds=3),
            id=f"replication-{cfg.name}-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
        )  # fmt: skip
        for _ in range(240):  # until the reconcile has checkpointed a page of things
            desc = await handle.describe()
            details = [
                a.heartbeat_details for a in desc.raw_description.pending_activities
                if a.activity_type.name == "reconcile_registry" and a.heartbeat_details.payloads
            ]  # fmt: skip
            if details and b'"phase":"things"' in details[0].payloads[0].data.replace(b" ", b""):
                break
            await asyncio.sleep(0.25)
        else:
            pytest.fail("the reconcile never reached the things phase")
    # the first worker is gone mid-reconcile; a new one picks the activity up after its heartbeat timeout
    async with build_worker(client, task_queue, Deployments([cfg]), 8):
        s = await _until(handle, lambda s: s.reconciles >= 1, wait_s=90)
    assert not s.last_error and s.last_results[0].failed == {}
    assert s.last_results[0].resumed_from.startswith("things@")  # continued from its checkpoint
    report = registry_parity(aws, E, W)
    assert report.ok, report.render()
    things = [t["thingName"] for t in all_items(aws.iot(W), "list_things", "things")]
    assert sorted(things) == sorted(set(things)) and len(things) == n
    certs = [c["certificateId"] for c in all_items(aws.iot(W), "list_certificates", "certificates")]
    assert len(certs) == len(set(certs)) == n
    for t in things[:10]:
        assert len(aws.iot(W).list_thing_principals(thingName=t)["principals"]) == 1
    attempts = [
        e.activity_task_started_event_attributes.attempt
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert max(attempts) >= 2  # the reconcile really was retried, and resumed from its checkpoint
    await handle.terminate("test done")


async def test_replicate_cli_starts_once_and_reconciles_now(
    temporal_env: WorkflowEnvironment,
    emulators: dict[str, str],
    local_ca: pki.LocalCA,
    tmp_path: Path,
    task_queue: str,
    capsys: pytest.CaptureFixture,
) -> None:
    import starter

    cfg = _config(emulators, local_ca, tmp_path)
    aws = AwsClients(cfg)
    provision(aws.iot(E), local_ca, 3)
    address = temporal_env.client.service_client.config.target_host
    regions = "".join(
        f'[regions.{r}]\nrole = "{c.role}"\nendpoint_url = "{c.endpoint_url}"\n\n'
        for r, c in cfg.regions.items()
    )
    toml = tmp_path / "deployment.toml"
    toml.write_text(
        f'[deployment]\nname = "{cfg.name}"\nmode = "active-passive"\nca_certificate = "{cfg.ca_certificate}"\n\n'
        f'{regions}[fleet]\nthing_group = "test-fleet"\npolicy_name = "test-policy"\n\n'
        f"[replication]\nreconcile_interval_minutes = 600\n\n"
        f'[temporal]\naddress = "{address}"\ntask_queue = "{task_queue}"\nui_url = "http://ui.example"\n'
    )
    async with build_worker(temporal_env.client, task_queue, Deployments([cfg]), 8):
        assert await asyncio.to_thread(starter.main, ["--config", str(toml), "replicate", "start"]) == 0
        assert await asyncio.to_thread(starter.main, ["--config", str(toml), "replicate", "--now"]) == 0
        out = capsys.readouterr().out
        assert f"http://ui.example/namespaces/default/workflows/replication-{cfg.name}" in out
        assert "reconcile #" in out
        assert await asyncio.to_thread(starter.main, ["--config", str(toml), "replicate", "status"]) == 0
        handle = temporal_env.client.get_workflow_handle(f"replication-{cfg.name}")
        runs = [w async for w in temporal_env.client.list_workflows(f"WorkflowId = 'replication-{cfg.name}'")]
        assert len(runs) == 1  # `start` twice (start, then --now) is one workflow
        assert registry_parity(aws, E, W).ok
        await handle.terminate("test done")


@workflow.defn
class ReportSink:
    """Stands where the DeploymentWorkflow is: records the replica reports it is sent."""

    def __init__(self) -> None:
        self.reports: list[ReplicaReport] = []

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name=REPLICA_STATUS_SIGNAL)
    def replica_status(self, report: ReplicaReport) -> None:
        self.reports.append(report)

    @workflow.query
    def got(self) -> list[ReplicaReport]:
        return self.reports


async def test_replica_reports_tell_the_deployment_when_a_copy_is_complete(
    temporal_env: WorkflowEnvironment,
    emulators: dict[str, str],
    local_ca: pki.LocalCA,
    tmp_path: Path,
    task_queue: str,
) -> None:
    cfg = _config(emulators, local_ca, tmp_path)
    aws = AwsClients(cfg)
    provision(aws.iot(E), local_ca, 6)
    aws.iot(E).create_thing(thingName="not-in-the-fleet")
    client = temporal_env.client
    sink_id = f"deployment-{cfg.name}-{uuid.uuid4().hex[:6]}"

    async def reports(at_least: int = 0) -> list[ReplicaReport]:
        for _ in range(120):
            got = await client.get_workflow_handle(sink_id).query(ReportSink.got)
            if len(got) >= at_least:
                return got
            await asyncio.sleep(0.25)
        raise AssertionError(f"{at_least} reports expected, got {got}")

    async with (
        build_worker(client, task_queue, Deployments([cfg]), 8),
        Worker(client, task_queue=f"{task_queue}-sink", workflows=[ReportSink],
               workflow_runner=UnsandboxedWorkflowRunner()),
    ):  # fmt: skip
        handle = await client.start_workflow(
            RegistryReplicationWorkflow.run,
            ReplicationInput(cfg.name, reconcile_interval_seconds=3600, drain_seconds=1, reconcile_on_start=False,
                             deployment_workflow_id=sink_id),
            id=f"replication-{cfg.name}-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
        )  # fmt: skip
        # the deployment workflow is not running yet: the report is kept, the replication goes on
        s = await _until(handle, lambda s: s.replica_unsent)
        assert s.replicas[0].reason == FIRST_RECONCILE and s.replica_signal_error
        await client.start_workflow(ReportSink.run, id=sink_id, task_queue=f"{task_queue}-sink")
        res = await handle.execute_update(RegistryReplicationWorkflow.reconcile_now, ReconcileNowInput())
        assert res.reconciles == 1 and not res.results[0].failed
        got = await reports(1)
        assert [(r.source, r.target, r.complete, r.reason) for r in got] == [(E, W, True, "")]
        assert got[0].things == 7 and got[0].fleet_devices == 6 and got[0].at is not None
        # an event that cannot be applied: the copy is no longer known complete
        url = aws.sqs(E).get_queue_url(QueueName=cfg.replication.events_queue)["QueueUrl"]
        aws.sqs(E).send_message(QueueUrl=url, MessageBody="not json")
        await _until(handle, lambda s: s.dead_letter_count == 1 and not s.replicas[0].complete)
        got = await reports(2)
        assert [(r.complete, r.reason) for r in got[1:]] == [(False, DEAD_LETTERED)]
        await asyncio.sleep(3)  # a few more drains (1 s each): no news, no report, the history stays bounded
        assert len(await reports()) == 2
        # the next full reconcile repaired what the event missed: complete again
        await handle.execute_update(RegistryReplicationWorkflow.reconcile_now, ReconcileNowInput())
        got = await reports(3)
        assert [(r.complete, r.reason) for r in got[2:]] == [(True, "")]
        meta = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
        assert f"copy in {W} of {E}: complete" in meta.current_details
        await handle.terminate("test done")
        await client.get_workflow_handle(sink_id).terminate("test done")


def test_replica_verdict() -> None:
    assert replica_verdict(None, 0, 0, 300) == (False, FIRST_RECONCILE)
    assert replica_verdict("the last full reconcile could not replicate thing 1", 0, 0, 300)[0] is False
    assert replica_verdict("", 2, 0, 300) == (False, DEAD_LETTERED)
    assert replica_verdict("", 0, 301, 300) == (False, "the registry event stream is more than 300s behind")
    assert replica_verdict("", 0, 300, 300) == (True, "")
