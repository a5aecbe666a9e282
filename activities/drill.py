"""What a drill does besides cutovers: steer the deployment, flip the fault switch, measure, report.

The deployment only takes cutover requests as updates, which workflows cannot send; these
activities send them with the worker's Temporal client, so a drill goes through the same
validation and safety rules as a person would.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from activities.context import Deployments
from core import fault_switch, logs
from core.aws import group_member_pages
from core.device_report import DeviceReport
from core.errors import failing_as, is_already_exists, is_not_found
from core.models import HEALTHY, UNKNOWN, CutoverProgress, CutoverRequest, CutoverStarted
from core.workflow_ids import deployment_id

log = logs.get("activities.drill")


@dataclass
class SteerInput:
    deployment: str
    request: CutoverRequest


@dataclass
class WaitCutoverInput:
    deployment: str
    cutover_id: str | None = None  # None: wait for the next cutover after `after_epoch` to start
    after_epoch: int = 0
    timeout_seconds: float = 600  # for the next cutover to start
    started_only: bool = False  # return once the cutover is known (its progress so far)
    stop_at_hold: bool = False  # return (result None) once it holds on a wave below its threshold


@dataclass
class AbortCutoverInput:
    cutover_id: str
    reason: str = "drill aborted"


@dataclass
class FaultInput:
    deployment: str
    region: str
    mode: str


@dataclass
class WaitHealthInput:
    deployment: str
    region: str
    state: str = HEALTHY
    timeout_seconds: float = 600


@dataclass
class SampleInput:
    deployment: str
    region: str
    percent: float
    group: str


@dataclass
class ArrivalInput:
    deployment: str
    list_region: str
    group: str
    target: str
    min_epoch: int
    t0: datetime


@dataclass
class ArrivalStats:
    devices: int
    confirmed: int
    p95_seconds: float | None
    max_seconds: float | None


@dataclass
class ReportInput:
    deployment: str
    drill_id: str
    report: dict[str, Any]
    markdown: str


_HOLD = re.compile(r"approval: (wave \d+ confirmed \d+/\d+, below [\d.]+%)")


def held_wave(progress: CutoverProgress | None) -> str | None:
    """Why a cutover holds for approval after a wave fell below its success threshold
    ("wave 0 confirmed 0/4, below 50%"), else None. An approval gate of the policy
    ("approval: wave 0 done ...") is not a hold: a person asked for it and will answer it."""
    match = _HOLD.match((progress.waiting_for or "") if progress and not progress.result else "")
    return match.group(1) if match else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


class DrillActivities:
    def __init__(self, deployments: Deployments):
        self.deployments = deployments

    def _client(self):
        if self.deployments.client is None:
            raise ApplicationError("this worker has no Temporal client for drills", non_retryable=True)
        return self.deployments.client

    def _deployment(self, name: str):
        return self._client().get_workflow_handle(deployment_id(name))

    @activity.defn
    async def request_cutover(self, inp: SteerInput) -> CutoverStarted:
        """Ask the deployment for a cutover; a refusal is final and carries the validator's reason."""
        try:
            return await self._deployment(inp.deployment).execute_update(
                "request_cutover", inp.request, result_type=CutoverStarted
            )
        except WorkflowUpdateFailedError as e:
            reason = getattr(e.cause, "message", None) or str(e)
            raise ApplicationError(
                f"cutover refused: {reason}", type="CutoverRefused", non_retryable=True
            ) from None

    @activity.defn
    async def deployment_snapshot(self, deployment: str) -> dict:
        """The deployment's state as its query answers it (plain JSON for the drill's records)."""
        state = await self._deployment(deployment).query("state")
        if state is None:
            raise ApplicationError("deployment still initializing")  # retried
        return state

    @activity.defn
    async def wait_cutover(self, inp: WaitCutoverInput) -> CutoverProgress:
        """Wait for a cutover to end (or, without an ID, for the next one to start and end).

        With `started_only` it answers as soon as the cutover is known; with `stop_at_hold` as soon
        as it holds on a failed wave, whose approval an unattended drill cannot give.
        """
        deadline = time.monotonic() + inp.timeout_seconds
        cutover_id = inp.cutover_id
        while cutover_id is None:
            state = await self._deployment(inp.deployment).query("state")
            flight = (state or {}).get("in_flight")
            if flight and flight["epoch"] > inp.after_epoch:
                cutover_id = flight["cutover_id"]
                break
            done = [h for h in (state or {}).get("history", []) if h["epoch"] > inp.after_epoch]
            if done:
                cutover_id = done[0]["cutover_id"]
                break
            if time.monotonic() > deadline:
                raise ApplicationError(
                    f"no cutover started within {inp.timeout_seconds:.0f}s",
                    type="NoCutover",
                    non_retryable=True,
                )
            activity.heartbeat("waiting for a cutover to start")
            await asyncio.sleep(1)
        handle = self._client().get_workflow_handle(cutover_id)
        while True:
            progress = await handle.query("progress", result_type=CutoverProgress)
            activity.heartbeat(progress.phase if progress else "starting")
            if progress and (progress.result or inp.started_only):
                return progress
            if inp.stop_at_hold and held_wave(progress):
                log.warning("cutover holds on a failed wave", cutover=cutover_id, hold=held_wave(progress))
                return progress
            await asyncio.sleep(1)

    @activity.defn
    async def abort_cutover(self, inp: str | AbortCutoverInput) -> str:
        """Send the cutover's abort signal (a bare ID is what drills recorded before reasons were sent)."""
        inp = AbortCutoverInput(inp) if isinstance(inp, str) else inp
        await (
            self._client()
            .get_workflow_handle(inp.cutover_id)
            .signal("abort", {"by": "drill", "reason": inp.reason})
        )
        log.warning("cutover abort sent", cutover=inp.cutover_id, reason=inp.reason)
        return "abort sent"

    @activity.defn
    async def wait_region_state(self, inp: WaitHealthInput) -> str:
        """Wait until the deployment sees `region` in `state` (its health monitor reported it)."""
        deadline = time.monotonic() + inp.timeout_seconds
        while True:
            state = await self._deployment(inp.deployment).query("state")
            seen = ((state or {}).get("health", {}).get(inp.region) or {}).get("state", UNKNOWN)
            activity.heartbeat(seen)
            if seen == inp.state:
                return seen
            if time.monotonic() > deadline:
                raise ApplicationError(
                    f"{inp.region} still {seen} after {inp.timeout_seconds:.0f}s",
                    type="HealthTimeout",
                    non_retryable=True,
                )
            await asyncio.sleep(1)

    @activity.defn
    def set_region_fault(self, inp: FaultInput) -> str:
        """Flip a region's fault switch: only the local stack's emulators have one."""
        region = self.deployments.config(inp.deployment).regions.get(inp.region)
        if region is None or not region.endpoint_url:
            raise ApplicationError(
                f"{inp.region} has no fault switch: outage drills run on the local stack; in AWS use a "
                "planned drill or AWS Fault Injection Service",
                type="NoFaultSwitch",
                non_retryable=True,
            )
        fault_switch.set_fault(region.endpoint_url, inp.mode)
        log.warning("fault switch", region=inp.region, mode=inp.mode, deployment=inp.deployment)
        return inp.mode

    @activity.defn
    def sample_scope(self, inp: SampleInput) -> int:
        """Put a stable `percent` of the fleet into a drill group (same devices every time for a name)."""
        iot = self.deployments.aws(inp.deployment).iot(inp.region)
        fleet = self.deployments.config(inp.deployment).fleet.thing_group
        with failing_as(f"sampling {inp.percent}% of {fleet}", inp.region):
            try:
                iot.create_thing_group(
                    thingGroupName=inp.group,
                    thingGroupProperties={"thingGroupDescription": "iotfailover drill scope"},
                )
            except ClientError as e:
                if not is_already_exists(e):
                    raise
            chosen = 0
            for names in group_member_pages(iot, fleet):
                for name in names:
                    if zlib.crc32(name.encode()) % 10_000 < inp.percent * 100:
                        iot.add_thing_to_thing_group(thingGroupName=inp.group, thingName=name)
                        chosen += 1
                activity.heartbeat(chosen)
            return chosen

    @activity.defn
    def arrival_times(self, inp: ArrivalInput) -> ArrivalStats:
        """When each device reports itself connected in the target: from its own `connectivity.since`."""
        aws = self.deployments.aws(inp.deployment)

        def since(thing: str) -> float | None:
            try:
                payload = aws.iot_data(inp.target).get_thing_shadow(thingName=thing)["payload"].read()
            except ClientError as e:
                if is_not_found(e):
                    return None
                raise
            report = DeviceReport.parse(payload)
            at = report.since_seconds
            if report.region != inp.target or at is None:
                return None
            return at if report.epoch >= inp.min_epoch or at >= t0 else None  # moved by us, or on its own

        t0 = inp.t0.timestamp()
        delays: list[float] = []
        devices = 0
        with failing_as("reading arrival times", inp.target):
            for names in group_member_pages(aws.iot(inp.list_region), inp.group):
                devices += len(names)
                with ThreadPoolExecutor(16) as pool:
                    delays += [max(0.0, s - t0) for s in pool.map(since, names) if s is not None]
                activity.heartbeat(devices)
        return ArrivalStats(devices, len(delays), percentile(delays, 0.95), max(delays) if delays else None)

    @activity.defn
    def write_drill_report(self, inp: ReportInput) -> list[str]:
        """The report as JSON and Markdown under the state folder, for people and for tooling."""
        folder = self.deployments.config(inp.deployment).state_dir / "drills"
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{inp.drill_id}.json", folder / f"{inp.drill_id}.md"]
        paths[0].write_text(json.dumps(inp.report, indent=2, default=str))
        paths[1].write_text(inp.markdown)
        return [str(Path(p).resolve()) for p in paths]


def activities(deployments: Deployments) -> list:
    a = DrillActivities(deployments)
    return [
        a.request_cutover,
        a.deployment_snapshot,
        a.wait_cutover,
        a.abort_cutover,
        a.wait_region_state,
        a.set_region_fault,
        a.sample_scope,
        a.arrival_times,
        a.write_drill_report,
    ]
