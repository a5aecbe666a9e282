"""Replication never loses a device nor deletes what still exists (issue 13, items 13, 14, 16).

Against the emulators, which enforce AWS's limit of 3 attributes on a thing without a thing type.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from temporalio.exceptions import ApplicationError

from activities.registry import (
    DrainInput,
    ReconcileInput,
    RegistryActivities,
    reconcile_pair,
    registry_parity,
)
from core.config import DeploymentConfig
from rehearsal import pki
from replication.ledger import Ledger
from replication.reconcile import Reconciler
from replication.sync import Replicator
from tests import replication_fleet
from tests.replication_fleet import POLICY, denied

E, W = "us-east-1", "us-west-2"


@pytest.fixture
def fast_config(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path) -> DeploymentConfig:
    return replication_fleet.fast_config(emulators, local_ca, tmp_path)


@pytest.fixture
def acts(fast_config: DeploymentConfig) -> RegistryActivities:
    return replication_fleet.ready_activities(fast_config)


def _send(aws: Any, region: str, cfg: DeploymentConfig, body: dict) -> None:
    url = aws.sqs(region).get_queue_url(QueueName=cfg.replication.events_queue)["QueueUrl"]
    aws.sqs(region).send_message(QueueUrl=url, MessageBody=json.dumps(body))


def _thing_event(name: str, op: str = "CREATED") -> dict:
    return {
        "eventType": "THING_EVENT",
        "operation": op,
        "thingName": name,
        "timestamp": int(time.time() * 1000),
    }


# ---------------------------------------------------------------- item 16: replicas are copies


def test_a_thing_with_three_attributes_replicates_as_an_exact_copy(
    acts: RegistryActivities, fast_config: DeploymentConfig
) -> None:
    aws = acts.deployments.aws(fast_config.name)
    east, west = aws.iot(E), aws.iot(W)
    three = {"sku": "s1", "site": "north", "batch": "7"}
    east.create_thing(thingName="full", attributePayload={"attributes": three})  # no thing type: AWS's max
    result = reconcile_pair(aws, E, W)
    assert not result.failed, result.failures
    assert west.describe_thing(thingName="full")["attributes"] == three
    assert Ledger(aws).has(W, "thing", "full")  # ownership is in the ledger, not in the customer's data
    # the event path too, and an update keeps the copy exact
    east.create_thing(thingName="by-event", attributePayload={"attributes": three})
    east.update_thing(thingName="full", attributePayload={"attributes": {"site": "south"}, "merge": True})
    _send(aws, E, fast_config, _thing_event("by-event"))
    _send(aws, E, fast_config, _thing_event("full", "UPDATED"))
    out = acts.drain_registry_events(DrainInput(fast_config.name, max_seconds=3, wait_seconds=0))
    assert out.applied == 2 and out.dead_letter_count == 0, out.dead_letters
    assert west.describe_thing(thingName="by-event")["attributes"] == three
    assert west.describe_thing(thingName="full")["attributes"] == {**three, "site": "south"}
    assert registry_parity(aws, E, W).ok
    # ours by the ledger alone: deleted with its source
    east.delete_thing(thingName="full")
    assert reconcile_pair(aws, E, W).applied.get("thing:delete") == 1
    assert "full" not in {t["thingName"] for t in west.list_things()["things"]}
    assert not Ledger(aws).has(W, "thing", "full")


def test_replicas_of_the_marker_era_are_adopted_once_and_lose_the_marker(
    acts: RegistryActivities, fast_config: DeploymentConfig
) -> None:
    """What the replicator before the ledger left behind: things marked `replicatedBy`, no ledger record."""
    aws = acts.deployments.aws(fast_config.name)
    east, west = aws.iot(E), aws.iot(W)
    marker = {"replicatedBy": f"iotfailover:{fast_config.name}"}
    east.create_thing(thingName="kept", attributePayload={"attributes": {"sku": "k"}})
    west.create_thing(thingName="kept", attributePayload={"attributes": {"sku": "k", **marker}})
    west.create_thing(thingName="orphan", attributePayload={"attributes": marker})  # its source is gone
    west.create_thing(thingName="theirs", attributePayload={"attributes": {"replicatedBy": "someone"}})
    before = registry_parity(aws, E, W)
    assert before.kinds["thing"].different == 1 and before.kinds["thing"].extra == 1
    first = reconcile_pair(aws, E, W)
    assert first.applied == {"thing:update": 1, "thing:delete": 1}, first.applied
    assert west.describe_thing(thingName="kept")["attributes"] == {"sku": "k"}
    assert Ledger(aws).has(W, "thing", "kept")
    names = {t["thingName"] for t in west.list_things()["things"]}
    assert names == {"kept", "theirs"}  # a `replicatedBy` of someone else's is their data: kept
    assert reconcile_pair(aws, E, W).applied == {}  # converged: once only
    assert registry_parity(aws, E, W).ok


def test_access_denied_stops_the_reconcile_with_the_right_to_grant(
    acts: RegistryActivities, fast_config: DeploymentConfig
) -> None:
    """The controller's role, not the item: one clear error, not a failure counted for every thing."""
    aws = acts.deployments.aws(fast_config.name)
    for i in range(3):
        aws.iot(E).create_thing(thingName=f"dev-{i}")
    with denied(aws.iot(W), "CreateThing"), pytest.raises(ApplicationError) as e:
        acts.reconcile_registry(ReconcileInput(fast_config.name, E, W))
    assert e.value.non_retryable and "AccessDeniedException" in str(e.value) and "grant" in str(e.value)


# ---------------------------------------------------------------- item 14: prune re-reads the source


class ListingMisses(Replicator):
    """A source whose listings miss some items that still exist (eventual consistency, a lost page)."""

    hidden = {"kept-policy", "kept-group", "kept-type"}

    def read_catalog(self, region: str, kind: str) -> dict[str, Any]:
        found = super().read_catalog(region, kind)
        return {n: r for n, r in found.items() if region != self.source or n not in self.hidden}


def test_prune_deletes_only_what_the_source_says_is_gone(
    acts: RegistryActivities, fast_config: DeploymentConfig, local_ca: pki.LocalCA
) -> None:
    aws = acts.deployments.aws(fast_config.name)
    east, west = aws.iot(E), aws.iot(W)
    for prefix in ("kept", "gone"):
        east.create_policy(policyName=f"{prefix}-policy", policyDocument=json.dumps(POLICY))
        east.create_thing_group(thingGroupName=f"{prefix}-group")
        east.create_thing_type(thingTypeName=f"{prefix}-type")
    pem, _ = pki.issue_device_cert(local_ca, "dev-1")
    cert = east.register_certificate(certificatePem=pem, caCertificatePem=local_ca.cert_pem, status="ACTIVE")
    east.attach_policy(policyName="kept-policy", target=cert["certificateArn"])
    east.create_thing(thingName="dev-1", thingTypeName="kept-type")
    east.attach_thing_principal(thingName="dev-1", principal=cert["certificateArn"])
    east.add_thing_to_thing_group(thingGroupName="kept-group", thingName="dev-1")
    assert not reconcile_pair(aws, E, W).failed
    east.delete_policy(policyName="gone-policy")
    east.delete_thing_group(thingGroupName="gone-group")
    east.deprecate_thing_type(thingTypeName="gone-type", undoDeprecate=False)
    east.delete_thing_type(thingTypeName="gone-type")

    rep = ListingMisses(aws, E, W)
    Reconciler(rep, lambda _p: None).run()
    assert not rep.failed, rep.failures
    assert west.get_policy(policyName="kept-policy")["policyName"] == "kept-policy"
    west_arn = west.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"][
        "certificateArn"
    ]
    assert [p["policyName"] for p in west.list_attached_policies(target=west_arn)["policies"]] == [
        "kept-policy"
    ]
    assert west.describe_thing_group(thingGroupName="kept-group")["thingGroupName"] == "kept-group"
    assert west.describe_thing_type(thingTypeName="kept-type")["thingTypeName"] == "kept-type"
    policies = {p["policyName"] for p in west.list_policies()["policies"]}
    groups = {g["groupName"] for g in west.list_thing_groups()["thingGroups"]}
    types = {t["thingTypeName"] for t in west.list_thing_types()["thingTypes"]}
    assert "gone-policy" not in policies and "gone-group" not in groups and "gone-type" not in types
    assert registry_parity(aws, E, W).ok


# ---------------------------------------------------------------- item 13: a failed JITR is retried


def _bad_common_names() -> float:
    labels = {"source": "jitr", "reason": "bad_common_name"}
    return REGISTRY.get_sample_value("iotfailover_bad_input_total", labels) or 0


def _pending(iot: Any, ca: pki.LocalCA, device: str, **kw: Any) -> str:
    pem, _ = pki.issue_device_cert(ca, device, **kw)
    return iot.register_certificate(
        certificatePem=pem, caCertificatePem=ca.cert_pem, status="PENDING_ACTIVATION"
    )["certificateId"]


def _jitr_event(cid: str, ca_id: str) -> dict:
    return {
        "topic": f"$aws/events/certificates/registered/{ca_id}",
        "payload": {"certificateId": cid, "caCertificateId": ca_id, "certificateStatus": "PENDING_ACTIVATION",
                    "timestamp": int(time.time() * 1000)},
    }  # fmt: skip


def _assert_device_everywhere(aws: Any, device: str, cid: str) -> None:
    for region in (E, W):
        iot = aws.iot(region)
        desc = iot.describe_certificate(certificateId=cid)["certificateDescription"]
        assert desc["status"] == "ACTIVE", region
        assert iot.list_thing_principals(thingName=device)["principals"] == [desc["certificateArn"]]
        assert [
            p["policyName"] for p in iot.list_attached_policies(target=desc["certificateArn"])["policies"]
        ] == ["test-policy"]
        assert device in iot.list_things_in_thing_group(thingGroupName="test-fleet")["things"]


def test_reconcile_completes_a_jitr_whose_event_was_lost_or_dead_lettered(
    acts: RegistryActivities, fast_config: DeploymentConfig, local_ca: pki.LocalCA
) -> None:
    aws = acts.deployments.aws(fast_config.name)
    east = aws.iot(E)
    ca_id = east.list_ca_certificates()["certificates"][0]["certificateId"]
    # 1. the event was dead-lettered: the fleet policy was missing when it arrived (a half-made device)
    failed = _pending(east, local_ca, "jitr-failed", sku="s")
    _send(aws, E, fast_config, _jitr_event(failed, ca_id))
    out = acts.drain_registry_events(DrainInput(fast_config.name, max_seconds=3, wait_seconds=0))
    assert [d.reason for d in out.dead_letters] == ["not_found"]
    east.create_policy(policyName="test-policy", policyDocument=json.dumps(POLICY))  # the operator's fix
    # 2. the event never arrived
    lost = _pending(east, local_ca, "jitr-lost", sku="s")
    # left alone: a certificate no device of this deployment's CA, and a CN that names no device
    other_ca = pki.create_ca("someone else's CA")
    foreign_pem, _ = pki.issue_device_cert(other_ca, "foreign")
    foreign = east.register_certificate_without_ca(certificatePem=foreign_pem, status="PENDING_ACTIVATION")
    bad = _pending(east, local_ca, "x", cn="plain-name")
    bad_before = _bad_common_names()

    result = reconcile_pair(aws, E, W)
    assert not result.failed, result.failures
    assert result.applied.get("certificate:jitr") == 2
    _assert_device_everywhere(aws, "jitr-failed", failed)
    _assert_device_everywhere(aws, "jitr-lost", lost)
    status = lambda cid: east.describe_certificate(certificateId=cid)["certificateDescription"]["status"]  # noqa: E731
    assert status(foreign["certificateId"]) == "PENDING_ACTIVATION" and status(bad) == "PENDING_ACTIVATION"
    assert _bad_common_names() == bad_before  # counted when its event came, not by every reconcile
    assert registry_parity(aws, E, W).ok, registry_parity(aws, E, W).render()
