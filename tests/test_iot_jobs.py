"""IoT Jobs in the emulator, through boto3: the device side (iot-jobs-data) and the control plane agree."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from core.aws import AwsClients
from core.config import DeploymentConfig
from rehearsal.jobs_data import advance_clock


@dataclass
class Region:
    url: str
    iot: Any
    jobs: Any

    def fleet(self, group: str, n: int, prefix: str = "dev") -> str:
        """A static thing group with `n` things; returns its ARN."""
        arn = self.iot.create_thing_group(thingGroupName=group)["thingGroupArn"]
        for i in range(n):
            self.iot.create_thing(thingName=f"{prefix}{i}")
            self.iot.add_thing_to_thing_group(thingGroupName=group, thingName=f"{prefix}{i}")
        return arn

    def job(self, job_id: str, targets: list[str], **kw: Any) -> dict:
        doc = {"operation": "migrate-region", "epoch": 7, "targetRegion": "us-west-2"}
        self.iot.create_job(jobId=job_id, targets=targets, document=json.dumps(doc), **kw)
        return self.iot.describe_job(jobId=job_id)["job"]

    def details(self, job_id: str) -> dict:
        return self.iot.describe_job(jobId=job_id)["job"]["jobProcessDetails"]


def _region(emulators: dict[str, str], name: str) -> Region:
    kw = {
        "region_name": name,
        "endpoint_url": emulators[name],
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "config": Config(retries={"max_attempts": 1}),
    }
    return Region(emulators[name], boto3.client("iot", **kw), boto3.client("iot-jobs-data", **kw))


@pytest.fixture
def east(emulators: dict[str, str]) -> Region:
    return _region(emulators, "us-east-1")


def _code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return e.value.response["Error"]["Code"]


def test_group_target_is_expanded_and_a_device_update_shows_in_the_control_plane(east: Region) -> None:
    group = east.fleet("wave-0", 3)
    job = east.job("demo-7-0", [group], targetSelection="SNAPSHOT")
    assert job["status"] == "IN_PROGRESS"
    assert job["jobProcessDetails"]["numberOfQueuedThings"] == 3
    listed = east.iot.list_job_executions_for_job(jobId="demo-7-0")["executionSummaries"]
    assert sorted(e["thingArn"].rsplit("/", 1)[1] for e in listed) == ["dev0", "dev1", "dev2"]
    assert len({e["jobExecutionSummary"]["executionNumber"] for e in listed}) == 3
    first = east.iot.list_job_executions_for_job(jobId="demo-7-0", maxResults=2)
    rest = east.iot.list_job_executions_for_job(jobId="demo-7-0", maxResults=2, nextToken=first["nextToken"])
    assert len(first["executionSummaries"]) == 2 and rest["executionSummaries"] == listed[2:]
    assert "nextToken" not in rest

    pending = east.jobs.get_pending_job_executions(thingName="dev0")
    assert [j["jobId"] for j in pending["queuedJobs"]] == ["demo-7-0"] and pending["inProgressJobs"] == []
    queued = pending["queuedJobs"][0]
    started = east.jobs.start_next_pending_job_execution(thingName="dev0", statusDetails={"step": "connect"})
    ex = started["execution"]
    assert ex["status"] == "IN_PROGRESS" and ex["versionNumber"] == queued["versionNumber"] + 1
    assert json.loads(ex["jobDocument"])["epoch"] == 7 and ex["statusDetails"] == {"step": "connect"}

    state = east.jobs.update_job_execution(
        thingName="dev0",
        jobId="demo-7-0",
        status="SUCCEEDED",
        statusDetails={"region": "us-west-2"},
        expectedVersion=ex["versionNumber"],
        includeJobExecutionState=True,
    )["executionState"]
    assert state == {"status": "SUCCEEDED", "statusDetails": {"region": "us-west-2"}, "versionNumber": 3}

    seen = east.iot.describe_job_execution(jobId="demo-7-0", thingName="dev0")["execution"]
    assert seen["status"] == "SUCCEEDED" and seen["statusDetails"]["detailsMap"] == {"region": "us-west-2"}
    assert seen["versionNumber"] == 3 and seen["startedAt"] <= seen["lastUpdatedAt"]
    # same HTTP path as GetPendingJobExecutions: routed to the control plane by the credential scope
    for_thing = east.iot.list_job_executions_for_thing(thingName="dev0")["executionSummaries"]
    assert [(e["jobId"], e["jobExecutionSummary"]["status"]) for e in for_thing] == [
        ("demo-7-0", "SUCCEEDED")
    ]
    assert east.details("demo-7-0") == {
        "numberOfQueuedThings": 2,
        "numberOfInProgressThings": 0,
        "numberOfSucceededThings": 1,
        "numberOfFailedThings": 0,
        "numberOfRejectedThings": 0,
        "numberOfCanceledThings": 0,
        "numberOfTimedOutThings": 0,
        "numberOfRemovedThings": 0,
    }


def test_version_conflicts_and_invalid_transitions_are_refused(east: Region) -> None:
    east.job("j", [east.fleet("g", 1)])
    with pytest.raises(ClientError) as e:
        east.jobs.update_job_execution(thingName="dev0", jobId="j", status="IN_PROGRESS", expectedVersion=5)
    assert _code(e) == "VersionConflictException"
    with pytest.raises(ClientError) as e:
        east.jobs.update_job_execution(thingName="dev0", jobId="j", status="CANCELED")
    assert _code(e) == "InvalidRequestException"
    with pytest.raises(ClientError) as e:
        east.jobs.update_job_execution(thingName="dev0", jobId="nope", status="IN_PROGRESS")
    assert _code(e) == "ResourceNotFoundException"
    number = east.jobs.describe_job_execution(thingName="dev0", jobId="j")["execution"]["executionNumber"]
    with pytest.raises(ClientError) as e:
        east.jobs.update_job_execution(
            thingName="dev0", jobId="j", status="FAILED", executionNumber=number + 1
        )
    assert _code(e) == "ResourceNotFoundException"
    east.jobs.update_job_execution(thingName="dev0", jobId="j", status="REJECTED", executionNumber=number)
    with pytest.raises(ClientError) as e:
        east.jobs.update_job_execution(thingName="dev0", jobId="j", status="IN_PROGRESS")
    assert _code(e) == "InvalidStateTransitionException"


def test_describe_next_prefers_in_progress_and_document_is_optional(east: Region) -> None:
    things = east.fleet("g", 1)
    east.job("first", [things])
    east.job("second", [things])
    assert east.jobs.describe_job_execution(thingName="dev0", jobId="$next")["execution"]["jobId"] == "first"
    east.jobs.update_job_execution(thingName="dev0", jobId="second", status="IN_PROGRESS")
    nxt = east.jobs.describe_job_execution(thingName="dev0", jobId="$next", includeJobDocument=False)
    assert nxt["execution"]["jobId"] == "second" and "jobDocument" not in nxt["execution"]
    assert east.jobs.start_next_pending_job_execution(thingName="dev0")["execution"]["jobId"] == "second"
    for job_id in ("first", "second"):
        east.jobs.update_job_execution(thingName="dev0", jobId=job_id, status="SUCCEEDED")
    assert "execution" not in east.jobs.describe_job_execution(thingName="dev0", jobId="$next")
    assert "execution" not in east.jobs.start_next_pending_job_execution(thingName="dev0")
    assert east.jobs.get_pending_job_executions(thingName="unknown-thing")["queuedJobs"] == []


def test_snapshot_job_completes_once_every_execution_is_terminal(east: Region) -> None:
    east.job("j", [east.fleet("g", 3)], targetSelection="SNAPSHOT")
    for i, status in enumerate(["SUCCEEDED", "FAILED", "REJECTED"]):
        east.jobs.start_next_pending_job_execution(thingName=f"dev{i}")
        assert east.iot.describe_job(jobId="j")["job"]["status"] == "IN_PROGRESS"
        east.jobs.update_job_execution(thingName=f"dev{i}", jobId="j", status=status)
    job = east.iot.describe_job(jobId="j")["job"]
    assert job["status"] == "COMPLETED" and job["completedAt"] >= job["createdAt"]
    d = job["jobProcessDetails"]
    assert (d["numberOfSucceededThings"], d["numberOfFailedThings"], d["numberOfRejectedThings"]) == (1, 1, 1)
    with pytest.raises(ClientError) as e:
        east.iot.cancel_job(jobId="j")
    assert _code(e) == "InvalidRequestException"


def test_abort_config_cancels_the_job_and_its_queued_executions(east: Region) -> None:
    abort = {
        "criteriaList": [
            {
                "failureType": "FAILED",
                "action": "CANCEL",
                "thresholdPercentage": 60,
                "minNumberOfExecutedThings": 2,
            }
        ]
    }
    east.job("j", [east.fleet("g", 5)], abortConfig=abort)
    east.jobs.start_next_pending_job_execution(thingName="dev4")
    east.jobs.update_job_execution(thingName="dev0", jobId="j", status="FAILED")
    assert east.iot.describe_job(jobId="j")["job"]["status"] == "IN_PROGRESS"  # 1 executed < minimum 2
    east.jobs.update_job_execution(thingName="dev1", jobId="j", status="SUCCEEDED")
    assert east.iot.describe_job(jobId="j")["job"]["status"] == "IN_PROGRESS"  # 1 of 2 = 50% < 60%
    east.jobs.update_job_execution(thingName="dev2", jobId="j", status="FAILED")  # 2 of 3 >= 60%
    job = east.iot.describe_job(jobId="j")["job"]
    assert job["status"] == "CANCELED" and "aborted" in job["comment"]
    assert job["jobProcessDetails"]["numberOfCanceledThings"] == 1  # dev3 was queued
    assert east.jobs.get_pending_job_executions(thingName="dev3")["queuedJobs"] == []
    # an execution already in progress may still finish, as in AWS
    east.jobs.update_job_execution(thingName="dev4", jobId="j", status="SUCCEEDED")
    assert east.details("j")["numberOfSucceededThings"] == 2


def test_in_progress_and_step_timeouts_move_executions_to_timed_out(east: Region) -> None:
    east.job("j", [east.fleet("g", 3)], timeoutConfig={"inProgressTimeoutInMinutes": 10})
    east.jobs.start_next_pending_job_execution(thingName="dev0")
    east.jobs.start_next_pending_job_execution(thingName="dev1", stepTimeoutInMinutes=2)
    east.jobs.start_next_pending_job_execution(thingName="dev2", stepTimeoutInMinutes=2)
    east.jobs.update_job_execution(thingName="dev2", jobId="j", status="IN_PROGRESS", stepTimeoutInMinutes=-1)
    left = east.jobs.describe_job_execution(thingName="dev1", jobId="j")["execution"]
    assert 100 < left["approximateSecondsBeforeTimedOut"] <= 120
    advance_clock(east.url, 121)
    assert east.iot.describe_job_execution(jobId="j", thingName="dev1")["execution"]["status"] == "TIMED_OUT"
    assert east.details("j")["numberOfInProgressThings"] == 2  # dev0 (10 min), dev2 (step timer cleared)
    advance_clock(east.url, 8 * 60)
    assert east.details("j")["numberOfTimedOutThings"] == 3
    assert east.iot.describe_job(jobId="j")["job"]["status"] == "COMPLETED"
    with pytest.raises(ClientError) as e:
        east.jobs.update_job_execution(thingName="dev0", jobId="j", status="SUCCEEDED")
    assert _code(e) == "InvalidStateTransitionException"


def test_cancel_job_cancels_queued_and_with_force_in_progress(east: Region) -> None:
    group = east.fleet("g", 3)
    east.job("soft", [group])
    east.job("hard", [group])
    for job_id in ("soft", "hard"):
        east.jobs.update_job_execution(thingName="dev0", jobId=job_id, status="IN_PROGRESS")
    with pytest.raises(ClientError) as e:
        east.iot.create_job(jobId="soft", targets=[group], document="{}")
    assert _code(e) == "ResourceAlreadyExistsException"

    east.iot.cancel_job(jobId="soft", reasonCode="ABORT", comment="operator abort")
    job = east.iot.describe_job(jobId="soft")["job"]
    assert (job["status"], job["reasonCode"], job["forceCanceled"]) == ("CANCELED", "ABORT", False)
    assert (
        job["jobProcessDetails"]["numberOfCanceledThings"],
        east.details("soft")["numberOfInProgressThings"],
    ) == (2, 1)

    east.iot.cancel_job(jobId="hard", force=True)
    ex = east.iot.describe_job_execution(jobId="hard", thingName="dev0")["execution"]
    assert ex["status"] == "CANCELED" and ex["forceCanceled"] is True
    assert east.details("hard")["numberOfCanceledThings"] == 3
    pending = east.jobs.get_pending_job_executions(thingName="dev1")
    assert pending["queuedJobs"] == [] and pending["inProgressJobs"] == []


def test_continuous_job_reaches_things_added_later(east: Region) -> None:
    group = east.fleet("g", 1)
    east.job("cont", [group], targetSelection="CONTINUOUS")
    east.iot.create_thing(thingName="late")
    east.iot.add_thing_to_thing_group(thingGroupName="g", thingName="late")
    assert [j["jobId"] for j in east.jobs.get_pending_job_executions(thingName="late")["queuedJobs"]] == [
        "cont"
    ]
    east.iot.create_thing(thingName="later")
    east.iot.update_thing_groups_for_thing(thingName="later", thingGroupsToAdd=["g"])
    assert east.jobs.get_pending_job_executions(thingName="later")["queuedJobs"][0]["jobId"] == "cont"
    east.iot.remove_thing_from_thing_group(thingGroupName="g", thingName="late")
    assert east.details("cont")["numberOfRemovedThings"] == 1
    east.jobs.update_job_execution(thingName="dev0", jobId="cont", status="SUCCEEDED")
    assert (
        east.iot.describe_job(jobId="cont")["job"]["status"] == "IN_PROGRESS"
    )  # continuous jobs never complete


def test_child_groups_are_targets_list_jobs_filters_and_delete_job_removes_executions(east: Region) -> None:
    parent = east.fleet("parent", 1)
    east.iot.create_thing_group(thingGroupName="child", parentGroupName="parent")
    east.iot.create_thing(thingName="kid")
    east.iot.add_thing_to_thing_group(thingGroupName="child", thingName="kid")
    east.job("j", [parent])
    assert east.details("j")["numberOfQueuedThings"] == 2
    with pytest.raises(ClientError) as e:
        east.iot.delete_job(jobId="j")
    assert _code(e) == "InvalidStateTransitionException"
    east.job("other", [east.fleet("elsewhere", 1, prefix="x")], targetSelection="CONTINUOUS")
    in_progress, token = [], None
    for _ in range(4):  # bounded: a token that never ends must fail the test, not hang it
        page = east.iot.list_jobs(
            status="IN_PROGRESS", maxResults=1, **({"nextToken": token} if token else {})
        )
        in_progress += [j["jobId"] for j in page["jobs"]]
        if not (token := page.get("nextToken")):
            break
    assert in_progress == ["j", "other"]
    assert [j["jobId"] for j in east.iot.list_jobs(thingGroupName="parent")["jobs"]] == ["j"]
    assert [j["jobId"] for j in east.iot.list_jobs(targetSelection="CONTINUOUS")["jobs"]] == ["other"]
    east.iot.delete_job(jobId="j", force=True)
    assert east.iot.list_job_executions_for_thing(thingName="kid")["executionSummaries"] == []
    assert east.jobs.get_pending_job_executions(thingName="kid")["queuedJobs"] == []


def _device(region: Region, thing: str, succeed: bool) -> None:
    """The device contract's job handling: poll, start next, then report the outcome."""
    pending = region.jobs.get_pending_job_executions(thingName=thing)
    if not pending["queuedJobs"] and not pending["inProgressJobs"]:
        return
    ex = region.jobs.start_next_pending_job_execution(thingName=thing, stepTimeoutInMinutes=5)["execution"]
    doc = json.loads(ex["jobDocument"])
    assert doc["operation"] == "migrate-region"
    region.jobs.update_job_execution(
        thingName=thing,
        jobId=ex["jobId"],
        status="SUCCEEDED" if succeed else "FAILED",
        statusDetails={"epoch": str(doc["epoch"])} if succeed else {"reason": "connect refused"},
        expectedVersion=ex["versionNumber"],
    )


def test_cutover_job_path_end_to_end_in_two_regions(config: DeploymentConfig) -> None:
    """Same job id in both regions: each region's executions are its own, as in AWS.

    Through the project's own client factory, as the controller and the simulator will call it.
    """
    aws = AwsClients(config, max_attempts=1)
    east, west = (
        Region(str(config.regions[n].endpoint_url), aws.iot(n), aws.jobs_data(n))
        for n in ("us-east-1", "us-west-2")
    )
    rollout = {"maximumPerMinute": 50}
    abort = {
        "criteriaList": [
            {
                "failureType": "ALL",
                "action": "CANCEL",
                "thresholdPercentage": 30,
                "minNumberOfExecutedThings": 4,
            }
        ]
    }
    timeout = {"inProgressTimeoutInMinutes": 15}
    for region in (east, west):
        group = region.fleet("demo-wave-0", 6)
        job = region.job(
            "demo-7-0",
            [group],
            targetSelection="SNAPSHOT",
            jobExecutionsRolloutConfig=rollout,
            abortConfig=abort,
            timeoutConfig=timeout,
        )
        assert job["jobExecutionsRolloutConfig"] == rollout and job["timeoutConfig"] == timeout
        assert job["abortConfig"]["criteriaList"][0]["failureType"] == "ALL"
        assert job["targets"] == [group] and job["targetSelection"] == "SNAPSHOT"
    for i in range(6):
        _device(east, f"dev{i}", succeed=True)
    for i in range(3):
        _device(west, f"dev{i}", succeed=i == 0)

    east_job = east.iot.describe_job(jobId="demo-7-0")["job"]
    assert east_job["status"] == "COMPLETED" and east_job["jobProcessDetails"]["numberOfSucceededThings"] == 6
    west_job = west.iot.describe_job(jobId="demo-7-0")["job"]
    assert west_job["status"] == "IN_PROGRESS"  # 2 failures of 3 executed, but fewer than 4 executed
    _device(west, "dev3", succeed=True)  # 2 of 4 = 50% >= 30%: aborted
    west_job = west.iot.describe_job(jobId="demo-7-0")["job"]
    assert west_job["status"] == "CANCELED"
    d = west_job["jobProcessDetails"]
    assert (d["numberOfSucceededThings"], d["numberOfFailedThings"], d["numberOfCanceledThings"]) == (2, 2, 2)
    statuses = {
        e["thingArn"].rsplit("/", 1)[1]: e["jobExecutionSummary"]["status"]
        for e in west.iot.list_job_executions_for_job(jobId="demo-7-0", maxResults=4)["executionSummaries"]
    }
    assert statuses == {"dev0": "SUCCEEDED", "dev1": "FAILED", "dev2": "FAILED", "dev3": "SUCCEEDED"}
    assert east.iot.list_job_executions_for_job(jobId="demo-7-0", status="SUCCEEDED")["executionSummaries"]
