"""Registry events as they arrive on a region's SQS queue, parsed into what must be re-synced.

Pure: no I/O. The queue carries what an AWS IoT topic rule forwards from `$aws/events/#` (see
deploy/aws/registry-events-rule.*): `SELECT *, topic() AS topic FROM '$aws/events/#'`, so a message
body is the event's own JSON with a `topic` field added. The envelope `{"topic": ..., "payload":
{...}}` is accepted too (tests and tools that publish by hand use it). Formats understood:

- AWS registry events (eventType THING_EVENT, THING_TYPE_EVENT, THING_TYPE_ASSOCIATION_EVENT,
  THING_GROUP_EVENT, THING_GROUP_MEMBERSHIP_EVENT, THING_GROUP_HIERARCHY_EVENT);
- the project's CERTIFICATE_EVENT and POLICY_EVENT (the seed talk's shape);
- just-in-time registration, topic `$aws/events/certificates/registered/<caCertificateId>`.

An event is a hint of *what* changed: the replicator re-reads the entity from the source region and
converges the target to it, which makes application idempotent and safe in any order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

JITR_TOPIC_PREFIX = "$aws/events/certificates/registered/"
OPERATIONS = {"CREATED", "UPDATED", "DELETED", "ADDED", "REMOVED"}


class EventError(ValueError):
    """An event that cannot be applied; `reason` is a short label for metrics and dead letters."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RegistryEvent:
    """What to re-sync: (kind, name) pairs in dependency order; `jitr_certificate` for JITR."""

    event_type: str
    operation: str
    event_id: str = ""
    timestamp_ms: int | None = None
    items: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    jitr_certificate: str | None = None


def _name_from_arn(arn: Any, marker: str) -> str | None:
    if isinstance(arn, str) and f":{marker}/" in arn:
        return arn.rsplit("/", 1)[-1] or None
    return None


def _require(payload: dict, key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value.strip():
        raise EventError("missing_field", f"{payload.get('eventType', 'event')} has no {key}")
    return value


def _timestamp(payload: dict) -> int | None:
    ts = payload.get("timestamp")
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return int(ts)
    if isinstance(ts, str) and ts.isdigit():
        return int(ts)
    return None


def _envelope(body: str) -> tuple[str, dict]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError):
        raise EventError("bad_json", f"message body is not JSON: {str(body)[:80]!r}") from None
    if not isinstance(data, dict):
        raise EventError("bad_json", "message body is not a JSON object")
    if isinstance(data.get("payload"), dict):
        return str(data.get("topic") or ""), data["payload"]
    topic = data.pop("topic", "")
    return str(topic or ""), data


def parse_event(body: str) -> RegistryEvent:
    """Parse one queue message body; raises EventError with a reason when it cannot be applied."""
    topic, payload = _envelope(body)
    if topic.startswith(JITR_TOPIC_PREFIX) or (
        "eventType" not in payload and {"certificateId", "caCertificateId"} <= payload.keys()
    ):
        cert = _require(payload, "certificateId")
        return RegistryEvent("JITR", "CREATED", cert, _timestamp(payload), (), cert)
    etype = payload.get("eventType")
    if not isinstance(etype, str):
        raise EventError("unknown_type", f"no eventType in event on topic {topic or '?'}")
    op = payload.get("operation")
    if op not in OPERATIONS:
        raise EventError("missing_field", f"{etype} has no valid operation (got {op!r})")
    items = _items(etype, payload)
    return RegistryEvent(etype, op, str(payload.get("eventId") or ""), _timestamp(payload), items)


def _items(etype: str, p: dict) -> tuple[tuple[str, str], ...]:
    if etype in ("THING_EVENT", "THING_TYPE_ASSOCIATION_EVENT"):
        return (("thing", _require(p, "thingName")),)
    if etype == "THING_TYPE_EVENT":
        return (("thing_type", _require(p, "thingTypeName")),)
    if etype == "THING_GROUP_EVENT":
        return (("thing_group", _require(p, "thingGroupName")),)
    if etype == "THING_GROUP_HIERARCHY_EVENT":
        return (("thing_group", _require(p, "childGroupName")),)
    if etype == "THING_GROUP_MEMBERSHIP_EVENT":
        thing = p.get("thingName") or _name_from_arn(p.get("thingArn"), "thing")
        if not thing:
            raise EventError("missing_field", "THING_GROUP_MEMBERSHIP_EVENT has no thingArn")
        return (("thing", thing),)
    if etype == "POLICY_EVENT":
        items = [("policy", _require(p, "thingPolicyName"))]
        cert = p.get("globalCertIdentifier")
        if isinstance(cert, str) and cert:
            items.append(("certificate", cert))
        return tuple(items)
    if etype == "CERTIFICATE_EVENT":
        cert = p.get("globalCertIdentifier") or p.get("certificateId")
        if not isinstance(cert, str) or not cert:
            raise EventError("missing_field", "CERTIFICATE_EVENT has no globalCertIdentifier")
        items = [("certificate", cert)]
        if isinstance(p.get("thingName"), str) and p["thingName"]:
            items.append(("thing", p["thingName"]))
        return tuple(items)
    raise EventError("unknown_type", f"unknown eventType {etype!r}")
