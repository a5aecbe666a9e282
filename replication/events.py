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
import math
from dataclasses import dataclass, field
from typing import Any, NoReturn

JITR_TOPIC_PREFIX = "$aws/events/certificates/registered/"
OPERATIONS = {"CREATED", "UPDATED", "DELETED", "ADDED", "REMOVED"}
_MAX_TIMESTAMP_MS = 2**53  # beyond any real time in ms, and still exact in every JSON reader


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


def _text(value: Any) -> str:
    """A string field as is; anything else (a list, a number, a deep tree) counts as absent."""
    return value if isinstance(value, str) else ""


def _require(payload: dict, key: str, etype: str = "event") -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value.strip():
        raise EventError("missing_field", f"{etype[:80]} has no {key}")
    return value


def _timestamp(payload: dict) -> int | None:
    """Epoch milliseconds, or None for anything that is no time (the event stays usable)."""
    ts = payload.get("timestamp")
    if isinstance(ts, str) and ts.isascii() and ts.isdigit() and len(ts) <= 16:
        ts = int(ts)
    if isinstance(ts, int | float) and not isinstance(ts, bool) and 0 <= ts <= _MAX_TIMESTAMP_MS:
        return int(ts)
    return None


def _not_json(detail: str) -> NoReturn:
    raise EventError("bad_json", detail)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        _not_json(f"number {text[:40]} is out of range")
    return value


def _envelope(body: str) -> tuple[str, dict]:
    """The topic and the event of a message body: strict JSON (no NaN/Infinity), bounded depth."""
    try:
        data = json.loads(body, parse_constant=lambda c: _not_json(f"{c} is not JSON"), parse_float=_finite)
    except EventError:
        raise
    except (ValueError, TypeError, RecursionError) as e:  # ValueError: also a 5,000-digit number
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:120]
        raise EventError("bad_json", f"message body is not JSON ({why}): {str(body)[:80]!r}") from None
    if not isinstance(data, dict):
        raise EventError("bad_json", "message body is not a JSON object")
    if isinstance(data.get("payload"), dict):
        return _text(data.get("topic")), data["payload"]
    return _text(data.pop("topic", "")), data


def parse_event(body: str) -> RegistryEvent:
    """Parse one queue message body; raises EventError with a reason when it cannot be applied."""
    topic, payload = _envelope(body)
    if topic.startswith(JITR_TOPIC_PREFIX) or (
        "eventType" not in payload and {"certificateId", "caCertificateId"} <= payload.keys()
    ):
        cert = _require(payload, "certificateId", "JITR event")
        return RegistryEvent("JITR", "CREATED", cert, _timestamp(payload), (), cert)
    etype = payload.get("eventType")
    if not isinstance(etype, str):
        raise EventError("unknown_type", f"no eventType in event on topic {topic[:120] or '?'}")
    op = payload.get("operation")
    if not isinstance(op, str) or op not in OPERATIONS:
        raise EventError("missing_field", f"{etype[:80]} has no valid operation (got {str(op)[:40]!r})")
    items = _items(etype, payload)
    return RegistryEvent(etype, op, _text(payload.get("eventId")), _timestamp(payload), items)


def _items(etype: str, p: dict) -> tuple[tuple[str, str], ...]:
    if etype in ("THING_EVENT", "THING_TYPE_ASSOCIATION_EVENT"):
        return (("thing", _require(p, "thingName", etype)),)
    if etype == "THING_TYPE_EVENT":
        return (("thing_type", _require(p, "thingTypeName", etype)),)
    if etype == "THING_GROUP_EVENT":
        return (("thing_group", _require(p, "thingGroupName", etype)),)
    if etype == "THING_GROUP_HIERARCHY_EVENT":
        return (("thing_group", _require(p, "childGroupName", etype)),)
    if etype == "THING_GROUP_MEMBERSHIP_EVENT":
        thing = _text(p.get("thingName")) or _name_from_arn(p.get("thingArn"), "thing")
        if not thing:
            raise EventError("missing_field", "THING_GROUP_MEMBERSHIP_EVENT has no thingArn")
        return (("thing", thing),)
    if etype == "POLICY_EVENT":
        items = [("policy", _require(p, "thingPolicyName", etype))]
        if cert := _text(p.get("globalCertIdentifier")):
            items.append(("certificate", cert))
        return tuple(items)
    if etype == "CERTIFICATE_EVENT":
        cert = _text(p.get("globalCertIdentifier")) or _text(p.get("certificateId"))
        if not cert:
            raise EventError("missing_field", "CERTIFICATE_EVENT has no globalCertIdentifier")
        items = [("certificate", cert)]
        if thing := _text(p.get("thingName")):
            items.append(("thing", thing))
        return tuple(items)
    raise EventError("unknown_type", f"unknown eventType {etype[:80]!r}")
