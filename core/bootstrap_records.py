"""The bootstrap table's record format, shared by the flip activities and the service.

In core/ so that neither layer imports the other; it needs only boto3's DynamoDB type codecs, which
the bootstrap Lambda package ships (deploy/aws/bootstrap-requirements.txt).

One item per scope (`default`, or `group:<thingGroupName>` for a canary or wave override) in every
region's table: the epoch that fences it, the primary region and the ordered failover list. A
cleared scope keeps its item as a tombstone (`cleared`) so its epoch still fences late writers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

DEFAULT_SCOPE = "default"
GROUP_PREFIX = "group:"
ROUTING_PREFIX = "routing:"  # a routing table fence among the bootstrap ones (`routing:<application>`)
_GROUP_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
_SER, _DES = TypeSerializer(), TypeDeserializer()


class MalformedRecord(ValueError):
    """A table item the service cannot turn into an answer; the message names the field."""


@dataclass
class BootstrapRecord:
    scope: str
    epoch: int
    primary: str
    order: list[str]
    retry: int = 5
    reason: str = ""
    updated_at: str = ""
    cleared: bool = False
    deployment: str = ""

    def item(self) -> dict[str, Any]:
        """The DynamoDB attributes (typed) of this record."""
        return to_item(
            {
                "scope": self.scope,
                "epoch": self.epoch,
                "primary": self.primary,
                "regions": list(self.order),
                "retry": self.retry,
                "reason": self.reason,
                "updated_at": self.updated_at,
                "cleared": self.cleared,
                "deployment": self.deployment,
            }
        )


def scope_problem(scope: str) -> str | None:
    """Why `scope` is not a valid scope name, or None."""
    if scope == DEFAULT_SCOPE:
        return None
    if scope.startswith(GROUP_PREFIX) and _GROUP_NAME.match(scope.removeprefix(GROUP_PREFIX)):
        return None
    return f'scope {scope!r} is neither "default" nor "group:<thingGroupName>"'


def group_scope(group: str) -> str:
    return f"{GROUP_PREFIX}{group}"


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _SER.serialize(v) for k, v in values.items()}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _DES.deserialize(v) for k, v in item.items()}


@dataclass
class _Fields:
    values: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    def number(self, name: str, minimum: int, default: int | None = None) -> int:
        v = self.values.get(name, default)
        if isinstance(v, Decimal | int) and not isinstance(v, bool) and v == int(v) and v >= minimum:
            return int(v)
        self.problems.append(f"{name} must be an integer >= {minimum}, found {v!r}")
        return minimum

    def text(self, name: str, default: str | None = None) -> str:
        v = self.values.get(name, default)
        if isinstance(v, str):
            return v
        self.problems.append(f"{name} must be a string, found {v!r}")
        return ""


def parse_record(values: dict[str, Any], known_regions: list[str]) -> BootstrapRecord:
    """A record from a deserialized item, checked against the deployment's regions.

    Raises MalformedRecord listing every problem: a record someone edited by hand must fail loudly
    (HTTP 500 with the reason) rather than send devices to a region that does not exist.
    """
    f = _Fields(values)
    scope = f.text("scope")
    epoch = f.number("epoch", 0)
    primary = f.text("primary")
    retry = f.number("retry", 1, default=5)
    order = values.get("regions")
    if not isinstance(order, list) or not order or not all(isinstance(r, str) for r in order):
        f.problems.append(f"regions must be a non-empty list of region names, found {order!r}")
        order = []
    unknown = [r for r in order if r not in known_regions]
    if unknown:
        f.problems.append(
            f"regions {unknown} are not regions of this deployment ({', '.join(known_regions)})"
        )
    if len(set(order)) != len(order):
        f.problems.append(f"regions lists a region twice: {order}")
    if order and primary != order[0]:
        f.problems.append(f"primary {primary!r} must be the first of regions {order}")
    cleared = values.get("cleared", False)
    if not isinstance(cleared, bool) or (cleared and scope == DEFAULT_SCOPE):
        f.problems.append(f"cleared must be a boolean and only on a group scope, found {cleared!r}")
    if f.problems:
        raise MalformedRecord(f"bootstrap record {scope or '?'!r}: " + "; ".join(f.problems))
    return BootstrapRecord(
        scope=scope,
        epoch=epoch,
        primary=primary,
        order=list(order),
        retry=retry,
        reason=str(values.get("reason", "")),
        updated_at=str(values.get("updated_at", "")),
        cleared=bool(cleared),
        deployment=str(values.get("deployment", "")),
    )
