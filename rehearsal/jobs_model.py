"""The IoT Jobs model the emulator keeps (rehearsal/iot_jobs.py patches it into moto's backend, and
jobs_data.py serves the device side from it): executions with their own numbers and versions, the
job's per-status counts kept exact by every status change, completion, abort and timeouts, the lock
every change takes, and the clock tests can move forward.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from moto.iot.exceptions import (
    ResourceNotFoundException,
)
from moto.iot.models import FakeJob, IoTBackend

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


def add_execution(backend: IoTBackend, job: FakeJob, thing_arn: str) -> None:
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
            cancel(job, force=False, reason_code=None, comment=reason)
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


def cancel(job: FakeJob, force: bool, reason_code: str | None, comment: str | None) -> None:
    job.status = "CANCELED"
    job.force = job.force or force
    job.reason_code = reason_code or job.reason_code
    job.comment = comment or job.comment
    job.completed_at = job.completed_at or _utc(now())
    for ex in job.executions.values():
        if ex.status == "QUEUED" or (force and ex.status == "IN_PROGRESS"):
            ex.force_canceled = ex.status == "IN_PROGRESS"
            ex.set_status("CANCELED")


def refresh(job: FakeJob) -> FakeJob:
    for ex in list(job.running.values()):
        ex.expire()
    settle(job)
    return job


def job_of(backend: IoTBackend, job_id: str) -> FakeJob:
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


def locked(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with LOCK:
            return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper
