"""Reading a region's registry as comparable records (replication.records), kind by kind."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from botocore.exceptions import ClientError

from core.aws import AwsClients, all_items
from core.errors import is_not_found
from replication import certificates as certs
from replication.records import (
    MARKER_ATTRIBUTE,
    PolicyRecord,
    ThingGroupRecord,
    ThingRecord,
    ThingTypeRecord,
    canonical_json,
)


class RegistryReader:
    """The readers of the Replicator (replication.sync); absent resources read as None."""

    aws: AwsClients
    marker: str  # this deployment's legacy `replicatedBy` value

    def iot(self, region: str) -> Any:
        return self.aws.iot(region)

    def read_types(self, region: str) -> dict[str, ThingTypeRecord]:
        return {
            t["thingTypeName"]: _type_record(t)
            for t in all_items(self.iot(region), "list_thing_types", "thingTypes", page_size=100)
        }

    def read_type(self, region: str, name: str) -> ThingTypeRecord | None:
        return _or_none(lambda: _type_record(self.iot(region).describe_thing_type(thingTypeName=name)))

    def read_group(self, region: str, name: str) -> ThingGroupRecord | None:
        def read() -> ThingGroupRecord:
            g = self.iot(region).describe_thing_group(thingGroupName=name)
            props = g.get("thingGroupProperties") or {}
            attrs = (props.get("attributePayload") or {}).get("attributes") or {}
            return ThingGroupRecord(
                name=name,
                parent=(g.get("thingGroupMetadata") or {}).get("parentGroupName"),
                description=props.get("thingGroupDescription") or "",
                attributes=tuple(sorted(attrs.items())),
            )

        return _or_none(read)

    def read_groups(self, region: str) -> dict[str, ThingGroupRecord]:
        names = [
            g["groupName"]
            for g in all_items(self.iot(region), "list_thing_groups", "thingGroups", page_size=250)
        ]
        found = {n: self.read_group(region, n) for n in names}
        return {n: r for n, r in found.items() if r is not None}

    def read_policy(self, region: str, name: str) -> PolicyRecord | None:
        return _or_none(
            lambda: PolicyRecord(
                name, canonical_json(self.iot(region).get_policy(policyName=name)["policyDocument"])
            )
        )

    def read_policies(self, region: str) -> dict[str, PolicyRecord]:
        names = [p["policyName"] for p in all_items(self.iot(region), "list_policies", "policies")]
        found = {n: self.read_policy(region, n) for n in names}
        return {n: r for n, r in found.items() if r is not None}

    def thing_record(
        self, region: str, listed: Mapping[str, Any], groups: Iterable[str] | None = None
    ) -> ThingRecord:
        """A thing's record from its ListThings/DescribeThing entry, plus groups and certificates."""
        name = listed["thingName"]
        attrs = dict(listed.get("attributes") or {})
        legacy = attrs.get(MARKER_ATTRIBUTE) == self.marker  # another value is the customer's data
        replicated_by = attrs.pop(MARKER_ATTRIBUTE) if legacy else None
        if groups is None:
            groups = [
                g["groupName"]
                for g in all_items(
                    self.iot(region), "list_thing_groups_for_thing", "thingGroups", thingName=name
                )
            ]
        principals = self.iot(region).list_thing_principals(thingName=name).get("principals", [])
        return ThingRecord(
            name=name,
            thing_type=listed.get("thingTypeName") or None,
            attributes=tuple(sorted(attrs.items())),
            groups=tuple(sorted(groups)),
            certificates=tuple(sorted(p.rsplit("/", 1)[-1] for p in principals if ":cert/" in p)),
            replicated_by=replicated_by,
        )

    def read_thing(self, region: str, name: str) -> ThingRecord | None:
        desc = _or_none(lambda: self.iot(region).describe_thing(thingName=name))
        return self.thing_record(region, desc) if desc else None

    def read_catalog(self, region: str, kind: str) -> dict[str, Any]:
        readers: dict[str, Callable[[str], Mapping[str, Any]]] = {
            "thing_type": self.read_types,
            "thing_group": self.read_groups,
            "policy": self.read_policies,
        }
        return dict(readers[kind](region))

    def read(self, region: str, kind: str, name: str) -> Any:
        readers = {
            "thing_type": self.read_type,
            "thing_group": self.read_group,
            "policy": self.read_policy,
            "certificate": lambda r, n: certs.read_certificate(self.aws, r, n),
            "thing": self.read_thing,
        }
        return readers[kind](region, name)


def _type_record(t: Mapping[str, Any]) -> ThingTypeRecord:
    props = t.get("thingTypeProperties") or {}
    return ThingTypeRecord(
        name=t["thingTypeName"],
        deprecated=bool((t.get("thingTypeMetadata") or {}).get("deprecated")),
        description=props.get("thingTypeDescription") or "",
        searchable=tuple(props.get("searchableAttributes") or ()),
    )


def _or_none(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ClientError as e:
        if is_not_found(e):
            return None
        raise
