"""Issue 13's races, each reproduced deterministically on the dev server.

The deployment and cutover workflows run for real, their activities against the emulators, except
the one activity a race needs held at an exact point: a stand-in registered under the real name
that blocks until the test has sent its signal or update, then does the real work.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import all_activities
from activities.bootstrap import (
    BootstrapActivities,
    CatchUpBootstrapInput,
    CatchUpResult,
    FenceSnapshot,
    FlipBootstrapInput,
    ReadBootstrapInput,
    ReadFencesInput,
)
from activities.context import Deployments
from activities.fencing import FlipResult
from activities.registry import ReconcileResult, ReplicateScopeInput
from activities.routing import FlipRoutingInput, ReadRoutingInput, RoutingActivities
from activities.verification import VerifyInput, VerifyOutcome
from core.aws import AwsClients
from core.config import DeploymentConfig
from core.models import (
    CutoverProgress,
    CutoverRequest,
    CutoverStarted,
    OperatorAction,
    RegionHealthChange,
    ReplicaReport,
)
from core.temporal import DATA_CONVERTER, SEARCH_ATTRIBUTES
from rehearsal import faults
from rehearsal.processes import tool_path
from tests.conftest import make_config
from workflows import all_workflows
from workflows.deployment import DeploymentInput, DeploymentState

EAST, WEST = "us-east-1", "us-west-2"


@pytest.fixture
def cfg(emulators: dict[str, str], local_ca, tmp_path: Path) -> DeploymentConfig:
    return _config(emulators, local_ca, tmp_path)


def _config(emulators, local_ca, tmp_path: Path, cooldown: float = 0, **overrides) -> DeploymentConfig:
    ca = tmp_path / "ca.pem"
    ca.write_text(local_ca.cert_pem)
    cfg = make_config(
        emulators,
        ca,
        cutover={"verify_timeout_seconds": 2, "verify_poll_seconds": 1, "cooldown_minutes": cooldown},
        failover={"min_interval_minutes": 0, "max_per_day": 10},
        **overrides,
    )
    aws = AwsClients(cfg)
    for region in cfg.regions:
        with contextlib.suppress(aws.iot(region).exceptions.ResourceAlreadyExistsException):
            aws.iot(region).create_thing_group(thingGroupName=cfg.fleet.thing_group)
    return cfg


def worker(client: Client, task_queue: str, cfg: DeploymentConfig, *stand_ins: Callable) -> Worker:
    """The real worker, with the given activities replaced by stand-ins of the same name."""
    names = {activity._Definition.must_from_callable(s).name for s in stand_ins}
    real = [
        a
        for a in all_activities(Deployments([cfg], client=client))
        if activity._Definition.must_from_callable(a).name not in names
    ]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=all_workflows(),
        activities=[*real, *stand_ins],
        activity_executor=ThreadPoolExecutor(16),
        max_concurrent_activities=16,
    )


class Hold:
    """A gate a stand-in activity waits at until the test opens it."""

    def __init__(self) -> None:
        self.entered, self.opened = threading.Event(), threading.Event()

    def wait(self) -> None:
        self.entered.set()
        assert self.opened.wait(60), "the test never opened the gate"

    async def reached(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 60), "the activity never reached the gate"


async def start(client: Client, cfg: DeploymentConfig, task_queue: str, healthy=(WEST,)) -> WorkflowHandle:
    handle = await client.start_workflow(
        "DeploymentWorkflow",
        DeploymentInput(cfg),
        id=f"deployment-{cfg.name}",
        task_queue=task_queue,
    )
    for region in healthy:
        await health(handle, region, "Healthy")
    await until(handle, lambda s: s.initialized and all(s.health[r].state == "Healthy" for r in healthy))
    return handle


async def health(handle: WorkflowHandle, region: str, state: str) -> None:
    await handle.signal("region_health", RegionHealthChange(region, state, at=datetime.now(UTC)))


async def until(
    handle: WorkflowHandle, check, what: str = "the state", within: float = 90
) -> DeploymentState:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        s = await handle.query("state", result_type=DeploymentState)
        if s and check(s):
            return s
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {s}")
        await asyncio.sleep(0.2)


async def cutover(handle: WorkflowHandle, **kw) -> CutoverStarted:
    return await handle.execute_update("request_cutover", CutoverRequest(**kw), result_type=CutoverStarted)


async def result_of(client: Client, cutover_id: str) -> CutoverProgress:
    handle = client.get_workflow_handle(cutover_id, result_type=CutoverProgress)
    return await asyncio.wait_for(handle.result(), 120)


def bootstrap_in(cfg: DeploymentConfig, region: str, scope: str = "default"):
    return BootstrapActivities(Deployments([cfg])).read_bootstrap(ReadBootstrapInput(cfg.name, region, scope))


class HeldFlip:
    """flip_bootstrap that holds the first flip of a cutover at the gate, then writes for real."""

    def __init__(self, cfg: DeploymentConfig):
        self.real = BootstrapActivities(Deployments([cfg])).flip_bootstrap
        self.hold, self.calls = Hold(), []

    @activity.defn(name="flip_bootstrap")
    def flip_bootstrap(self, inp: FlipBootstrapInput) -> FlipResult:
        self.calls.append((inp.epoch, inp.primary))
        if inp.reason.startswith("cutover-") and len([c for c in self.calls if c[0] > 1]) == 1:
            self.hold.wait()
        return self.real(inp)


async def test_an_abort_during_the_flip_flips_back_so_no_region_stays_primary_alone(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    """Item 1: a flip that was running when the abort came is applied; the rollback undoes it."""
    client, flip = temporal_env.client, HeldFlip(cfg)
    async with worker(client, task_queue, cfg, flip.flip_bootstrap):
        handle = await start(client, cfg, task_queue, healthy=(EAST, WEST))
        started = await cutover(handle, target=WEST, reason="abort mid-flip")
        await flip.hold.reached()
        await client.get_workflow_handle(started.cutover_id).signal("abort", OperatorAction("test", "now"))
        await asyncio.sleep(1)  # the abort is in the cutover's history before the flip returns
        flip.hold.opened.set()
        p = await result_of(client, started.cutover_id)
        assert p.result == "aborted"
        assert (started.epoch + 1, EAST) in flip.calls  # flipped back under the rollback epoch
        for region in (EAST, WEST):
            rec = bootstrap_in(cfg, region)
            assert (rec.primary, rec.epoch) == (EAST, started.epoch + 1), region
        s = await until(handle, lambda s: s.history, "the cutover recorded")
        assert s.active_region == EAST and s.bootstrap["default"].primary == EAST
        await handle.terminate()


async def test_devices_are_rolled_back_only_onto_a_source_known_healthy(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    """Item 6: the source's health is Unknown (no monitor report yet): the flips stay on the
    healthy target, and the deployment records where the bootstrap answer really points."""
    client, flip = temporal_env.client, HeldFlip(cfg)
    async with worker(client, task_queue, cfg, flip.flip_bootstrap):
        handle = await start(client, cfg, task_queue, healthy=(WEST,))  # us-east-1 stays Unknown
        started = await cutover(handle, target=WEST, reason="abort, source unknown")
        await flip.hold.reached()
        await client.get_workflow_handle(started.cutover_id).signal("abort", OperatorAction("test", "now"))
        await asyncio.sleep(1)
        flip.hold.opened.set()
        p = await result_of(client, started.cutover_id)
        assert p.result == "aborted" and (started.epoch + 1, EAST) not in flip.calls
        assert any("us-east-1 is Unknown: flips kept" in e for e in p.events)
        assert bootstrap_in(cfg, EAST).primary == WEST
        s = await until(handle, lambda s: s.history, "the cutover recorded")
        assert s.active_region == WEST  # what the bootstrap answer says, not what was asked
        await handle.terminate()


async def test_concurrent_requests_start_one_cutover_and_refuse_the_others(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    """Item 2: eight updates validated at the same instant; the handler checks again under its lock."""
    client = temporal_env.client
    async with worker(client, task_queue, cfg):
        handle = await start(client, cfg, task_queue)
        outcomes = await asyncio.gather(
            *(cutover(handle, target=WEST, reason=f"race {i}") for i in range(8)), return_exceptions=True
        )
        started = [o for o in outcomes if isinstance(o, CutoverStarted)]
        refused = [o for o in outcomes if isinstance(o, WorkflowUpdateFailedError)]
        assert len(started) == 1 and len(refused) == 7, outcomes
        assert all("is running" in r.cause.message for r in refused)
        s = await until(handle, lambda s: s.history, "the cutover")
        assert len(s.history) == 1 and s.epoch == started[0].epoch + 1
        await handle.terminate()


async def test_a_group_cutover_moves_neither_routing_nor_dns(
    temporal_env: WorkflowEnvironment, emulators, local_ca, tmp_path: Path, task_queue: str
) -> None:
    """Item 3: routing (active/active) follows the whole fleet, never a canary group."""
    peers = {r: {"role": "peer", "endpoint_url": emulators[r]} for r in (EAST, WEST)}
    cfg = _config(emulators, local_ca, tmp_path, deployment={"mode": "active-active"}, regions=peers)
    routing = RoutingActivities(Deployments([cfg]))
    routing.flip_routing(FlipRoutingInput(cfg.name, 1, cfg.fleet.application, EAST))
    for region in (EAST, WEST):
        AwsClients(cfg).iot(region).create_thing_group(thingGroupName="canary-group")
    client = temporal_env.client
    async with worker(client, task_queue, cfg):
        handle = await start(client, cfg, task_queue)
        started = await cutover(handle, target=WEST, scope="canary-group", reason="canary")
        p = await result_of(client, started.cutover_id)
        assert p.result == "succeeded", p
        for region in (EAST, WEST):
            rec = routing.read_routing(ReadRoutingInput(cfg.name, region, cfg.fleet.application))
            assert (rec.region, rec.epoch) == (EAST, 1), region
        assert bootstrap_in(cfg, EAST, "group:canary-group").primary == WEST
        s = await until(handle, lambda s: s.history, "the cutover")
        assert s.homes == {"canary-group": WEST} and s.active_region == EAST
        await handle.terminate()


class HeldReplication:
    """replicate_scope held until opened, so the cutover is running while the test acts; async, so
    a cancel or a worker shutdown ends it at once."""

    def __init__(self) -> None:
        self.entered, self.opened = asyncio.Event(), asyncio.Event()

    @activity.defn(name="replicate_scope")
    async def replicate_scope(self, inp: ReplicateScopeInput) -> ReconcileResult:
        self.entered.set()
        await self.opened.wait()
        return ReconcileResult(inp.source, inp.target)

    async def reached(self) -> None:
        await asyncio.wait_for(self.entered.wait(), 60)


async def test_a_health_signal_for_a_cutover_that_just_ended_is_harmless(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    """Item 7: the child is closed when the deployment forwards a health change to it."""
    client, replication = temporal_env.client, HeldReplication()
    w = worker(client, task_queue, cfg, replication.replicate_scope)
    running = asyncio.create_task(w.run())
    handle = await start(client, cfg, task_queue)
    started = await cutover(handle, target=WEST, reason="ends under the deployment's feet")
    await replication.reached()
    await w.shutdown()  # no worker: the deployment cannot see the child close before the signal
    replication.opened.set()
    await running
    await client.get_workflow_handle(started.cutover_id).terminate("gone")
    await health(handle, EAST, "Degraded")  # forwarded to a child that no longer runs
    async with worker(client, task_queue, cfg):
        s = await until(handle, lambda s: s.history, "the cutover recorded as ended")
        assert s.history[-1].result == "failed" and s.in_flight is None
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        await health(handle, EAST, "Healthy")
        again = await cutover(handle, target=WEST, reason="the entity still takes cutovers")
        assert (await result_of(client, again.cutover_id)).result == "succeeded"
        await handle.terminate()


@workflow.defn(name="MonitorStandIn", sandboxed=False)
class MonitorStandIn:
    """Answers the `state` query as a RegionHealthWorkflow that has settled on a state."""

    @workflow.init
    def __init__(self, state: str) -> None:
        self._state = state

    @workflow.run
    async def run(self, state: str) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.query(name="state")
    def view(self) -> dict:
        return {"state": self._state, "since": "2026-12-01T10:00:00+00:00", "consecutive": 3, "last": None}


async def test_a_restarted_entity_asks_its_monitors_instead_of_waiting_for_a_change(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    """Item 10: monitors signal only on change; a fresh entity must not sit with regions Unknown."""
    client = temporal_env.client
    monitors = Worker(client, task_queue=f"{task_queue}-monitors", workflows=[MonitorStandIn])
    async with worker(client, task_queue, cfg), monitors:
        for region, state in ((EAST, "Healthy"), (WEST, "Degraded")):
            await client.start_workflow(
                MonitorStandIn.run,
                state,
                id=f"health-{cfg.name}-{region}",
                task_queue=f"{task_queue}-monitors",
            )
        handle = await start(client, cfg, task_queue, healthy=())
        s = await until(handle, lambda s: s.health[WEST].state != "Unknown", "health read from the monitors")
        assert (s.health[EAST].state, s.health[WEST].state) == ("Healthy", "Degraded")
        assert s.health[EAST].since == datetime(2026, 12, 1, 10, tzinfo=UTC)
        await handle.terminate()
        for region in (EAST, WEST):
            await client.get_workflow_handle(f"health-{cfg.name}-{region}").terminate()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def eager_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server that suggests continue-as-new after a handful of events: every run of the
    entity continues-as-new at its first chance, so each handler meets the boundary."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=tool_path("temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=DATA_CONVERTER,
        dev_server_extra_args=["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=6"],
        dev_server_startup_timeout=timedelta(seconds=60),
    )
    yield env
    await env.shutdown()


async def test_a_cutover_started_while_continuing_as_new_is_followed_to_its_end(
    eager_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    """Item 8: a request_cutover handled while the entity waits for its handlers before
    continuing-as-new; the new run must still know the cutover and take the next one."""
    client, replication = eager_env.client, HeldReplication()
    async with worker(client, task_queue, cfg, replication.replicate_scope):
        handle = await start(client, cfg, task_queue)
        runs = {(await handle.describe()).run_id}
        started = await cutover(handle, target=WEST, reason="across continue-as-new")
        await replication.reached()
        replication.opened.set()
        assert (await result_of(client, started.cutover_id)).result == "succeeded"
        s = await until(handle, lambda s: s.history and s.in_flight is None, "the cutover recorded")
        assert s.active_region == WEST and s.history[-1].result == "succeeded"
        await health(handle, EAST, "Healthy")
        back = await cutover(handle, target=EAST, reason="the next one is accepted")
        assert (await result_of(client, back.cutover_id)).result == "succeeded"
        await until(handle, lambda s: len(s.history) == 2 and s.active_region == EAST, "the second cutover")
        runs.add((await handle.describe()).run_id)
        assert len(runs) > 1  # it did continue-as-new on the way
        await handle.terminate()


def _peers(emulators, local_ca, tmp_path: Path, **overrides) -> DeploymentConfig:
    """An active/active deployment: telemetry routing is flipped with the fleet."""
    peers = {r: {"role": "peer", "endpoint_url": emulators[r]} for r in (EAST, WEST)}
    return _config(
        emulators, local_ca, tmp_path, deployment={"mode": "active-active"}, regions=peers, **overrides
    )


def heartbeat_timeouts(events, activity_type: str) -> list[float]:
    return [
        e.activity_task_scheduled_event_attributes.heartbeat_timeout.ToTimedelta().total_seconds()
        for e in events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == activity_type
    ]


async def test_a_restarted_entity_continues_above_every_fence_and_never_reuses_a_job(
    temporal_env: WorkflowEnvironment, emulators, local_ca, tmp_path: Path, task_queue: str
) -> None:
    """Item 5: the epoch comes from every scope, routing and every region, not the default scope."""
    cfg = _peers(emulators, local_ca, tmp_path)
    deployments = Deployments([cfg])
    flips = BootstrapActivities(deployments)
    flips.flip_bootstrap(FlipBootstrapInput(cfg.name, 1, EAST, [EAST, WEST]))
    flips.flip_bootstrap(FlipBootstrapInput(cfg.name, 9, WEST, [WEST, EAST], scope="group:canary"))
    RoutingActivities(deployments).flip_routing(FlipRoutingInput(cfg.name, 11, cfg.fleet.application, EAST))
    client = temporal_env.client
    async with worker(client, task_queue, cfg):
        handle = await start(client, cfg, task_queue)
        s = await handle.query("state", result_type=DeploymentState)
        assert (s.epoch, s.active_region, s.homes) == (11, EAST, {"canary": WEST})
        started = await cutover(handle, target=WEST, reason="above every fence")
        assert started.epoch == 12
        assert (await result_of(client, started.cutover_id)).result == "succeeded"
        await handle.terminate()


def test_an_existing_job_is_taken_as_ours_only_with_our_cutover_and_epoch(config: DeploymentConfig) -> None:
    """Item 5: "already exists" is success only for this cutover's own job (a retry)."""
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment

    from activities.jobs import JobActivities, WaveJobInput

    iot = AwsClients(config).iot(EAST)
    arn = iot.create_thing_group(thingGroupName="w0")["thingGroupArn"]
    jobs = JobActivities(Deployments([config]))
    ours = {"operation": "migrate-region", "epoch": 4, "targetRegion": WEST, "cutoverId": "cutover-x-4"}
    iot.create_job(jobId="x-4-0", targets=[arn], document='{"operation": "migrate-region", "epoch": 4, '
                   '"targetRegion": "us-west-2", "cutoverId": "cutover-x-old-4"}')  # fmt: skip
    env = ActivityEnvironment()
    with pytest.raises(ApplicationError) as e:
        env.run(jobs.create_wave_job, WaveJobInput(config.name, EAST, "x-4-0", arn, ours))
    assert e.value.type == "JobIdTaken" and e.value.non_retryable and "cutover-x-old-4" in str(e.value)
    first = env.run(jobs.create_wave_job, WaveJobInput(config.name, EAST, "x-4-1", arn, ours))
    again = env.run(jobs.create_wave_job, WaveJobInput(config.name, EAST, "x-4-1", arn, ours))
    assert (first.created, again.created, again.job_arn) == (True, False, first.job_arn)


async def test_a_region_that_missed_flips_is_caught_up_from_the_main_loop_without_another_signal(
    temporal_env: WorkflowEnvironment, emulators, local_ca, tmp_path: Path, task_queue: str
) -> None:
    """Item 4: the first catch-up fails (the region still does not answer); the main loop tries
    again on its own, for the bootstrap answer and the telemetry routing alike."""
    cfg = _peers(emulators, local_ca, tmp_path)
    routing = RoutingActivities(Deployments([cfg]))
    routing.flip_routing(FlipRoutingInput(cfg.name, 1, cfg.fleet.application, EAST))
    client = temporal_env.client
    async with worker(client, task_queue, cfg):
        handle = await start(client, cfg, task_queue, healthy=(EAST, WEST))
        faults.set_fault(emulators[EAST], "outage")
        try:
            await health(handle, EAST, "Unhealthy")
            s = await until(handle, lambda s: s.history and EAST in s.catch_up, "the automatic failover")
            assert s.active_region == WEST and s.history[-1].automatic
            await health(handle, EAST, "Degraded")  # answers the monitor a little, not yet the tables
            await until(
                handle, lambda s: any("catch-up failed" in d.reason for d in s.decisions), "a failed catch-up"
            )
        finally:
            faults.set_fault(emulators[EAST], "clear")
        s = await until(handle, lambda s: not s.catch_up, "the retried catch-up", within=150)
        assert any(d.kind == "catch-up" for d in s.decisions)
        assert bootstrap_in(cfg, EAST).primary == WEST
        rec = routing.read_routing(ReadRoutingInput(cfg.name, EAST, cfg.fleet.application))
        assert (rec.region, rec.epoch) == (WEST, s.history[-1].epoch)
        await handle.terminate()


class HeldCatchUp:
    """catch_up_bootstrap whose first call waits at the gate; every call is the real one."""

    def __init__(self, cfg: DeploymentConfig):
        self.real = BootstrapActivities(Deployments([cfg])).catch_up_bootstrap
        self.hold, self.calls = Hold(), 0

    @activity.defn(name="catch_up_bootstrap")
    def catch_up_bootstrap(self, inp: CatchUpBootstrapInput) -> CatchUpResult:
        self.calls += 1
        if self.calls == 1:
            self.hold.wait()
        return self.real(inp)


@activity.defn(name="read_fences")
def fences_with_east_unreachable(inp: ReadFencesInput) -> FenceSnapshot:
    return FenceSnapshot(unreachable=[EAST])


async def test_what_a_region_misses_during_its_catch_up_is_caught_up_too(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    """Item 9: a cutover ends (east, Unhealthy again, missed its flip) while east's catch-up is
    running; the catch-up must not drop what was added meanwhile."""
    cfg = cfg.model_copy(update={"failover": cfg.failover.model_copy(update={"automatic": False})})
    for region in (EAST, WEST):
        AwsClients(cfg).iot(region).create_thing_group(thingGroupName="g1")
    client, catch_up = temporal_env.client, HeldCatchUp(cfg)
    async with worker(client, task_queue, cfg, catch_up.catch_up_bootstrap, fences_with_east_unreachable):
        handle = await start(client, cfg, task_queue)
        assert (await handle.query("state", result_type=DeploymentState)).catch_up == {EAST: ["default"]}
        await health(handle, EAST, "Healthy")
        await catch_up.hold.reached()
        await health(handle, EAST, "Unhealthy")  # the emergency's flips skip it
        started = await cutover(handle, target=WEST, scope="g1", mode="emergency", reason="east skipped")
        await until(handle, lambda s: s.history and "group:g1" in s.catch_up.get(EAST, []), "the cutover")
        await health(handle, EAST, "Healthy")
        catch_up.hold.opened.set()
        await until(handle, lambda s: not s.catch_up, "every region caught up")
        assert catch_up.calls == 2  # a second catch-up for what the cutover added
        assert bootstrap_in(cfg, EAST, "group:g1").epoch == started.epoch
        await handle.terminate()


async def test_a_whole_fleet_cutover_flips_routing_and_dns_with_heartbeats_that_notice_a_dead_worker(
    temporal_env: WorkflowEnvironment, emulators, local_ca, tmp_path: Path, task_queue: str
) -> None:
    """Items 3 and 11: the whole fleet moves routing and DNS; flips heartbeat within a minute."""
    r53 = AwsClients(_peers(emulators, local_ca, tmp_path)).client(EAST, "route53")
    zone = r53.create_hosted_zone(Name="example.com", CallerReference=uuid.uuid4().hex)["HostedZone"]["Id"]
    peers = {
        r: {"role": "peer", "endpoint_url": emulators[r], "iot_endpoint": f"t-ats.iot.{r}.amazonaws.com"}
        for r in (EAST, WEST)
    }
    cfg = _config(
        emulators,
        local_ca,
        tmp_path,
        deployment={
            "mode": "active-active",
            "dns_record": "iot.example.com",
            "hosted_zone_id": zone.rsplit("/", 1)[-1],
        },
        regions=peers,
    )
    client = temporal_env.client
    async with worker(client, task_queue, cfg):
        handle = await start(client, cfg, task_queue)
        started = await cutover(handle, target=WEST, reason="whole fleet")
        assert (await result_of(client, started.cutover_id)).result == "succeeded"
        rec = RoutingActivities(Deployments([cfg])).read_routing(
            ReadRoutingInput(cfg.name, EAST, cfg.fleet.application)
        )
        assert (rec.region, rec.epoch) == (WEST, started.epoch)
        sets = r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
        cname = next(s for s in sets if s["Type"] == "CNAME")
        assert cname["ResourceRecords"][0]["Value"] == "t-ats.iot.us-west-2.amazonaws.com"
        events = [e async for e in client.get_workflow_handle(started.cutover_id).fetch_history_events()]
        for name in ("flip_bootstrap", "flip_routing", "flip_dns"):
            timeouts = heartbeat_timeouts(events, name)
            assert timeouts and all(0 < t <= 60 for t in timeouts), (name, timeouts)
        await handle.terminate()


async def test_a_source_lost_before_the_flip_hands_over_to_automatic_failover_at_once(
    temporal_env: WorkflowEnvironment, emulators, local_ca, tmp_path: Path, task_queue: str
) -> None:
    """Item 0: nothing points devices at the target yet, so the cutover ends; the deployment's
    automatic failover decides at once (a cutover that changed nothing starts no cooldown)."""
    cfg = _config(emulators, local_ca, tmp_path, cooldown=30)
    client, replication = temporal_env.client, HeldReplication()
    async with worker(client, task_queue, cfg, replication.replicate_scope):
        handle = await start(client, cfg, task_queue, healthy=(EAST, WEST))
        started = await cutover(handle, target=WEST, reason="the source dies in preflight")
        await replication.reached()
        await health(handle, EAST, "Unhealthy")
        p = await result_of(client, started.cutover_id)
        replication.opened.set()
        assert (p.result, p.handed_over, p.primary_after, p.epoch_after) == ("aborted", True, EAST, 0)
        s = await until(handle, lambda s: len(s.history) == 2, "the automatic failover after the hand-over")
        assert s.history[0].result == "aborted" and s.history[1].automatic
        assert s.history[1].mode == "emergency" and s.active_region == WEST
        await handle.terminate()


async def test_automatic_failover_waits_for_a_complete_registry_copy_and_never_reports_0_of_0(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    """Item 0b: refused while replication says the standby's copy is incomplete; once it says
    complete (here wrongly: the standby lacks the devices), the emergency cutover counts the
    fleet from what replication last counted in the source, so it cannot claim 0/0."""
    iot = AwsClients(cfg).iot(EAST)
    for i in range(3):
        iot.create_thing(thingName=f"dev-{i}")
        iot.add_thing_to_thing_group(thingGroupName=cfg.fleet.thing_group, thingName=f"dev-{i}")
    client = temporal_env.client
    async with worker(client, task_queue, cfg):
        handle = await start(client, cfg, task_queue, healthy=(EAST, WEST))
        first = ReplicaReport(EAST, WEST, False, "first full reconcile still running")
        await handle.signal("replica_status", first)
        await health(handle, EAST, "Unhealthy")
        s = await until(
            handle, lambda s: any(d.rule == "replica_incomplete" for d in s.decisions), "a refusal"
        )
        assert not s.history and s.in_flight is None
        assert "first full reconcile still running" in next(d.reason for d in s.decisions if d.rule)
        await handle.signal("replica_status", ReplicaReport(EAST, WEST, True, things=3, fleet_devices=3))
        s = await until(handle, lambda s: s.history, "the automatic failover")
        record = s.history[-1]
        assert record.automatic and (record.result, record.devices, record.confirmed) == ("failed", 3, 0)
        assert "none of the 3 devices" in record.note
        await handle.terminate()


class HeldVerify:
    """verify_devices that holds the emergency cutover in its verification until the test opens it."""

    def __init__(self) -> None:
        self.hold = Hold()

    @activity.defn(name="verify_devices")
    def verify_devices(self, inp: VerifyInput) -> VerifyOutcome:
        self.hold.wait()
        return VerifyOutcome(total=0, confirmed=0, pending=0, pending_sample=[])


async def test_a_source_back_during_the_emergency_cutover_away_from_it_is_caught_up_at_once(
    temporal_env: WorkflowEnvironment, cfg: DeploymentConfig, task_queue: str
) -> None:
    """Fault campaign seed 2: the automatic failover's flips skip the Unhealthy source; when the
    source comes back while the cutover still verifies, it must get the cutover's answer then, not
    when the cutover ends (until then both regions name themselves primary)."""
    client, verify = temporal_env.client, HeldVerify()
    async with worker(client, task_queue, cfg, verify.verify_devices):
        handle = await start(client, cfg, task_queue, healthy=(EAST, WEST))
        await health(handle, EAST, "Unhealthy")
        await verify.hold.reached()  # flipped in west only, now verifying
        epoch = bootstrap_in(cfg, WEST).epoch
        assert (bootstrap_in(cfg, EAST).primary, bootstrap_in(cfg, WEST).primary) == (EAST, WEST)
        await health(handle, EAST, "Healthy")
        s = await until(handle, lambda s: any(d.kind == "catch-up" for d in s.decisions), "the catch-up")
        assert s.in_flight is not None, "caught up while the cutover still runs"
        east = bootstrap_in(cfg, EAST)
        assert (east.primary, east.epoch) == (WEST, epoch)
        verify.hold.opened.set()
        await until(handle, lambda s: s.in_flight is None and len(s.history) == 1, "the cutover's end")
        await handle.terminate()
