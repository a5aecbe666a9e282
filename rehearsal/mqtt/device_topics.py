"""The `$aws/things/<thing>/...` topics a device uses, answered from the state boto3 sees.

Shadows (`shadow[/name/<n>]/update|get|delete`) go through moto's iot-data backend; what every
update publishes (`/update/accepted`, `/update/documents`, `/update/delta`) comes from the shadow hook
(hooks.py), so an update made over HTTP notifies devices as well. Jobs (`jobs/get`, `jobs/start-next`,
`jobs/<id>/get`, `jobs/<id>/update`, `$next` too) use the same functions as the HTTP `iot-jobs-data`
API (jobs_data.py); `jobs/notify` and `jobs/notify-next` are published whenever a thing's pending
executions change, however they changed (`job_notifications`). Errors answer on `/rejected` with IoT
Core's codes.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any

from moto.core.exceptions import JsonRESTError

from rehearsal import jobs_data
from rehearsal.jobs_model import LOCK

Reply = tuple[str, dict]
_SHADOW = re.compile(r"^\$aws/things/([^/]+)/shadow/(?:name/([^/]+)/)?(update|get|delete)$")
_JOBS = re.compile(r"^\$aws/things/([^/]+)/jobs/(?:(get|start-next)|([^/]+)/(get|update))$")
_JOB_CODES = {
    "ResourceNotFoundException": "ResourceNotFound",
    "InvalidStateTransitionException": "InvalidStateTransition",
    "VersionConflictException": "VersionMismatch",
    "InvalidRequestException": "InvalidRequest",
}


def _now() -> int:
    return int(time.time())


def _body(payload: bytes) -> dict:
    if not payload.strip():
        return {}
    doc = json.loads(payload)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def _token(body: dict) -> dict:
    return {"clientToken": body["clientToken"]} if isinstance(body.get("clientToken"), str) else {}


def handle(region: Any, identity: Any, topic: str, payload: bytes) -> list[Reply]:
    """Answer one device request; topics that are not requests (e.g. `.../accepted`) answer nothing."""
    del identity  # the broker has authorized the publish with the device's policies
    if m := _SHADOW.match(topic):
        return _shadow(region, topic, m.group(1), m.group(2), m.group(3), payload)
    if m := _JOBS.match(topic):
        return _jobs(region, topic, m.group(1), m.group(2) or m.group(4), m.group(3), payload)
    return []


# ---- shadows ------------------------------------------------------------------------------------


def _shadow(region: Any, topic: str, thing: str, name: str | None, op: str, payload: bytes) -> list[Reply]:
    try:
        body = _body(payload)
    except ValueError:
        return [
            (
                f"{topic}/rejected",
                {"code": 400, "message": "Payload contains invalid json", "timestamp": _now()},
            )
        ]
    try:
        if op == "update":
            region.data.update_thing_shadow(thing, payload.decode(), name)
            return []  # accepted, documents and delta come from the shadow hook
        if op == "get":
            return [
                (f"{topic}/accepted", {**region.data.get_thing_shadow(thing, name).to_dict(), **_token(body)})
            ]
        shadow = region.data.delete_thing_shadow(thing, name)
        return [(f"{topic}/accepted", {"version": shadow.version, "timestamp": _now(), **_token(body)})]
    except JsonRESTError as e:
        code = 404 if "NotFound" in e.error_type else 409 if "Conflict" in e.error_type else e.code
        if e.error_type == "RequestEntityTooLargeException":
            code = 413
        message = e.message or (
            "No shadow exists with name: " + (name or "classic") if code == 404 else e.error_type
        )
        return [
            (f"{topic}/rejected", {"code": code, "message": message, "timestamp": _now(), **_token(body)})
        ]


# ---- jobs ---------------------------------------------------------------------------------------


def _parsed(execution: dict | None) -> dict | None:
    """Over MQTT the job document is a JSON object, not the string iot-jobs-data answers."""
    if execution and isinstance(execution.get("jobDocument"), str):
        with contextlib.suppress(ValueError):
            execution = {**execution, "jobDocument": json.loads(execution["jobDocument"])}
    return execution


def _jobs(region: Any, topic: str, thing: str, op: str, job_id: str | None, payload: bytes) -> list[Reply]:
    try:
        body = _body(payload)
    except ValueError:
        return [
            (f"{topic}/rejected", {"code": "InvalidJson", "message": "invalid JSON", "timestamp": _now()})
        ]
    iot = region.iot
    try:
        with LOCK:
            if job_id is None and op == "get":
                out: dict = jobs_data.pending_executions(iot, thing)
            elif job_id is None:
                out = jobs_data.start_next(iot, thing, body)
            elif op == "get":
                query = {"includeJobDocument": str(body.get("includeJobDocument", True)).lower()}
                if body.get("executionNumber") is not None:
                    query["executionNumber"] = str(body["executionNumber"])
                out = jobs_data.describe_execution(iot, thing, job_id, query)
            else:
                out = jobs_data.update_execution(iot, thing, job_id, body)
    except JsonRESTError as e:
        code = _JOB_CODES.get(e.error_type, "InvalidRequest")
        return [
            (f"{topic}/rejected", {"code": code, "message": e.message, "timestamp": _now(), **_token(body)})
        ]
    if "execution" in out:
        out["execution"] = _parsed(out["execution"])
    if isinstance(out.get("jobDocument"), str):
        out["jobDocument"] = _parsed({"jobDocument": out["jobDocument"]})["jobDocument"]  # type: ignore[index]
    return [(f"{topic}/accepted", {**out, "timestamp": _now(), **_token(body)})]


def job_notifications(iot: Any, thing: str, before: tuple | None) -> tuple[tuple, list[Reply]]:
    """What `jobs/notify` and `jobs/notify-next` say now, and the messages if that changed."""
    with LOCK:
        pending = jobs_data.pending_executions(iot, thing)
        nxt = jobs_data.describe_execution(iot, thing, "$next", {"includeJobDocument": "true"})
    listed = tuple(
        (j["jobId"], status)
        for status, key in (("IN_PROGRESS", "inProgressJobs"), ("QUEUED", "queuedJobs"))
        for j in pending[key]
    )
    head = nxt["execution"]["jobId"] if nxt else None
    after = (listed, head)
    before = before or ((), None)
    messages: list[Reply] = []
    base = f"$aws/things/{thing}/jobs"
    if listed != before[0]:
        jobs = {"QUEUED": pending["queuedJobs"], "IN_PROGRESS": pending["inProgressJobs"]}
        messages.append(
            (f"{base}/notify", {"timestamp": _now(), "jobs": {k: v for k, v in jobs.items() if v}})
        )
    if head != before[1]:
        note: dict = {"timestamp": _now()}
        if nxt:
            note["execution"] = _parsed(nxt["execution"])
        messages.append((f"{base}/notify-next", note))
    return after, messages
