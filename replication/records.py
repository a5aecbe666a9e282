"""What replication compares: one comparable record per registry resource, and the deletion rule.

Pure: no I/O. Readers in replication/sync.py build these records from a region; two records
being equal means the resource has converged. The deletion rule lives here so it is one function,
tested on its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# The attribute the replicator once put on the things it created; now only recognised, as ours, on
# replicas made before the ledger recorded things, and removed from them (ledger.py).
MARKER_ATTRIBUTE = "replicatedBy"
KINDS = ("thing_type", "thing_group", "policy", "certificate", "thing", "claim")
# Certificates in these states are replicated as they are; the rest land INACTIVE in the target
# (PENDING_ACTIVATION is an unfinished just-in-time registration: the reconciler completes it in the
# source, which activates the certificate, and replicates the device).
REPLICATED_STATUSES = {"ACTIVE", "INACTIVE", "REVOKED"}


class ItemFailed(Exception):
    """One resource could not be converged for a reason no retry fixes; counted, never fatal."""


def marker(deployment: str) -> str:
    """The `replicatedBy` value on things this deployment's replicator created before the ledger."""
    return f"iotfailover:{deployment}"


@dataclass(frozen=True)
class ThingTypeRecord:
    name: str
    deprecated: bool = False
    description: str = ""
    searchable: tuple[str, ...] = ()

    def same(self, other: ThingTypeRecord) -> bool:
        # Properties of a thing type are immutable in AWS IoT; only deprecation can converge.
        return self.deprecated == other.deprecated


@dataclass(frozen=True)
class ThingGroupRecord:
    name: str
    parent: str | None = None
    description: str = ""
    attributes: tuple[tuple[str, str], ...] = ()

    def same(self, other: ThingGroupRecord) -> bool:
        return self == other


@dataclass(frozen=True)
class PolicyRecord:
    name: str
    document: str  # canonical JSON of the default version

    def same(self, other: PolicyRecord) -> bool:
        return self == other


@dataclass(frozen=True)
class CertificateRecord:
    certificate_id: str
    status: str
    policies: tuple[str, ...] = ()

    def same(self, other: CertificateRecord) -> bool:
        return self == other


@dataclass(frozen=True)
class ThingRecord:
    name: str
    thing_type: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()  # without this deployment's legacy marker
    groups: tuple[str, ...] = ()
    certificates: tuple[str, ...] = ()
    replicated_by: str | None = None  # this deployment's legacy marker, when the thing carries it

    def same(self, other: ThingRecord) -> bool:
        """Equal as the customer sees them: a replica still carrying the legacy marker is not a copy."""
        return self == replace(other, name=self.name)


@dataclass(frozen=True)
class ClaimRecord:
    name: str
    item: str  # canonical JSON of the item without the replication attribute

    def same(self, other: ClaimRecord) -> bool:
        return self == other


def canonical_json(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def target_status(source_status: str) -> str:
    return source_status if source_status in REPLICATED_STATUSES else "INACTIVE"


def may_delete(in_source: bool, replicated_by_us: bool) -> bool:
    """The deletion rule: delete in a target only what is gone from the source AND provably ours.

    Proof is the replication ledger record, written before the create, for every kind (ledger.py);
    things replicated before the ledger recorded them carry `replicatedBy=iotfailover:<deployment>`
    instead, until the next reconcile records them and removes it. Anything else in a target was
    made there by someone else and is never deleted by the replicator.
    """
    return not in_source and replicated_by_us


@dataclass
class KindDiff:
    """Differences of one kind between a source and a target, with a bounded sample of names."""

    missing: int = 0
    different: int = 0
    extra: int = 0  # replicated by us, gone from the source: the reconciler deletes these
    foreign: int = 0  # in the target only, not ours: reported, never deleted
    sample: list[str] = field(default_factory=list)

    def note(self, what: str, name: str, limit: int = 10) -> None:
        setattr(self, what, getattr(self, what) + 1)
        if len(self.sample) < limit:
            self.sample.append(f"{what}: {name}")

    @property
    def drift(self) -> int:
        return self.missing + self.different + self.extra


def diff(
    source: Mapping[str, Any], target: Mapping[str, Any], ours: set[str] | frozenset[str], out: KindDiff
) -> tuple[list[str], list[str], list[str]]:
    """Names to create, update and delete to converge `target` to `source` (deletes per may_delete)."""
    create = [n for n in source if n not in target]
    update = [n for n in source if n in target and not source[n].same(target[n])]
    delete = [n for n in target if n not in source and may_delete(False, n in ours)]
    for n in create:
        out.note("missing", n)
    for n in update:
        out.note("different", n)
    for n in delete:
        out.note("extra", n)
    for n in target:
        if n not in source and n not in ours:
            out.foreign += 1
    return create, update, delete


def parents_first(groups: Mapping[str, ThingGroupRecord]) -> list[str]:
    """Group names ordered so that every parent comes before its children."""
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name in depth:
            return depth[name]
        parent = groups[name].parent if name in groups else None
        d = 0 if not parent or parent not in groups or parent in seen else level(parent, seen | {name}) + 1
        depth[name] = d
        return d

    return sorted(groups, key=lambda n: (level(n), n))
