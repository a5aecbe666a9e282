"""Migration waves: wave groups, IoT Jobs that tell devices to move, and verification of where they are.

A wave is a static thing group (`<deployment>-<epoch>-w<k>`) filled from a cursor over the scope's
listing, so the workflow's history grows with waves, never with devices. Jobs get deterministic IDs
(`<deployment>-<epoch>-<wave>`), so a retried activity finds its job instead of creating another.
Verification (activities/verification.py) reads each device's classic shadow in the target.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.context import Deployments, Keepalive
from activities.verification import Verification
from core import logs
from core.aws import fetch_page, group_member_pages
from core.device_report import DeviceReport
from core.errors import aws_activity, failing_as, is_already_exists, is_not_found

TERMINAL_EXECUTION = {"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "REMOVED", "CANCELED"}
log = logs.get("activities.jobs")


@dataclass
class Cursor:
    """Where the next wave starts in the scope's listing: a page token and items to skip in it."""

    token: str | None = None
    skip: int = 0
    exhausted: bool = False


@dataclass
class FillGroupInput:
    deployment: str
    list_region: str
    list_group: str  # where members are read from
    into_region: str
    into_group: str  # created if missing
    size: int  # how many to add at most (0: all)
    cursor: Cursor = field(default_factory=Cursor)
    only_confirmed_in: str | None = None  # add only devices whose connectivity is in this region
    min_epoch: int = 0
    skip_in: str | None = None  # leave out devices already connected there (counted in `already`)


@dataclass
class FilledGroup:
    group_arn: str
    added: int
    cursor: Cursor
    already: int = 0  # devices left out because they are connected in `skip_in` already


@dataclass
class CountGroupInput:
    deployment: str
    region: str
    group: str


@dataclass
class WaveJobInput:
    deployment: str
    region: str
    job_id: str
    target_arn: str
    document: dict[str, Any]
    rollout_per_minute: int = 1000
    abort_failure_percent: float = 20
    in_progress_timeout_minutes: int = 10
    description: str = ""
    wave_size: int = 0


def abort_minimum(wave_size: int) -> int:
    """Executions that must finish before the abort threshold applies: a single early faulty device
    must not cancel a wave, a systematic failure must still stop a large one early."""
    return max(10, wave_size // 10)


@dataclass
class JobRef:
    job_id: str
    job_arn: str
    created: bool


@dataclass
class WaitJobInput:
    deployment: str
    region: str
    job_id: str
    timeout_seconds: float
    poll_seconds: float = 5


@dataclass
class JobOutcome:
    job_id: str
    status: str
    counts: dict[str, int]
    failures: list[str]  # "<thing>: <status> <reason>", bounded

    @property
    def settled(self) -> bool:
        return self.status in ("COMPLETED", "CANCELED", "DELETION_IN_PROGRESS")


@dataclass
class CancelJobInput:
    deployment: str
    region: str
    job_id: str
    reason: str = "cutover aborted"
    force: bool = True  # also cancel executions in progress (abort); False leaves them to finish


@dataclass
class DeleteGroupsInput:
    deployment: str
    region: str
    groups: list[str]


class JobActivities(Verification):
    def __init__(self, deployments: Deployments, max_workers: int = 16):
        self.deployments = deployments
        self.max_workers = max_workers

    def _ensure_group(self, deployment: str, region: str, name: str) -> str:
        iot = self.deployments.aws(deployment).iot(region)
        try:
            return iot.create_thing_group(
                thingGroupName=name,
                thingGroupProperties={"thingGroupDescription": f"iotfailover {deployment}: migration wave"},
                tags=[{"Key": "iotfailover:deployment", "Value": deployment}],
            )["thingGroupArn"]
        except ClientError as e:
            if is_already_exists(e):
                return iot.describe_thing_group(thingGroupName=name)["thingGroupArn"]
            raise

    def _report(self, deployment: str, region: str, thing: str) -> DeviceReport:
        try:
            shadow = self.deployments.aws(deployment).iot_data(region).get_thing_shadow(thingName=thing)
            return DeviceReport.parse(shadow["payload"].read())
        except ClientError as e:
            if is_not_found(e):
                return DeviceReport()
            raise

    @activity.defn
    @aws_activity(lambda inp: (f"counting {inp.group}", inp.region))
    def count_group(self, inp: CountGroupInput) -> int:
        """How many devices a cutover scope holds (members of the group and its children)."""
        iot = self.deployments.aws(inp.deployment).iot(inp.region)
        count = 0
        for names in group_member_pages(iot, inp.group, 250):
            count += len(names)
            activity.heartbeat(count)
        return count

    @activity.defn
    @aws_activity(lambda inp: (f"filling wave group {inp.into_group}", inp.into_region))
    def fill_group(self, inp: FillGroupInput) -> FilledGroup:
        """Add the next `size` members of a group (from the cursor) to a wave group, resumably."""
        resume = activity.info().heartbeat_details
        cursor, added = (Cursor(**resume[0]), resume[1]) if resume else (inp.cursor, 0)
        already = resume[2] if len(resume) > 2 else 0
        with Keepalive(*resume) as beat:
            return self._fill(inp, cursor, added, already, beat)

    def _fill(
        self, inp: FillGroupInput, cursor: Cursor, added: int, already: int, beat: Keepalive
    ) -> FilledGroup:
        """Page through the listing from `cursor`, heartbeating where the next page starts."""
        aws = self.deployments.aws(inp.deployment)
        arn = self._ensure_group(inp.deployment, inp.into_region, inp.into_group)
        src, dst = aws.iot(inp.list_region), aws.iot(inp.into_region)
        while not cursor.exhausted and (inp.size == 0 or added < inp.size):
            names, next_token = fetch_page(
                src,
                "list_things_in_thing_group",
                "things",
                cursor.token,
                100,
                thingGroupName=inp.list_group,
                recursive=True,
            )
            take = names[cursor.skip :]
            if inp.size:
                take = take[: inp.size - added]
            chosen = self._choose(inp, take)
            with ThreadPoolExecutor(self.max_workers) as pool:
                list(
                    pool.map(
                        lambda t: dst.add_thing_to_thing_group(thingGroupName=inp.into_group, thingName=t),
                        chosen,
                    )
                )
            added += len(chosen)
            already += len(take) - len(chosen) if inp.skip_in else 0
            consumed = cursor.skip + len(take)
            if consumed < len(names):
                cursor = Cursor(cursor.token, consumed)
            else:
                cursor = Cursor(next_token, 0, exhausted=next_token is None)
            beat.beat(
                {"token": cursor.token, "skip": cursor.skip, "exhausted": cursor.exhausted}, added, already
            )
        return FilledGroup(arn, added, cursor, already)

    def _choose(self, inp: FillGroupInput, things: list[str]) -> list[str]:
        """The devices of a page that belong in the group, by where their shadows say they are."""
        region = inp.only_confirmed_in or inp.skip_in
        if not region:
            return things
        there = self._reports(inp.deployment, region, things)
        if inp.only_confirmed_in:
            return [t for t in things if there[t].confirms(region, inp.min_epoch)]
        # a shadow keeps saying where a device was: it is there now only if it spoke there last
        maybe = [t for t in things if there[t].region == region]
        home = self._reports(inp.deployment, inp.list_region, maybe)
        moved = {
            t
            for t in maybe
            if home[t].region != inp.list_region or there[t].reported_at > home[t].reported_at
        }
        return [t for t in things if t not in moved]

    def _reports(self, deployment: str, region: str, things: list[str]) -> dict[str, DeviceReport]:
        with ThreadPoolExecutor(self.max_workers) as pool:
            return dict(
                zip(things, pool.map(lambda t: self._report(deployment, region, t), things), strict=True)
            )

    @activity.defn
    @aws_activity(lambda inp: (f"creating job {inp.job_id}", inp.region))
    def create_wave_job(self, inp: WaveJobInput) -> JobRef:
        """Create the wave's migrate-region job; an existing job with this ID is this wave's (idempotent)."""
        iot = self.deployments.aws(inp.deployment).iot(inp.region)
        try:
            resp = iot.create_job(
                jobId=inp.job_id,
                targets=[inp.target_arn],
                document=json.dumps(inp.document),
                description=inp.description[:2028],
                targetSelection="SNAPSHOT",
                jobExecutionsRolloutConfig={"maximumPerMinute": inp.rollout_per_minute},
                abortConfig={
                    "criteriaList": [
                        {
                            "failureType": "ALL",
                            "action": "CANCEL",
                            "thresholdPercentage": inp.abort_failure_percent,
                            "minNumberOfExecutedThings": abort_minimum(inp.wave_size),
                        }
                    ]
                },
                timeoutConfig={"inProgressTimeoutInMinutes": inp.in_progress_timeout_minutes},
                tags=[{"Key": "iotfailover:deployment", "Value": inp.deployment}],
            )
            return JobRef(inp.job_id, resp["jobArn"], created=True)
        except ClientError as e:
            if is_already_exists(e):
                return self._existing_job(iot, inp)
            raise

    def _existing_job(self, iot: Any, inp: WaveJobInput) -> JobRef:
        """A job with this ID is this wave's (a retry) only if its document names our cutover and
        epoch; anyone else's would leave the wave's devices unmoved while we wait for them."""
        with failing_as(f"reading existing job {inp.job_id}", inp.region):
            job = iot.describe_job(jobId=inp.job_id)["job"]
            document = iot.get_job_document(jobId=inp.job_id).get("document") or "{}"
        try:
            doc = json.loads(document)
        except ValueError:
            doc = {}
        ours = {k: inp.document.get(k) for k in ("cutoverId", "epoch", "targetRegion")}
        theirs = {k: doc.get(k) for k in ours} if isinstance(doc, dict) else {}
        if theirs != ours:
            raise ApplicationError(
                f"job {inp.job_id} already exists in {inp.region} for another cutover ({theirs}, this is "
                f"{ours}): its epoch was used before (hint: restart the deployment entity so it adopts "
                "the highest epoch of every fence, then request the cutover again)",
                type="JobIdTaken",
                non_retryable=True,
            )
        return JobRef(inp.job_id, job["jobArn"], created=False)

    @activity.defn
    def wait_for_job(self, inp: WaitJobInput) -> JobOutcome:
        """Poll a job until it settles or the timeout passes, heartbeating its counts."""
        iot = self.deployments.aws(inp.deployment).iot(inp.region)
        deadline = time.monotonic() + inp.timeout_seconds
        while True:
            with failing_as(f"reading job {inp.job_id}", inp.region):
                job = iot.describe_job(jobId=inp.job_id)["job"]
            details = job.get("jobProcessDetails", {})
            counts = {
                k.removeprefix("numberOf").removesuffix("Things"): v
                for k, v in details.items()
                if k.startswith("numberOf")
            }
            active = counts.get("Queued", 0) + counts.get("InProgress", 0)
            activity.heartbeat(counts)
            if job["status"] in ("COMPLETED", "CANCELED") or active == 0 or time.monotonic() > deadline:
                return JobOutcome(inp.job_id, job["status"], counts, self._failures(iot, inp.job_id))
            time.sleep(inp.poll_seconds)

    def _failures(self, iot: Any, job_id: str, limit: int = 20) -> list[str]:
        out: list[str] = []
        for status in ("FAILED", "REJECTED", "TIMED_OUT"):
            items, _ = fetch_page(
                iot,
                "list_job_executions_for_job",
                "executionSummaries",
                None,
                limit,
                jobId=job_id,
                status=status,
            )
            for s in items:
                thing = s.get("thingArn", "").rsplit("/", 1)[-1]
                out.append(f"{thing}: {status}")
        return out[:limit]

    @activity.defn
    @aws_activity(lambda inp: (f"canceling job {inp.job_id}", inp.region))
    def cancel_job(self, inp: CancelJobInput) -> str:
        """Cancel a wave's job (with `force`, in-progress executions too); a missing or finished job is fine."""
        iot = self.deployments.aws(inp.deployment).iot(inp.region)
        try:
            iot.cancel_job(jobId=inp.job_id, reasonCode="ABORTED", comment=inp.reason[:2028], force=inp.force)
            return "canceled"
        except ClientError as e:
            if is_not_found(e) or e.response["Error"]["Code"] in (
                "InvalidRequestException",
                "ConflictException",
            ):
                return "not-running"
            raise

    @activity.defn
    def delete_wave_groups(self, inp: DeleteGroupsInput) -> int:
        """Remove a finished cutover's wave groups (a thing may belong to only 10 static groups)."""
        iot = self.deployments.aws(inp.deployment).iot(inp.region)
        deleted = 0
        for name in inp.groups:
            with failing_as(f"deleting group {name}", inp.region):
                try:
                    iot.delete_thing_group(thingGroupName=name)
                    deleted += 1
                except ClientError as e:
                    if not is_not_found(e):
                        raise
        return deleted


def activities(deployments: Deployments) -> list:
    a = JobActivities(deployments)
    return [
        a.count_group,
        a.fill_group,
        a.create_wave_job,
        a.wait_for_job,
        a.verify_devices,
        a.cancel_job,
        a.delete_wave_groups,
    ]
