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
The model (executions, counts, completion, abort, timeouts) is jobs_model.py; the device side,
`iot-jobs-data`, is jobs_data.py over the same executions; the emulator installs both. The Jobs clock (`now`) can be moved forward
by tests (jobs_data.advance_clock).
"""

from __future__ import annotations

from collections import Counter
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
from rehearsal.jobs_model import (
    TERMINAL,
    Execution,
    add_execution,
    cancel,
    changed,
    executions_of,
    find_execution,
    job_of,
    locked,
    refresh,
    settle,
)

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
        add_execution(self, job, arn)
    settle(job)
    return job.job_arn, job_id, job.description


def describe_job(self: IoTBackend, job_id: str) -> FakeJob:
    return refresh(job_of(self, job_id))


def cancel_job(self: IoTBackend, job_id: str, reason_code: str, comment: str, force: bool) -> FakeJob:
    job = refresh(job_of(self, job_id))
    if job.status == "COMPLETED":
        raise InvalidRequestException(f"Job {job_id} is COMPLETED and cannot be canceled")
    cancel(job, bool(force), reason_code, comment)
    settle(job)
    return job


def delete_job(self: IoTBackend, job_id: str, force: bool) -> None:
    job = refresh(job_of(self, job_id))
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
    job = refresh(job_of(self, job_id))
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
                add_execution(self, job, thing.arn)
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
        for job in map(refresh, self.jobs.values())
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
        setattr(IoTBackend, name, locked(fn))
    IoTResponse.list_jobs = list_jobs_response
