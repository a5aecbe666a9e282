"""CutoverWorkflow alone, each branch in a second or two: every activity is a stand-in under the real
name (each real one is tested against the emulators elsewhere), recording its calls; the shadow sync
is the real child workflow, except where a test needs a child slow to end its cancellation.

On the dev server: the time-skipping one does not know the search attributes the cutover upserts
(it refuses the workflow task with "search attribute IotPhase is not defined").
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.bootstrap import FlipBootstrapInput
from activities.fencing import FlipResult
from activities.jobs import (
    CancelJobInput,
    CountGroupInput,
    Cursor,
    DeleteGroupsInput,
    FilledGroup,
    FillGroupInput,
    JobOutcome,
    JobRef,
    WaitJobInput,
    WaveJobInput,
)
from activities.registry import ReconcileResult, ReplicateScopeInput
from activities.shadows import ShadowPageInput, ShadowSyncResult, ThingPage, ThingPageInput
from activities.verification import VerifyInput, VerifyOutcome
from core.config import CutoverPolicy
from core.models import HEALTHY, UNHEALTHY, CutoverMode, CutoverProgress, OperatorAction
from core.temporal import DATA_CONVERTER
from workflows.cutover import CutoverWorkflow
from workflows.cutover_render import details
from workflows.cutover_steps import CutoverInput
from workflows.shadow_sync import ShadowSyncInput, ShadowSyncWorkflow

EAST, WEST = "us-east-1", "us-west-2"
DEVICES = ["d1", "d2"]
WITHIN = 60  # seconds any one wait of a test may take before it fails


class Fleet:
    """The stand-in activities: a scope of two devices that move when their job is created. Each call
    is recorded; the first call of an activity named in `hold` waits, heartbeating, until cancelled
    or released, and the first call of `fail` fails for good."""

    def __init__(self, hold: set[str] = frozenset(), fail: str = "") -> None:
        self.calls: list[tuple[str, object]] = []
        self.hold, self.fail = hold, fail
        self.held: dict[str, asyncio.Event] = {name: asyncio.Event() for name in hold}
        self.cancelled: set[str] = set()
        self.released = asyncio.Event()

    async def _enter(self, name: str, inp: object) -> None:
        self.calls.append((name, inp))
        if name == self.fail and len(self.named(name)) == 1:  # the first call: the rollback's go through
            raise ApplicationError(f"{name}: access denied", type="AccessDenied", non_retryable=True)
        if name in self.hold and not self.held[name].is_set():
            self.held[name].set()
            try:
                while not self.released.is_set():
                    activity.heartbeat()
                    await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                self.cancelled.add(name)
                raise
            self.calls.append((f"{name} ended", inp))

    def named(self, name: str) -> list:
        return [inp for n, inp in self.calls if n == name]

    async def reached(self, name: str) -> None:
        await asyncio.wait_for(self.held[name].wait(), WITHIN)

    @activity.defn(name="replicate_scope")
    async def replicate_scope(self, inp: ReplicateScopeInput) -> ReconcileResult:
        await self._enter("replicate_scope", inp)
        return ReconcileResult(source=inp.source, target=inp.target)

    @activity.defn(name="count_group")
    async def count_group(self, inp: CountGroupInput) -> int:
        await self._enter("count_group", inp)
        return len(DEVICES)

    @activity.defn(name="flip_bootstrap")
    async def flip_bootstrap(self, inp: FlipBootstrapInput) -> FlipResult:
        await self._enter("flip_bootstrap", inp)
        return FlipResult(epoch=inp.epoch, written=list(inp.regions or []))

    @activity.defn(name="fill_group")
    async def fill_group(self, inp: FillGroupInput) -> FilledGroup:
        await self._enter("fill_group back" if inp.into_group.endswith("-rollback") else "fill_group", inp)
        added = len(DEVICES) if inp.size == 0 or not inp.cursor.exhausted else 0
        return FilledGroup(group_arn=f"arn:{inp.into_group}", added=added, cursor=Cursor(exhausted=True))

    @activity.defn(name="create_wave_job")
    async def create_wave_job(self, inp: WaveJobInput) -> JobRef:
        await self._enter("create_wave_job", inp)
        return JobRef(job_id=inp.job_id, job_arn=f"arn:{inp.job_id}", created=True)

    @activity.defn(name="verify_devices")
    async def verify_devices(self, inp: VerifyInput) -> VerifyOutcome:
        await self._enter("verify_devices", inp)
        return VerifyOutcome(total=len(DEVICES), confirmed=len(DEVICES), pending=0, pending_sample=[])

    @activity.defn(name="wait_for_job")
    async def wait_for_job(self, inp: WaitJobInput) -> JobOutcome:
        await self._enter("wait_for_job", inp)
        return JobOutcome(job_id=inp.job_id, status="COMPLETED", counts={}, failures=[])

    @activity.defn(name="cancel_job")
    async def cancel_job(self, inp: CancelJobInput) -> str:
        await self._enter("cancel_job", inp)
        return "CANCELED"

    @activity.defn(name="delete_wave_groups")
    async def delete_wave_groups(self, inp: DeleteGroupsInput) -> int:
        await self._enter("delete_wave_groups", inp)
        return len(inp.groups)

    @activity.defn(name="list_shadow_things")
    async def list_shadow_things(self, inp: ThingPageInput) -> ThingPage:
        await self._enter("list_shadow_things", inp)
        return ThingPage(things=list(DEVICES), next_token=None)

    @activity.defn(name="sync_shadow_page")
    async def sync_shadow_page(self, inp: ShadowPageInput) -> ShadowSyncResult:
        # only the forward sync is held: the rollback's sync back runs through
        await self._enter("sync_shadow_page" if inp.source == EAST else "sync_shadow_page back", inp)
        return ShadowSyncResult(things_scanned=len(inp.things))

    def activities(self) -> list[Callable]:
        return [
            self.replicate_scope,
            self.count_group,
            self.flip_bootstrap,
            self.fill_group,
            self.create_wave_job,
            self.verify_devices,
            self.wait_for_job,
            self.cancel_job,
            self.delete_wave_groups,
            self.list_shadow_things,
            self.sync_shadow_page,
        ]


@workflow.defn(name="ShadowSyncWorkflow", sandboxed=False)
class SlowToCancelSync:
    """A shadow sync that, once asked to cancel, ends only when the test releases it."""

    def __init__(self) -> None:
        self.cancel_seen = self.released = False

    @workflow.run
    async def run(self, inp: ShadowSyncInput) -> ShadowSyncResult:
        try:
            await workflow.wait_condition(lambda: False)
        except asyncio.CancelledError:
            self.cancel_seen = True
            await workflow.wait_condition(lambda: self.released)
            raise
        return ShadowSyncResult()

    @workflow.query
    def seen(self) -> bool:
        return self.cancel_seen

    @workflow.signal
    def release(self) -> None:
        self.released = True


def cutover_input(mode: CutoverMode = "planned", health: dict[str, str] | None = None) -> CutoverInput:
    name = f"t-{uuid.uuid4().hex[:8]}"
    return CutoverInput(
        deployment=name,
        cutover_id=f"cutover-{name}-4",
        epoch=4,
        source=EAST,
        target=WEST,
        mode=mode,
        scope="fleet",
        bootstrap_scope="default",
        regions=[EAST, WEST],
        policy=CutoverPolicy(canary_size=5, verify_timeout_seconds=5, verify_poll_seconds=1),
        health=health or {EAST: HEALTHY, WEST: HEALTHY},
        known_devices=len(DEVICES),
    )


def worker(client: Client, task_queue: str, fleet: Fleet, sync: type = ShadowSyncWorkflow) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[CutoverWorkflow, sync],
        activities=fleet.activities(),
        max_heartbeat_throttle_interval=timedelta(milliseconds=500),  # cancels reach held activities fast
        default_heartbeat_throttle_interval=timedelta(milliseconds=500),
    )


async def start(client: Client, task_queue: str, inp: CutoverInput) -> WorkflowHandle:
    return await client.start_workflow(
        CutoverWorkflow.run,
        inp,
        id=inp.cutover_id,
        task_queue=task_queue,
        retry_policy=RetryPolicy(maximum_attempts=1),
        task_timeout=timedelta(seconds=10),
    )


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WITHIN
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def finished(handle: WorkflowHandle) -> CutoverProgress:
    """The progress once the workflow closed (it may have failed: the query still answers)."""

    async def closed() -> bool:
        return (await handle.describe()).status != WorkflowExecutionStatus.RUNNING

    await until(closed, f"{handle.id} to close")
    return await handle.query(CutoverWorkflow.progress)


async def test_a_rollback_with_the_source_unhealthy_keeps_the_flips_and_the_devices_where_they_are(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    """An emergency cutover (source down) aborted while it verifies: nothing may point devices
    back at the dead source, and the cutover records where the bootstrap answer stays."""
    client, fleet = temporal_env.client, Fleet(hold={"verify_devices"})
    inp = cutover_input("emergency", health={EAST: UNHEALTHY, WEST: HEALTHY})
    async with worker(client, task_queue, fleet):
        handle = await start(client, task_queue, inp)
        await fleet.reached("verify_devices")
        await handle.signal(CutoverWorkflow.abort, OperatorAction(by="test", reason="stop"))
        p = await finished(handle)
        await until(lambda: _true(lambda: "verify_devices" in fleet.cancelled), "the verification's cancel")
        fleet.released.set()
    assert p.result == "aborted" and p.phase == "rolling-back"
    assert [(f.epoch, f.primary) for f in fleet.named("flip_bootstrap")] == [(4, WEST)]  # none back
    assert not fleet.named("fill_group") and not fleet.named("create_wave_job")  # no device moved back
    assert (p.primary_after, p.epoch_after) == (WEST, 4)
    assert any(f"{EAST} is Unhealthy: flips kept on {WEST}" in e for e in p.events), p.events


async def test_a_step_that_fails_for_good_is_compensated_and_the_workflow_fails(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    """verify_devices of the canary fails non-retryably after the flip and the job: the job is
    cancelled, the flip undone under the rollback epoch, and the failure shows."""
    client, fleet = temporal_env.client, Fleet(fail="verify_devices")
    inp = cutover_input()
    async with worker(client, task_queue, fleet):
        handle = await start(client, task_queue, inp)
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), WITHIN)
        p = await handle.query(CutoverWorkflow.progress)
    assert "access denied" in str(failure.value.cause.cause)
    assert p.result == "failed" and p.error
    cancels = fleet.named("cancel_job")
    assert [c.job_id for c in cancels] == [f"{inp.deployment}-4-0"], cancels
    assert cancels[0].reason.startswith("failed: ")
    assert [(f.epoch, f.primary) for f in fleet.named("flip_bootstrap")] == [(4, WEST), (5, EAST)]
    assert any("rolling back (failed: " in e for e in p.events), p.events


async def test_an_abort_during_the_shadow_sync_cancels_the_sync_at_once(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    """The sync before the flip is held; an abort must not wait for it to end."""
    client, fleet = temporal_env.client, Fleet(hold={"sync_shadow_page"})
    inp = cutover_input()
    async with worker(client, task_queue, fleet):
        handle = await start(client, task_queue, inp)
        await fleet.reached("sync_shadow_page")
        await handle.signal(CutoverWorkflow.abort, OperatorAction(by="test", reason="stop"))
        p = await finished(handle)  # the held page is never released
        child = await client.get_workflow_handle(f"{inp.cutover_id}-shadows-1").describe()
        await until(lambda: _true(lambda: "sync_shadow_page" in fleet.cancelled), "the page's cancel")
        fleet.released.set()
    assert child.status == WorkflowExecutionStatus.CANCELED
    assert p.result == "aborted" and "shadow-sync" not in p.phase_seconds
    assert any("rolling back (aborted)" in e for e in p.events), p.events
    assert not fleet.named("flip_bootstrap")  # nothing flipped, nothing to flip back
    assert fleet.named("sync_shadow_page back")  # the rollback still ran: shadows carried back


async def test_a_cancel_of_the_workflow_while_a_step_is_being_stopped_is_not_lost(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    """The target fails during the shadow sync: the sync child is cancelled and takes its time to
    end; a cancel of the cutover arriving meanwhile must still be what the rollback is for."""
    client, fleet = temporal_env.client, Fleet()
    inp = cutover_input()
    async with worker(client, task_queue, fleet, sync=SlowToCancelSync):
        handle = await start(client, task_queue, inp)
        child = client.get_workflow_handle(f"{inp.cutover_id}-shadows-1")

        async def child_asked_to_cancel() -> bool:
            try:
                return await child.query(SlowToCancelSync.seen)
            except Exception:  # not started yet
                return False

        await until(lambda: _started(child), "the sync child to start")
        await handle.signal(CutoverWorkflow.region_health, {WEST: UNHEALTHY})
        await until(child_asked_to_cancel, "the cancel of the sync child")
        await handle.cancel()
        await until(lambda: _cancel_recorded(handle), "the cancel in the cutover's history")
        await child.signal(SlowToCancelSync.release)
        p = await finished(handle)
    assert p.result == "aborted"
    assert any("rolling back (cancelled)" in e for e in p.events), p.events


async def test_a_cancel_of_the_workflow_during_a_flip_lets_the_flip_end_before_flipping_back(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    """A started flip runs to its end: the rollback's flip back must not race it."""
    client, fleet = temporal_env.client, Fleet(hold={"flip_bootstrap"})
    inp = cutover_input()
    async with worker(client, task_queue, fleet):
        handle = await start(client, task_queue, inp)
        await fleet.reached("flip_bootstrap")
        await handle.cancel()
        await until(lambda: _cancel_recorded(handle), "the cancel in the cutover's history")
        await asyncio.sleep(1)  # a rollback that did not wait would flip back now
        fleet.released.set()
        p = await finished(handle)
    flips = [(n, f.epoch, f.primary) for n, f in fleet.calls if n.startswith("flip_bootstrap")]
    assert flips == [
        ("flip_bootstrap", 4, WEST),
        ("flip_bootstrap ended", 4, WEST),
        ("flip_bootstrap", 5, EAST),
    ]
    assert "flip_bootstrap" not in fleet.cancelled
    assert p.result == "aborted" and any("rolling back (cancelled)" in e for e in p.events), p.events


async def test_the_source_lost_during_a_wave_stops_that_step_and_the_cutover_takes_over(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    """The region loss names the step it stopped, and the same runbook goes on as an emergency one."""
    client, fleet = temporal_env.client, Fleet(hold={"verify_devices"})
    inp = cutover_input()
    async with worker(client, task_queue, fleet):
        handle = await start(client, task_queue, inp)
        await fleet.reached("verify_devices")
        await handle.signal(CutoverWorkflow.region_health, {EAST: UNHEALTHY})
        p = await finished(handle)
        await until(lambda: _true(lambda: "verify_devices" in fleet.cancelled), "the verification's cancel")
        fleet.released.set()
    assert p.takeover.startswith(f"{EAST} became Unhealthy during verify {inp.deployment}-4-w0 in {WEST}")
    assert (p.mode, p.result, p.phase) == ("emergency", "succeeded", "finalize")
    assert [(f.epoch, f.primary, f.regions) for f in fleet.named("flip_bootstrap")] == [
        (4, WEST, [EAST, WEST]),
        (4, WEST, [WEST]),  # the takeover's flip skips the dead source
    ]
    assert f"cancel job {inp.deployment}-4-0 in {EAST} when it is back" in p.reconcile_later


async def test_a_region_lost_while_the_rollback_moves_devices_back_is_recorded_and_the_rollback_ends(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    """The source fails while the rollback looks for the devices to move back: that step is stopped
    and recorded, the rest of the rollback goes on, and the cutover ends (before, the region loss
    escaped the rollback and failed the workflow task again and again)."""
    client, fleet = temporal_env.client, Fleet(hold={"verify_devices", "fill_group back"})
    inp = cutover_input()
    async with worker(client, task_queue, fleet):
        handle = await start(client, task_queue, inp)
        await fleet.reached("verify_devices")
        await handle.signal(CutoverWorkflow.abort, OperatorAction(by="test", reason="stop"))
        await fleet.reached("fill_group back")
        await handle.signal(CutoverWorkflow.region_health, {EAST: UNHEALTHY})
        p = await finished(handle)
        await until(lambda: _true(lambda: "fill_group back" in fleet.cancelled), "the move back's cancel")
        fleet.released.set()
    assert (p.result, p.phase) == ("aborted", "rolling-back")
    assert any(r.startswith("move devices back: not done during rollback") for r in p.reconcile_later)
    assert any(r.startswith("remove wave groups: not done") for r in p.reconcile_later), p.reconcile_later
    assert not fleet.named("create_wave_job")[1:]  # the canary's job only: no wave back was started


async def test_the_plan_shows_before_the_first_wave_and_is_measured_against(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    client, fleet = temporal_env.client, Fleet(hold={"fill_group"})
    inp = cutover_input()
    async with worker(client, task_queue, fleet):
        handle = await start(client, task_queue, inp)
        await fleet.reached("fill_group")  # the canary's group: no wave has run yet
        before = await handle.query(CutoverWorkflow.progress)
        fleet.released.set()
        p = await finished(handle)
    assert before.plan is not None and before.plan.waves == [len(DEVICES)]
    assert not any(w.job_id for w in before.waves)  # the canary is being filled: no job yet
    assert any(e.endswith(f"plan: {before.plan.brief()}") for e in before.events), before.events
    assert p.result == "succeeded" and p.plan == before.plan
    shown = details(p, paused=False)  # what the UI's current details say
    assert "plan: 1 waves for 2 devices" in shown and "min against" in shown, shown


def test_waves_recorded_before_kind_existed_read_as_their_kind() -> None:
    """A progress an older version recorded (index -1 stragglers, -2 rollback; a deployment's state
    carried over continue-as-new holds one) reads with the right kind."""
    old = {"cutover_id": "c", "deployment": "d", "mode": "planned", "source": EAST, "target": WEST}
    old |= {"scope": "fleet", "epoch": 4, "waves": [{"index": i, "group": f"g{i}"} for i in (0, 1, -1, -2)]}
    payload = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(old).encode())
    (p,) = DATA_CONVERTER.payload_converter.from_payloads([payload], [CutoverProgress])
    assert [(w.kind, w.index) for w in p.waves] == [
        ("wave", 0),
        ("wave", 1),
        ("stragglers", 0),
        ("rollback", 0),
    ]
    (again,) = DATA_CONVERTER.payload_converter.from_payloads(
        DATA_CONVERTER.payload_converter.to_payloads([p]), [CutoverProgress]
    )
    assert again == p


async def _true(check: Callable[[], bool]) -> bool:
    return check()


async def _started(handle: WorkflowHandle) -> bool:
    try:
        await handle.describe()
    except Exception:
        return False
    return True


async def _cancel_recorded(handle: WorkflowHandle) -> bool:
    async for e in handle.fetch_history_events():
        if e.HasField("workflow_execution_cancel_requested_event_attributes"):
            return True
    return False
