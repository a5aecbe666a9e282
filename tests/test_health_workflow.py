"""RegionHealthWorkflow on the Temporal dev server against the real emulators.

Checks are driven one at a time with the `probe_now` signal (the interval is an hour), so the tests
count checks exactly. The "region_health" signals land in a tiny recorder workflow standing in for
the DeploymentWorkflow.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from temporalio import activity, workflow
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle
from temporalio.runtime import MetricBuffer, Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from activities.bootstrap import FencedRecord, FenceSnapshot, ReadFencesInput
from activities.context import Deployments
from activities.health import HealthProbes, ProbeInput
from activities.peers import HealthReadings, ReadHealthInput
from cli.health import show
from core.config import DeploymentConfig
from core.models import RegionHealthChange
from core.temporal import DATA_CONVERTER
from core.workflow_ids import health_id
from rehearsal import faults, pki
from tests.conftest import make_config
from workflows.deployment import DeploymentInput, DeploymentWorkflow
from workflows.health import RegionHealthWorkflow
from workflows.health_types import RegionHealthInput, RegionHealthView

EAST, WEST = "us-east-1", "us-west-2"


@dataclass
class Recorded:
    changes: list[RegionHealthChange] = field(default_factory=list)


@workflow.defn(sandboxed=False)
class RecordRegionHealth:
    """Stands in for DeploymentWorkflow: records every "region_health" signal."""

    def __init__(self) -> None:
        self.recorded = Recorded()

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name="region_health")
    def region_health(self, change: RegionHealthChange) -> None:
        self.recorded.changes.append(change)

    @workflow.query
    def changes(self) -> Recorded:
        return self.recorded


@pytest.fixture
def cfg(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path) -> DeploymentConfig:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(local_ca.cert_pem)
    # a generous probe timeout: the shared test machine is slow, and these tests count checks
    health = {"interval_seconds": 3600, "probe_timeout_seconds": 10, "unhealthy_after": 2, "healthy_after": 2}
    return make_config(emulators, ca_file, health=health)


async def warm_probes(cfg: DeploymentConfig) -> HealthProbes:
    """Probes with their clients made and the emulator warm, as in a running worker: the first
    check of a cold process can be slow, and these tests count checks."""
    probes = HealthProbes(Deployments([cfg]))
    for probe in probes.activities():
        await asyncio.to_thread(probe, ProbeInput(cfg.name, EAST, cfg.health))
    return probes


@pytest.fixture
async def client(
    temporal_env: WorkflowEnvironment, task_queue: str, cfg: DeploymentConfig
) -> AsyncIterator[Client]:
    probes = await warm_probes(cfg)
    with ThreadPoolExecutor(max_workers=10) as pool:
        async with Worker(
            temporal_env.client,
            task_queue=task_queue,
            workflows=[RegionHealthWorkflow, RecordRegionHealth],
            activities=probes.activities(),
            activity_executor=pool,
        ):
            yield temporal_env.client


async def start(
    client: Client, cfg: DeploymentConfig, task_queue: str, deployment_wf: str, **kw: int
) -> WorkflowHandle:
    return await client.start_workflow(
        RegionHealthWorkflow.run,
        RegionHealthInput(cfg.name, EAST, cfg.health, deployment_wf, **kw),
        id=health_id(cfg.name, EAST),
        task_queue=task_queue,
    )


async def view(h: WorkflowHandle) -> RegionHealthView:
    return await h.query(RegionHealthWorkflow.state)


async def check(h: WorkflowHandle) -> RegionHealthView:
    """Run one check now and wait for it to be recorded."""
    before = (await view(h)).checks
    await h.signal(RegionHealthWorkflow.probe_now)
    for _ in range(300):
        v = await view(h)
        if v.checks > before:
            return v
        await asyncio.sleep(0.05)
    raise AssertionError(f"no check after probe_now (still {before})")


async def first_check(h: WorkflowHandle) -> RegionHealthView:
    for _ in range(300):
        v = await view(h)
        if v.checks:
            return v
        await asyncio.sleep(0.05)
    raise AssertionError("the first check never ran")


async def states(recorder: WorkflowHandle) -> list[str]:
    return [c.state for c in (await recorder.query(RecordRegionHealth.changes)).changes]


async def test_outage_then_recovery_signals_exactly_once_each(
    client: Client, cfg: DeploymentConfig, task_queue: str, emulators: dict[str, str]
) -> None:
    recorder = await client.start_workflow(
        RecordRegionHealth.run, id=f"rec-{uuid.uuid4()}", task_queue=task_queue
    )
    h = await start(client, cfg, task_queue, recorder.id)
    v = await first_check(h)
    assert v.state == "Healthy", v.last  # starting up: the first good check is reported
    assert await states(recorder) == ["Healthy"]

    faults.set_fault(emulators[EAST], "outage")
    v = await check(h)
    assert (v.state, v.last.assessed) == ("Healthy", "Unhealthy")  # one bad check is not enough
    assert await states(recorder) == ["Healthy"]
    v = await check(h)
    assert (v.state, v.consecutive) == ("Unhealthy", 2)
    changes = (await recorder.query(RecordRegionHealth.changes)).changes
    assert [c.state for c in changes] == ["Healthy", "Unhealthy"]
    assert changes[-1].consecutive == 2 and changes[-1].region == EAST
    assert any("control_plane failed" in r for r in changes[-1].reasons)
    await check(h)
    assert await states(recorder) == ["Healthy", "Unhealthy"]  # no signal without a change

    faults.set_fault(emulators[EAST], "clear")
    assert (await check(h)).state == "Unhealthy"
    v = await check(h)
    assert (v.state, v.consecutive) == ("Healthy", 2)
    assert await states(recorder) == ["Healthy", "Unhealthy", "Healthy"]

    history = (await h.query(RegionHealthWorkflow.history)).checks
    assert [c.assessed for c in history] == [
        "Healthy",
        "Unhealthy",
        "Unhealthy",
        "Unhealthy",
        "Healthy",
        "Healthy",
    ]
    assert {p.probe: p.status for p in history[1].probes}["data_plane"] == "failed"
    meta = await h.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert meta.current_details.startswith(f"**{EAST}: Healthy**")  # what the UI shows
    assert "| Healthy | Healthy |" in meta.current_details
    await h.terminate()
    await recorder.terminate()
    await Replayer(workflows=[RegionHealthWorkflow], data_converter=DATA_CONVERTER).replay_workflow(
        await h.fetch_history()
    )  # deterministic: the recorded history replays


async def test_flapping_is_reported_once_and_state_survives_continue_as_new(
    client: Client, cfg: DeploymentConfig, task_queue: str, emulators: dict[str, str]
) -> None:
    recorder = await client.start_workflow(
        RecordRegionHealth.run, id=f"rec-{uuid.uuid4()}", task_queue=task_queue
    )
    h = await start(client, cfg, task_queue, recorder.id, checks_per_run=3)
    await first_check(h)
    first_run = (await h.describe()).run_id
    for mode in ["outage", "clear"] * 4:
        faults.set_fault(emulators[EAST], mode)
        await check(h)
    v = await view(h)
    assert v.checks == 9 and v.state == "Degraded"  # flapping shows, once, and moves nothing
    assert await states(recorder) == ["Healthy", "Degraded"]
    assert (await h.describe()).run_id != first_run  # continued as new, state carried
    assert len((await h.query(RegionHealthWorkflow.history)).checks) == 9
    await h.terminate()
    await recorder.terminate()


async def test_missing_deployment_workflow_is_retried_not_fatal(
    client: Client, cfg: DeploymentConfig, task_queue: str
) -> None:
    missing = f"deployment-missing-{uuid.uuid4().hex[:6]}"
    h = await start(client, cfg, task_queue, missing)
    v = await first_check(h)
    assert v.state == "Healthy" and v.unsent and v.signal_error
    recorder = await client.start_workflow(RecordRegionHealth.run, id=missing, task_queue=task_queue)
    v = await check(h)
    assert not v.unsent
    assert await states(recorder) == ["Healthy"]  # delivered once it exists
    await h.terminate()
    await recorder.terminate()


async def test_cli_shows_each_region_or_says_it_is_not_monitored(
    client: Client, cfg: DeploymentConfig, task_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    h = await start(client, cfg, task_queue, "")
    await first_check(h)
    assert await show(client, cfg, cfg.region_names) == 3
    out = capsys.readouterr().out
    assert f"{EAST:<14} Healthy since" in out and "control_plane ok" in out
    assert f"/workflows/{health_id(cfg.name, EAST)}" in out
    assert f"{WEST:<14} not monitored: RegionHealthWorkflow {health_id(cfg.name, WEST)} is not running" in out
    await h.terminate()
    assert await show(client, cfg, [EAST]) == 3
    assert "is terminated" in capsys.readouterr().out


async def test_health_state_and_score_metrics(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str, emulators: dict[str, str]
) -> None:
    """The workflow's gauges go through the SDK runtime's meter (here a buffer, in the worker Prometheus)."""
    buffer = MetricBuffer(10_000)
    runtime = Runtime(telemetry=TelemetryConfig(metrics=buffer))
    metered = await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace=temporal_env.client.namespace,
        data_converter=DATA_CONVERTER,
        runtime=runtime,
    )
    faults.set_fault(emulators[EAST], "outage")
    health = cfg.health.model_copy(update={"unhealthy_after": 1})
    with ThreadPoolExecutor(max_workers=6) as pool:
        async with Worker(
            metered,
            task_queue=task_queue,
            workflows=[RegionHealthWorkflow],
            activities=HealthProbes(Deployments([cfg])).activities(),
            activity_executor=pool,
        ):
            h = await metered.start_workflow(
                RegionHealthWorkflow.run,
                RegionHealthInput(cfg.name, EAST, health),
                id=health_id(cfg.name, EAST),
                task_queue=task_queue,
            )
            assert (await first_check(h)).state == "Unhealthy"
            await h.terminate()
    seen = {
        u.metric.name: u.value
        for u in buffer.retrieve_updates()
        if u.metric.name.startswith("iotfailover_region_health")
        and u.attributes.get("region") == EAST
        and u.attributes.get("deployment") == cfg.name
    }
    assert seen["iotfailover_region_health_state"] == 2
    assert 0 <= seen["iotfailover_region_health_score"] < 0.5


async def test_checks_run_on_the_interval(
    client: Client, cfg: DeploymentConfig, task_queue: str, emulators: dict[str, str]
) -> None:
    """Without probe_now: an outage from the start is reported Unhealthy after 2 interval checks."""
    recorder = await client.start_workflow(
        RecordRegionHealth.run, id=f"rec-{uuid.uuid4()}", task_queue=task_queue
    )
    faults.set_fault(emulators[EAST], "outage")
    policy = cfg.health.model_copy(update={"interval_seconds": 0.3})
    h = await client.start_workflow(
        RegionHealthWorkflow.run,
        RegionHealthInput(cfg.name, EAST, policy, recorder.id),
        id=health_id(cfg.name, EAST),
        task_queue=task_queue,
    )
    for _ in range(300):
        if await states(recorder):
            break
        await asyncio.sleep(0.05)
    v = await view(h)
    assert await states(recorder) == ["Unhealthy"]
    assert v.state == "Unhealthy" and v.consecutive == 2
    await h.terminate()
    await recorder.terminate()


@activity.defn(name="read_fences")
def read_fences_stand_in(inp: ReadFencesInput) -> FenceSnapshot:
    """Stand-in for the bootstrap activity (tested against the emulators): east is primary."""
    return FenceSnapshot(1, {"default": FencedRecord(1, EAST, [EAST, WEST])})


@activity.defn(name="read_region_health")
def read_region_health_stand_in(inp: ReadHealthInput) -> HealthReadings:
    """Stand-in for the monitors' query (tested in test_cutover_safety.py): nothing settled yet."""
    return HealthReadings(missing={r: "not started" for r in inp.monitors})


async def test_the_deployment_workflow_receives_the_change(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    """The real DeploymentWorkflow takes the signal: same name, same payload type."""
    probes = await warm_probes(cfg)
    with ThreadPoolExecutor(max_workers=6) as pool:
        worker = Worker(
            temporal_env.client,
            task_queue=task_queue,
            workflows=[RegionHealthWorkflow, DeploymentWorkflow],
            activities=[*probes.activities(), read_fences_stand_in, read_region_health_stand_in],
            activity_executor=pool,
        )
        async with worker:
            await _deployment_sees_health(temporal_env.client, cfg, task_queue)


async def _deployment_sees_health(client: Client, cfg: DeploymentConfig, task_queue: str) -> None:
    dep = await client.start_workflow(
        DeploymentWorkflow.run, DeploymentInput(cfg), id=f"deployment-{cfg.name}", task_queue=task_queue
    )
    h = await start(client, cfg, task_queue, dep.id)
    for _ in range(300):
        seen = (await dep.query(DeploymentWorkflow.state)).health[EAST]
        if seen.state != "Unknown":
            break
        await asyncio.sleep(0.05)
    assert (seen.state, seen.since) == ("Healthy", (await view(h)).since)
    assert not (await view(h)).unsent
    await h.terminate()
    await dep.terminate()
