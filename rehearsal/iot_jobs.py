"""IoT Jobs as AWS documents them, on top of moto's job models, and the device side (`iot-jobs-data`).

Measured on moto 5.2.5, its jobs are static: a thing-group target becomes one execution of a "thing"
named after the group, `jobProcessDetails` never change, a job never completes, every execution
number and version is 123, `cancel_job` leaves executions untouched, `create_job` silently replaces
an existing job, and there is no `iot-jobs-data` at all. This module patches moto's IoT backend
inside the emulator process (only there) so that:
- targets are expanded at creation: things, and the members of thing groups and of their child
  groups; a CONTINUOUS job also reaches things added to a targeted group later, and marks the QUEUED
  execution of a thing removed from it REMOVED;
- every execution has its own execution number and a version incremented on every change, and all
  status changes go through `Execution.set_status`, which keeps the job's per-status counts exact,
  so `jobProcessDetails`, completion and abort checks are O(1) per device update;
- a SNAPSHOT job is COMPLETED once every execution is terminal; the abort config (criteriaList:
  FAILED/REJECTED/TIMED_OUT/ALL, thresholdPercentage of the executions that reached a terminal
  status, once at least minNumberOfExecutedThings did) cancels the job and its QUEUED executions;
- in-progress timeouts (`timeoutConfig.inProgressTimeoutInMinutes` from the start,
  `stepTimeoutInMinutes` from the device's last update) move executions to TIMED_OUT, evaluated
  lazily whenever a job or execution is read or updated;
- `cancel_job` cancels QUEUED executions (and IN_PROGRESS ones with force=True); cancelling a
  COMPLETED job is an InvalidRequestException, cancelling a CANCELED one again is allowed;
  `delete_job` removes the executions; `list_jobs` filters on status, targetSelection and
  thingGroupName, and its paging ends (moto's token names a missing attribute, so a client paging
  ListJobs got the first page forever); a second `create_job` with the same id is
  ResourceAlreadyExistsException. Not emulated: schedulingConfig, jobExecutionsRetryConfig, and the
  rollout rate (jobExecutionsRolloutConfig is kept and echoed back; every execution is queued at once).
The device side, `iot-jobs-data`, is jobs_data.py, over the executions kept here (it imports this
module, never the reverse); the emulator installs both. The Jobs clock (`now`) can be moved forward
by tests (jobs_data.advance_clock).
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from moto.core.responses import ActionResult
from moto.iot.exceptions import (
    InvalidRequestException,
    InvalidStateTransitionException,
    ResourceAlreadyExistsException,
    ResourceNotFoundException,
)
from moto.iot.models import FakeJob, IoTBackend
from moto.iot.responses import IoTResponse
from moto.iot.utils import PAGINATION_MODEL
from moto.utilities.paginator import paginate

from rehearsal.iot_gaps import group_things

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"})
DEVICE_STATUSES = frozenset({"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"})
_EXECUTED = ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT")
_FAILURES = {
    "FAILED": ("FAILED",),
    "REJECTED": ("REJECTED",),
    "TIMED_OUT": ("TIMED_OUT",),
    "ALL": ("FAILED", "REJECTED", "TIMED_OUT"),
}
_DETAILS = {
    "QUEUED": "numberOfQueuedThings",
    "IN_PROGRESS": "numberOfInProgressThings",
    "SUCCEEDED": "numberOfSucceededThings",
    "FAILED": "numberOfFailedThings",
    "REJECTED": "numberOfRejectedThings",
    "CANCELED": "numberOfCanceledThings",
    "TIMED_OUT": "numberOfTimedOutThings",
    "REMOVED": "numberOfRemovedThings",
}
LOCK = threading.RLock()  # the emulator serves requests on threads; job state changes are atomic
CLOCK = {"offset": 0.0}
WATCHERS: list[Callable[[str, str, str], None]] = []  # (account, region, thing): the MQTT notifications


def changed(job: FakeJob, thing_name: str) -> None:
    """A thing's executions changed (created, moved, deleted): tell the watchers, who must not block."""
    for watch in WATCHERS:
        watch(job.account_id, job.region_name, thing_name)


def now() -> float:
    """The emulator's clock: wall time plus what tests advanced it by."""
    return time.time() + CLOCK["offset"]


def _utc(t: float | None) -> dt.datetime | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC)


class Execution:
    """One thing's execution of one job (replaces moto's FakeJobExecution, same attribute names)."""

    def __init__(self, job: FakeJob, thing_arn: str, number: int):
        self.job = job
        self.job_id = job.job_id
        self.thing_arn = thing_arn
        self.thing_name = thing_arn.rsplit("/", 1)[-1]
        self.status = "QUEUED"
        self.status_details_map: dict[str, str] = {}
        self.force_canceled = False
        self.queued_at = self.last_updated_at = now()
        self.started_at: float | None = None
        self.step_deadline: float | None = None
        self.execution_number = number
        self.version_number = 1
        job.counts["QUEUED"] += 1
        changed(job, self.thing_name)

    def set_status(self, status: str, details: dict[str, str] | None = None) -> None:
        counts = self.job.counts
        counts[self.status] -= 1
        counts[status] += 1
        self.job.running.pop(self.thing_name, None)
        if status == "IN_PROGRESS":
            self.job.running[self.thing_name] = self
            self.started_at = self.started_at or now()
        if status in TERMINAL:
            self.step_deadline = None
        self.status = status
        if details is not None:
            self.status_details_map = dict(details)
        self.version_number += 1
        self.last_updated_at = now()
        changed(self.job, self.thing_name)

    def deadline(self) -> float | None:
        if self.status != "IN_PROGRESS":
            return None
        minutes = (self.job.timeout_config or {}).get("inProgressTimeoutInMinutes")
        limits = [self.step_deadline, self.started_at + minutes * 60 if minutes and self.started_at else None]
        return min((t for t in limits if t is not None), default=None)

    def expire(self) -> bool:
        """Move to TIMED_OUT if a timer ran out; True when it did."""
        deadline = self.deadline()
        if deadline is None or now() < deadline:
            return False
        self.set_status("TIMED_OUT")
        return True

    def seconds_left(self) -> int | None:
        deadline = self.deadline()
        return None if deadline is None else max(0, int(deadline - now()))

    def to_get_dict(self) -> dict[str, Any]:
        """The control plane's JobExecution (moto's DescribeJobExecution response calls it)."""
        return {
            "jobId": self.job_id,
            "status": self.status,
            "forceCanceled": self.force_canceled,
            "statusDetails": {"detailsMap": self.status_details_map},
            "thingArn": self.thing_arn,
            "queuedAt": _utc(self.queued_at),
            "startedAt": _utc(self.started_at),
            "lastUpdatedAt": _utc(self.last_updated_at),
            "executionNumber": self.execution_number,
            "versionNumber": self.version_number,
            "approximateSecondsBeforeTimedOut": self.seconds_left(),
        }

    def to_dict(self) -> dict[str, Any]:
        """The control plane's JobExecutionSummaryForJob / ForThing."""
        return {
            "jobId": self.job_id,
            "thingArn": self.thing_arn,
            "jobExecutionSummary": {
                "status": self.status,
                "queuedAt": _utc(self.queued_at),
                "startedAt": _utc(self.started_at),
                "lastUpdatedAt": _utc(self.last_updated_at),
                "executionNumber": self.execution_number,
            },
        }

    def device_summary(self) -> dict[str, Any]:
        """iot-jobs-data JobExecutionSummary (times in epoch seconds)."""
        out = {
            "jobId": self.job_id,
            "queuedAt": int(self.queued_at),
            "lastUpdatedAt": int(self.last_updated_at),
            "versionNumber": self.version_number,
            "executionNumber": self.execution_number,
        }
        if self.started_at is not None:
            out["startedAt"] = int(self.started_at)
        return out

    def device_dict(self, include_document: bool = True) -> dict[str, Any]:
        """iot-jobs-data JobExecution."""
        out = {**self.device_summary(), "thingName": self.thing_name, "status": self.status}
        out["statusDetails"] = self.status_details_map
        if (left := self.seconds_left()) is not None:
            out["approximateSecondsBeforeTimedOut"] = left
        if include_document and self.job.document is not None:
            out["jobDocument"] = self.job.document
        return out


# --- job-level rules -----------------------------------------------------------------------------


def executions_of(backend: IoTBackend) -> dict[str, dict[str, Execution]]:
    """thing name -> {job id: execution}, in queue order; lives on the backend so a reset clears it."""
    if not hasattr(backend, "executions_by_thing"):
        backend.executions_by_thing = {}
        backend.execution_numbers = itertools.count(1)
    return backend.executions_by_thing


def _add_execution(backend: IoTBackend, job: FakeJob, thing_arn: str) -> None:
    thing_name = thing_arn.rsplit("/", 1)[-1]
    if thing_name in job.executions:
        return
    by_thing = executions_of(backend)
    ex = Execution(job, thing_arn, next(backend.execution_numbers))
    job.executions[thing_name] = ex
    by_thing.setdefault(thing_name, {})[job.job_id] = ex
    backend.job_executions[(job.job_id, thing_name)] = ex


def settle(job: FakeJob) -> None:
    """Apply the abort config and completion after executions changed; refresh the process details."""
    counts, before = job.counts, (job.status, job.job_process_details)
    if job.status == "IN_PROGRESS":
        reason = _abort_reason(job)
        if reason:
            _cancel(job, force=False, reason_code=None, comment=reason)
        elif job.target_selection == "SNAPSHOT" and not counts["QUEUED"] and not counts["IN_PROGRESS"]:
            job.status = "COMPLETED"
            job.completed_at = _utc(now())
    job.job_process_details = {key: counts[status] for status, key in _DETAILS.items()}
    if (job.status, job.job_process_details) != before:
        job.last_updated_at = _utc(now())


def _abort_reason(job: FakeJob) -> str | None:
    executed = sum(job.counts[s] for s in _EXECUTED)
    for rule in (job.abort_config or {}).get("criteriaList", []):
        failures = sum(job.counts[s] for s in _FAILURES.get(rule.get("failureType"), ()))
        enough = executed >= int(rule.get("minNumberOfExecutedThings", 1)) and executed > 0
        if (
            rule.get("action") == "CANCEL"
            and enough
            and failures * 100 >= float(rule["thresholdPercentage"]) * executed
        ):
            return (
                f"aborted: {failures} of {executed} executed things {rule['failureType']} "
                f"(threshold {rule['thresholdPercentage']}%)"
            )
    return None


def _cancel(job: FakeJob, force: bool, reason_code: str | None, comment: str | None) -> None:
    job.status = "CANCELED"
    job.force = job.force or force
    job.reason_code = reason_code or job.reason_code
    job.comment = comment or job.comment
    job.completed_at = job.completed_at or _utc(now())
    for ex in job.executions.values():
        if ex.status == "QUEUED" or (force and ex.status == "IN_PROGRESS"):
            ex.force_canceled = ex.status == "IN_PROGRESS"
            ex.set_status("CANCELED")


def _refresh(job: FakeJob) -> FakeJob:
    for ex in list(job.running.values()):
        ex.expire()
    settle(job)
    return job


def _job(backend: IoTBackend, job_id: str) -> FakeJob:
    job = backend.jobs.get(job_id)
    if job is None:
        raise ResourceNotFoundException(f"Job {job_id} does not exist")
    return job


def find_execution(backend: IoTBackend, job_id: str, thing_name: str) -> Execution:
    ex = executions_of(backend).get(thing_name, {}).get(job_id)
    if ex is None:
        raise ResourceNotFoundException(f"No job execution of {job_id} for thing {thing_name}")
    if ex.expire():
        settle(ex.job)
    return ex


def _locked(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with LOCK:
            return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


# --- the control plane, patched into moto's IoTBackend ------------------------------------------


def create_job(self: IoTBackend, job_id: str, targets: list[str], target_selection: str | None, **kw: Any):
    if job_id in self.jobs:
        job = self.jobs[job_id]
        raise ResourceAlreadyExistsException(f"Job {job_id} already exists", job_id, job.job_arn)
    job = FakeJob(
        job_id=job_id,
        targets=targets,
        target_selection=target_selection or "SNAPSHOT",
        account_id=self.account_id,
        region_name=self.region_name,
        **kw,
    )
    job.status = "IN_PROGRESS"
    job.counts, job.executions, job.running = Counter(), {}, {}
    things: list[str] = []
    for target in targets:
        if ":thinggroup/" in target:
            if target not in self.thing_groups:
                raise ResourceNotFoundException(f"Thing group {target} does not exist")
            things.extend(t.arn for t in group_things(self, self.thing_groups[target], recursive=True))
        else:
            things.append(target)
    self.jobs[job_id] = job
    for arn in things:
        _add_execution(self, job, arn)
    settle(job)
    return job.job_arn, job_id, job.description


def describe_job(self: IoTBackend, job_id: str) -> FakeJob:
    return _refresh(_job(self, job_id))


def cancel_job(self: IoTBackend, job_id: str, reason_code: str, comment: str, force: bool) -> FakeJob:
    job = _refresh(_job(self, job_id))
    if job.status == "COMPLETED":
        raise InvalidRequestException(f"Job {job_id} is COMPLETED and cannot be canceled")
    _cancel(job, bool(force), reason_code, comment)
    settle(job)
    return job


def delete_job(self: IoTBackend, job_id: str, force: bool) -> None:
    job = _refresh(_job(self, job_id))
    if not force and (job.status == "IN_PROGRESS" or job.counts["IN_PROGRESS"]):
        raise InvalidStateTransitionException(f"Job {job_id} is in progress; delete it with force")
    by_thing = executions_of(self)
    for thing_name in job.executions:
        by_thing.get(thing_name, {}).pop(job_id, None)
        self.job_executions.pop((job_id, thing_name), None)
        changed(job, thing_name)
    del self.jobs[job_id]


def describe_job_execution(self: IoTBackend, job_id: str, thing_name: str, execution_number: int | None):
    ex = find_execution(self, job_id, thing_name)
    if execution_number is not None and ex.execution_number != execution_number:
        raise ResourceNotFoundException(
            f"No execution number {execution_number} of {job_id} for {thing_name}"
        )
    return ex


def cancel_job_execution(self: IoTBackend, job_id: str, thing_name: str, force: bool) -> None:
    ex = find_execution(self, job_id, thing_name)
    if ex.status in TERMINAL or (ex.status == "IN_PROGRESS" and not force):
        raise InvalidStateTransitionException(f"Cannot cancel an execution that is {ex.status}")
    ex.force_canceled = ex.status == "IN_PROGRESS"
    ex.set_status("CANCELED")
    settle(ex.job)


def delete_job_execution(self: IoTBackend, job_id: str, thing_name: str, execution_number: int, force: bool):
    ex = describe_job_execution(self, job_id, thing_name, execution_number)
    if ex.status not in TERMINAL and not force:
        raise InvalidStateTransitionException(f"Execution is {ex.status}; delete it with force")
    ex.job.counts[ex.status] -= 1
    ex.job.running.pop(thing_name, None)
    del ex.job.executions[thing_name]
    del executions_of(self)[thing_name][job_id]
    del self.job_executions[(job_id, thing_name)]
    changed(ex.job, thing_name)
    settle(ex.job)


@paginate(PAGINATION_MODEL)
def list_job_executions_for_job(self: IoTBackend, job_id: str, status: str | None) -> list[Execution]:
    job = _refresh(_job(self, job_id))
    return [ex for ex in job.executions.values() if not status or ex.status == status]


@paginate(PAGINATION_MODEL)
def list_job_executions_for_thing(self: IoTBackend, thing_name: str, status: str | None) -> list[Execution]:
    out = []
    for ex in list(executions_of(self).get(thing_name, {}).values()):
        if ex.expire():
            settle(ex.job)
        if not status or ex.status == status:
            out.append(ex)
    return out


def _continuous_jobs_for(backend: IoTBackend, group_arn: str) -> list[FakeJob]:
    group = backend.thing_groups.get(group_arn)
    if group is None:
        return []
    arns = {group_arn, *(g["groupArn"] for g in group.metadata.get("rootToParentThingGroups", []))}
    return [
        j
        for j in backend.jobs.values()
        if j.target_selection == "CONTINUOUS" and j.status == "IN_PROGRESS" and arns & set(j.targets)
    ]


def _group_change(original: Any, added: bool) -> Any:
    def change(
        self: IoTBackend,
        thing_group_name: str,
        thing_group_arn: str | None,
        thing_name: str,
        thing_arn: str | None,
    ) -> None:
        original(self, thing_group_name, thing_group_arn, thing_name, thing_arn)
        group = self._identify_thing_group(thing_group_name, thing_group_arn)
        thing = self._identify_thing(thing_name, thing_arn)
        for job in _continuous_jobs_for(self, group.arn):
            if added:
                _add_execution(self, job, thing.arn)
            elif (ex := job.executions.get(thing.thing_name)) and ex.status == "QUEUED":
                ex.set_status("REMOVED")
            settle(job)

    change.__name__ = original.__name__
    return change


@paginate({"list_jobs": {**PAGINATION_MODEL["list_jobs"], "unique_attribute": "job_id"}})
def list_jobs(
    self: IoTBackend, status: str | None, target_selection: str | None, thing_group_name: str | None
) -> list[FakeJob]:
    group = self.describe_thing_group(thing_group_name).arn if thing_group_name else None
    return [
        job
        for job in map(_refresh, self.jobs.values())
        if (not status or job.status == status)
        and (not target_selection or job.target_selection == target_selection)
        and (not group or group in job.targets)
    ]


def list_jobs_response(self: IoTResponse) -> ActionResult:
    """ListJobs with the status, targetSelection and thingGroupName filters moto ignores."""
    jobs, token = self.iot_backend.list_jobs(
        status=self._get_param("status"),
        target_selection=self._get_param("targetSelection"),
        thing_group_name=self._get_param("thingGroupName"),
        max_results=self._get_int_param("maxResults", 50),
        next_token=self._get_param("nextToken"),
    )
    return ActionResult({"jobs": [job.to_dict() for job in jobs], "nextToken": token})


def install(emulator: Any) -> None:
    """Patch moto's IoT backend in this process (idempotent); jobs_data.install adds the device side."""
    del emulator  # nothing to route: the control plane is moto's own service
    if getattr(IoTBackend, "jobs_as_documented", False):
        return
    IoTBackend.jobs_as_documented = True
    patches = {
        f.__name__: f
        for f in (
            create_job,
            describe_job,
            cancel_job,
            delete_job,
            describe_job_execution,
            cancel_job_execution,
            delete_job_execution,
            list_job_executions_for_job,
            list_job_executions_for_thing,
            list_jobs,
            _group_change(IoTBackend.add_thing_to_thing_group, added=True),
            _group_change(IoTBackend.remove_thing_from_thing_group, added=False),
        )
    }
    for name, fn in patches.items():
        setattr(IoTBackend, name, _locked(fn))
    IoTResponse.list_jobs = list_jobs_response
