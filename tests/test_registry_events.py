"""Pure logic of replication: event parsing, the diff and the deletion rule."""

from __future__ import annotations

import json

import pytest

from replication.events import EventError, parse_event
from replication.records import (
    KindDiff,
    ThingGroupRecord,
    ThingRecord,
    diff,
    may_delete,
    parents_first,
    target_status,
)


def _env(topic: str, payload: dict) -> str:
    return json.dumps({"topic": topic, "payload": payload})


@pytest.mark.parametrize(
    ("body", "items", "op"),
    [
        (  # the seed talk's THING_EVENT, in the envelope
            _env(
                "$aws/events/thing/device12345678/updated",
                {
                    "eventType": "THING_EVENT", "eventId": "9212cdaa", "timestamp": 1542786890366,
                    "operation": "UPDATED", "accountId": "377913865018", "thingName": "device12345678",
                    "versionNumber": 2, "thingTypeName": "ElectricCar", "attributes": {"serialNumber": "N"},
                },
            ),
            (("thing", "device12345678"),), "UPDATED",
        ),
        (  # flat form with topic(), as the IoT rule `SELECT *, topic() AS topic` delivers
            json.dumps({"topic": "$aws/events/thingType/sensor/created", "eventType": "THING_TYPE_EVENT",
                        "operation": "CREATED", "thingTypeName": "sensor"}),
            (("thing_type", "sensor"),), "CREATED",
        ),
        (
            json.dumps({"eventType": "THING_TYPE_ASSOCIATION_EVENT", "operation": "DELETED", "thingName": "d1",
                        "thingTypeName": "sensor"}),
            (("thing", "d1"),), "DELETED",
        ),
        (
            json.dumps({"eventType": "THING_GROUP_EVENT", "operation": "UPDATED", "thingGroupName": "g"}),
            (("thing_group", "g"),), "UPDATED",
        ),
        (
            json.dumps({"eventType": "THING_GROUP_MEMBERSHIP_EVENT", "operation": "REMOVED",
                        "thingArn": "arn:aws:iot:us-east-1:1:thing/d9", "groupArn": "arn:aws:iot:us-east-1:1:thinggroup/g"}),
            (("thing", "d9"),), "REMOVED",
        ),
        (
            json.dumps({"eventType": "THING_GROUP_HIERARCHY_EVENT", "operation": "ADDED", "thingGroupName": "p",
                        "childGroupName": "c"}),
            (("thing_group", "c"),), "ADDED",
        ),
        (
            json.dumps({"eventType": "CERTIFICATE_EVENT", "operation": "UPDATED", "status": "REVOKED",
                        "certPemFile": "-PEM-", "thingName": "d1", "globalCertIdentifier": "abc", "thingPolicyName": "p"}),
            (("certificate", "abc"), ("thing", "d1")), "UPDATED",
        ),
        (
            json.dumps({"eventType": "POLICY_EVENT", "operation": "UPDATED", "status": "ATTACHED",
                        "globalCertIdentifier": "abc", "thingPolicyName": "p", "policyStatement": {}}),
            (("policy", "p"), ("certificate", "abc")), "UPDATED",
        ),
    ],
)  # fmt: skip
def test_registry_events_name_what_to_resync(body: str, items: tuple, op: str) -> None:
    event = parse_event(body)
    assert event.items == items and event.operation == op and event.jitr_certificate is None


def test_jitr_event_names_the_certificate() -> None:
    payload = {"certificateId": "c1", "caCertificateId": "ca1", "certificateStatus": "PENDING_ACTIVATION",
               "timestamp": 1700000000000, "awsAccountId": "1"}  # fmt: skip
    event = parse_event(_env("$aws/events/certificates/registered/ca1", payload))
    assert event.jitr_certificate == "c1" and event.timestamp_ms == 1700000000000
    assert parse_event(json.dumps(payload)).jitr_certificate == "c1"  # recognised without its topic too


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{oops", "bad_json"),
        ("[1, 2]", "bad_json"),
        (json.dumps({"eventType": "SHADOW_EVENT", "operation": "UPDATED"}), "unknown_type"),
        (json.dumps({"operation": "UPDATED", "thingName": "x"}), "unknown_type"),
        (json.dumps({"eventType": "THING_EVENT", "operation": "UPDATED"}), "missing_field"),
        (
            json.dumps({"eventType": "THING_EVENT", "operation": "EXPLODED", "thingName": "x"}),
            "missing_field",
        ),
        (json.dumps({"eventType": "THING_GROUP_MEMBERSHIP_EVENT", "operation": "ADDED"}), "missing_field"),
        (
            json.dumps({"eventType": "CERTIFICATE_EVENT", "operation": "CREATED", "certPemFile": "x"}),
            "missing_field",
        ),
        (_env("$aws/events/certificates/registered/ca1", {"caCertificateId": "ca1"}), "missing_field"),
    ],
)
def test_malformed_events_are_refused_with_a_reason(body: str, reason: str) -> None:
    with pytest.raises(EventError) as e:
        parse_event(body)
    assert e.value.reason == reason


_THING = '{"eventType": "THING_EVENT", "operation": "UPDATED", "thingName": "d1", "timestamp": %s}'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            json.dumps({"eventType": "THING_EVENT", "operation": ["UPDATED"], "thingName": "d1"}),
            "missing_field",
        ),
        (json.dumps({"eventType": "THING_EVENT", "operation": {"a": 1}, "thingName": "d1"}), "missing_field"),
        (_THING % "Infinity", "bad_json"),
        (_THING % "-Infinity", "bad_json"),
        (_THING % "NaN", "bad_json"),
        (_THING % "1e400", "bad_json"),
        (_THING % ("9" * 5000), "bad_json"),
        ("[" * 100_000 + "]" * 100_000, "bad_json"),
        ('{"eventType": "THING_EVENT", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "bad_json"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else v,
)
def test_hostile_events_are_event_errors(body: str, reason: str) -> None:
    with pytest.raises(EventError) as e:
        parse_event(body)
    assert e.value.reason == reason


@pytest.mark.parametrize("ts", ['"' + "9" * 5000 + '"', '"\u00b2"', '"-5"', "true", '{"a": 1}'])
def test_a_timestamp_that_is_no_time_is_dropped_not_fatal(ts: str) -> None:
    event = parse_event(_THING % ts)
    assert event.items == (("thing", "d1"),) and event.timestamp_ms is None


def test_deletion_rule() -> None:
    assert may_delete(in_source=False, replicated_by_us=True)
    assert not may_delete(in_source=False, replicated_by_us=False)  # someone else's: never
    assert not may_delete(in_source=True, replicated_by_us=True)  # still wanted


def test_diff_creates_updates_and_deletes_only_ours() -> None:
    src = {"a": ThingRecord("a", attributes=(("k", "1"),)), "b": ThingRecord("b")}
    tgt = {
        "b": ThingRecord("b", attributes=(("k", "2"),), replicated_by="iotfailover:x"),
        "ours-gone": ThingRecord("ours-gone", replicated_by="iotfailover:x"),
        "theirs": ThingRecord("theirs"),
    }
    out = KindDiff()
    create, update, delete = diff(src, tgt, {"ours-gone", "b"}, out)
    assert (create, update, delete) == (["a"], ["b"], ["ours-gone"])
    assert (out.missing, out.different, out.extra, out.foreign, out.drift) == (1, 1, 1, 1, 3)


def test_a_replica_still_carrying_the_legacy_marker_is_not_a_copy() -> None:
    assert not ThingRecord("a", replicated_by="iotfailover:x").same(ThingRecord("a"))
    assert not ThingRecord("a", groups=("g",)).same(ThingRecord("a"))
    assert ThingRecord("a", attributes=(("k", "v"),)).same(ThingRecord("a", attributes=(("k", "v"),)))


def test_parents_come_before_children() -> None:
    groups = {
        "leaf": ThingGroupRecord("leaf", parent="mid"),
        "mid": ThingGroupRecord("mid", parent="root"),
        "root": ThingGroupRecord("root"),
        "orphan": ThingGroupRecord("orphan", parent="elsewhere"),
    }
    order = parents_first(groups)
    assert order.index("root") < order.index("mid") < order.index("leaf")


def test_certificate_status_mapping() -> None:
    assert [target_status(s) for s in ("ACTIVE", "REVOKED", "INACTIVE", "PENDING_TRANSFER")] == [
        "ACTIVE",
        "REVOKED",
        "INACTIVE",
        "INACTIVE",
    ]
