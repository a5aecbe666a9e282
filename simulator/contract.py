"""The device contract's messages (DESIGN.md): the bootstrap answer and the migrate-region job document.

Parsed strictly, because firmware cannot ask anyone: a malformed answer is refused with a reason
(and the device keeps what it had) instead of sending it somewhere wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MIGRATE = "migrate-region"
_REGION_IN_HOST = re.compile(r"\.iot\.([a-z]{2}(?:-[a-z]+)+-\d)\.amazonaws\.com")


class ContractError(ValueError):
    """A bootstrap answer or job document that does not follow the device contract."""


class UnknownRegion(ContractError):
    """A job leaves endpoints to bootstrap and names a region the device has no endpoint for."""


@dataclass(frozen=True)
class Endpoint:
    endpoint: str
    region: str
    primary: bool = False
    retry: int = 5
    cas: tuple[str, ...] = ()


@dataclass(frozen=True)
class Assignment:
    """Where a device belongs: what bootstrap answers and what a migrate job carries."""

    epoch: int
    endpoints: tuple[Endpoint, ...]
    topics: dict[str, str]

    def ordered(self, last: str | None = None) -> list[Endpoint]:
        """The primary first, then the list's order; `last` (a region that just failed) moves to the end."""
        eps = sorted(self.endpoints, key=lambda e: not e.primary)
        return [e for e in eps if e.region != last] + [e for e in eps if e.region == last]


@dataclass(frozen=True)
class MigrateJob:
    target_region: str
    assignment: Assignment

    @property
    def epoch(self) -> int:
        return self.assignment.epoch

    def target(self) -> Endpoint:
        for e in self.assignment.endpoints:
            if e.region == self.target_region:
                return e
        raise ContractError(f"no endpoint for targetRegion {self.target_region!r}")


def _endpoint(raw: Any) -> Endpoint:
    if not isinstance(raw, dict) or not isinstance(raw.get("endpoint"), str) or not raw["endpoint"]:
        raise ContractError(f"endpoint entry without an 'endpoint' host: {str(raw)[:120]}")
    region = raw.get("region")
    if not region:
        m = _REGION_IN_HOST.search(raw["endpoint"])
        if not m:
            raise ContractError(f"endpoint {raw['endpoint']!r} names no region")
        region = m.group(1)
    retry = raw.get("retry", 5)
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 1:
        raise ContractError(f"endpoint {raw['endpoint']!r}: retry must be a positive integer, got {retry!r}")
    cas = raw.get("CAs", [])
    return Endpoint(raw["endpoint"], str(region), bool(raw.get("primary", False)), retry, tuple(cas))


def parse_assignment(raw: Any) -> Assignment:
    """A bootstrap answer: {"epoch", "endpoints": [...], "topics": {"configurations", "sensor"}}."""
    if not isinstance(raw, dict):
        raise ContractError("not a JSON object")
    epoch = raw.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ContractError(f"epoch must be a non-negative integer, got {epoch!r}")
    endpoints = raw.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        raise ContractError("endpoints must be a non-empty list")
    parsed = tuple(_endpoint(e) for e in endpoints)
    topics = raw.get("topics")
    if not isinstance(topics, dict) or not isinstance(topics.get("sensor"), str):
        raise ContractError("topics must name at least the 'sensor' topic")
    return Assignment(epoch, parsed, {str(k): str(v) for k, v in topics.items()})


def parse_migrate_job(doc: Any, known: Assignment | None = None) -> MigrateJob:
    """A job document {"operation": "migrate-region", "epoch", "targetRegion", "endpoints", "topics"}.

    A document that lists only the region order (`"regions": [...]`, endpoints left to bootstrap)
    is completed from the endpoints and topics the device already knows (`known`).
    """
    if not isinstance(doc, dict) or doc.get("operation") != MIGRATE:
        raise ContractError(f"not a {MIGRATE} job")
    target = doc.get("targetRegion")
    if not isinstance(target, str) or not target:
        raise ContractError("targetRegion is missing")
    if "endpoints" not in doc:
        doc = {**doc, **_from_known(doc, target, known)}
    job = MigrateJob(target, parse_assignment(doc))
    job.target()
    return job


def _from_known(doc: dict, target: str, known: Assignment | None) -> dict:
    by_region = {e.region: e for e in known.endpoints} if known else {}
    if target not in by_region:
        raise UnknownRegion(f"no endpoint known for targetRegion {target!r}")
    order = doc.get("regions") if isinstance(doc.get("regions"), list) else []
    order = [target, *[r for r in [*order, *by_region] if r != target]]
    regions = list(dict.fromkeys(r for r in order if r in by_region))
    endpoints = [
        {
            "endpoint": by_region[r].endpoint,
            "region": r,
            "primary": r == target,
            "retry": by_region[r].retry,
            "CAs": list(by_region[r].cas),
        }
        for r in regions
    ]
    return {"endpoints": endpoints, "topics": doc.get("topics") or (known.topics if known else {})}
