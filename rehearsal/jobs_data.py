"""The device side of IoT Jobs (`iot-jobs-data`), served by the emulator over iot_jobs' executions.

Routed on the SigV4 credential scope `iot-jobs-data`, because its paths overlap the control plane's
ListJobExecutionsForThing. GetPendingJobExecutions, StartNextPendingJobExecution, UpdateJobExecution
(expectedVersion -> VersionConflictException, executionNumber, statusDetails replaced when given,
stepTimeoutInMinutes with -1 to clear, includeJobExecutionState, includeJobDocument) and
DescribeJobExecution (jobId `$next` too; no pending execution answers `{}`). Devices may set
IN_PROGRESS, SUCCEEDED, FAILED or REJECTED from QUEUED or IN_PROGRESS; anything from a terminal
status is InvalidStateTransitionException, any other status an InvalidRequestException. The Jobs
clock can be moved forward (`advance_clock`, POST /_emulator/jobs/clock) so tests reach timeouts
without waiting.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from moto.backends import get_backend
from moto.core.exceptions import JsonRESTError
from moto.iam.models import get_account_id_from
from moto.iot.exceptions import (
    InvalidRequestException,
    InvalidStateTransitionException,
    ResourceNotFoundException,
)
from moto.iot.models import IoTBackend
from werkzeug.wrappers import Request, Response

from rehearsal.iot_jobs import describe_job_execution
from rehearsal.jobs_model import (
    CLOCK,
    DEVICE_STATUSES,
    LOCK,
    TERMINAL,
    Execution,
    executions_of,
    find_execution,
    now,
    settle,
)


class VersionConflict(JsonRESTError):
    code = 409

    def __init__(self, message: str):
        super().__init__("VersionConflictException", message)


def _pending(backend: IoTBackend, thing_name: str) -> list[Execution]:
    """The thing's QUEUED and IN_PROGRESS executions, oldest first (timeouts applied)."""
    out = []
    for ex in list(executions_of(backend).get(thing_name, {}).values()):
        if ex.expire():
            settle(ex.job)
        if ex.status in ("QUEUED", "IN_PROGRESS"):
            out.append(ex)
    return out


def _next(backend: IoTBackend, thing_name: str) -> Execution | None:
    pending = _pending(backend, thing_name)
    return next((e for e in pending if e.status == "IN_PROGRESS"), pending[0] if pending else None)


def _step(ex: Execution, minutes: int | None) -> None:
    if minutes == -1:
        ex.step_deadline = None
    elif minutes is not None:
        if not 1 <= int(minutes) <= 10080:
            raise InvalidRequestException("stepTimeoutInMinutes must be between 1 and 10080, or -1")
        ex.step_deadline = now() + int(minutes) * 60


def start_next(backend: IoTBackend, thing_name: str, body: dict) -> dict:
    ex = _next(backend, thing_name)
    if ex is None:
        return {}
    if ex.status == "QUEUED":
        ex.set_status("IN_PROGRESS", body.get("statusDetails"))
        _step(ex, body.get("stepTimeoutInMinutes"))
        settle(ex.job)
    return {"execution": ex.device_dict()}


def update_execution(backend: IoTBackend, thing_name: str, job_id: str, body: dict) -> dict:
    ex = find_execution(backend, job_id, thing_name)
    status = body.get("status")
    number = body.get("executionNumber")
    if number is not None and int(number) != ex.execution_number:
        raise ResourceNotFoundException(f"No execution number {number} of {job_id} for {thing_name}")
    expected = body.get("expectedVersion")
    if expected is not None and int(expected) != ex.version_number:
        raise VersionConflict(f"expected version {expected}, the execution is at {ex.version_number}")
    if ex.status in TERMINAL:
        raise InvalidStateTransitionException(f"Execution of {job_id} on {thing_name} is already {ex.status}")
    if status not in DEVICE_STATUSES:
        raise InvalidRequestException(
            f"A device cannot set status {status!r}; use one of {sorted(DEVICE_STATUSES)}"
        )
    _step(ex, body.get("stepTimeoutInMinutes"))
    ex.set_status(status, body.get("statusDetails"))
    settle(ex.job)
    out: dict[str, Any] = {}
    if body.get("includeJobExecutionState"):
        state = {
            "status": ex.status,
            "statusDetails": ex.status_details_map,
            "versionNumber": ex.version_number,
        }
        out["executionState"] = state
    if body.get("includeJobDocument") and ex.job.document is not None:
        out["jobDocument"] = ex.job.document
    return out


def describe_execution(backend: IoTBackend, thing_name: str, job_id: str, query: dict) -> dict:
    include_document = query.get("includeJobDocument", "true").lower() != "false"
    if job_id == "$next":
        ex = _next(backend, thing_name)
        return {"execution": ex.device_dict(include_document)} if ex else {}
    number = query.get("executionNumber")
    ex = describe_job_execution(backend, job_id, thing_name, int(number) if number else None)
    return {"execution": ex.device_dict(include_document)}


def pending_executions(backend: IoTBackend, thing_name: str) -> dict:
    pending = _pending(backend, thing_name)
    return {
        "inProgressJobs": [e.device_summary() for e in pending if e.status == "IN_PROGRESS"],
        "queuedJobs": [e.device_summary() for e in pending if e.status == "QUEUED"],
    }


class JobsDataApp:
    """WSGI app for `iot-jobs-data` requests: the four device-side Jobs calls over moto's backend."""

    def __call__(self, environ: dict, start_response: Any) -> Any:
        request = Request(environ)
        try:
            with LOCK:
                body = self._dispatch(request)
            resp = Response(json.dumps(body), status=200, mimetype="application/json")
        except JsonRESTError as e:
            return e(environ, start_response)
        return resp(environ, start_response)

    def _dispatch(self, request: Request) -> dict:
        parts = request.path.strip("/").split("/")
        if len(parts) < 3 or parts[0] != "things" or parts[2] != "jobs" or len(parts) > 4:
            raise ResourceNotFoundException(f"no iot-jobs-data operation {request.method} {request.path}")
        backend = self._backend(request)
        thing, job_id = parts[1], parts[3] if len(parts) == 4 else None
        body = request.get_json(silent=True) or {}
        if job_id is None and request.method == "GET":
            return pending_executions(backend, thing)
        if job_id == "$next" and request.method == "PUT":
            return start_next(backend, thing, body)
        if job_id and request.method == "GET":
            return describe_execution(backend, thing, job_id, dict(request.args))
        if job_id and request.method == "POST":
            return update_execution(backend, thing, job_id, body)
        raise ResourceNotFoundException(f"no iot-jobs-data operation {request.method} {request.path}")

    @staticmethod
    def _backend(request: Request) -> IoTBackend:
        """moto's IoT backend for the account and region the request is signed for."""
        scope = request.headers.get("Authorization", "").split("Credential=")[-1].split(",")[0].split("/")
        if len(scope) < 3:
            raise InvalidRequestException("request is not signed with SigV4")
        return get_backend("iot")[get_account_id_from(scope[0])][scope[2]]

    def control(self, route: str, request: Request) -> Response | None:
        """POST /_emulator/jobs/clock {"advance_seconds": N}: move the Jobs clock forward (tests)."""
        if route != "jobs/clock" or request.method != "POST":
            return None
        seconds = float((request.get_json(silent=True) or {}).get("advance_seconds", 0))
        if seconds < 0:
            return Response(json.dumps({"error": "advance_seconds must be >= 0"}), status=400)
        CLOCK["offset"] += seconds
        return Response(json.dumps({"offset": CLOCK["offset"]}), mimetype="application/json")

    def reset(self) -> None:
        CLOCK["offset"] = 0.0


def install(emulator: Any) -> None:
    """Serve `iot-jobs-data` from the emulator (after iot_jobs.install, whose executions it reads)."""
    emulator.extensions["iot-jobs-data"] = JobsDataApp()


def advance_clock(endpoint_url: str, seconds: float) -> None:
    """Move the emulator's Jobs clock forward so timeouts fire without waiting (tests and drills)."""
    req = urllib.request.Request(
        endpoint_url.rstrip("/") + "/_emulator/jobs/clock",
        data=json.dumps({"advance_seconds": seconds}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5):  # noqa: S310 (local emulator only)
        pass
