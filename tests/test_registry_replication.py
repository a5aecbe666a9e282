"""Registry replication against the emulators: reconcile, parity, mutations, events, JITR, dead letters."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from activities.context import Deployments
from activities.registry import (
    DrainInput,
    ParityInput,
    ReadyInput,
    RegistryActivities,
    ReplicateScopeInput,
    reconcile_pair,
    registry_parity,
)
from core.config import DeploymentConfig
from rehearsal import pki
from replication.ledger import Ledger
from tests import replication_fleet
from tests.conftest import make_config
from tests.replication_fleet import FAST, POLICY, provision

E, W = "us-east-1", "us-west-2"
# the issue's 200-device fleet (about 25 s here); REPLICATION_FLEET=N to change it
FLEET = int(os.environ.get("REPLICATION_FLEET", "200"))


@pytest.fixture
def fast_config(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path) -> DeploymentConfig:
    return replication_fleet.fast_config(emulators, local_ca, tmp_path)


@pytest.fixture
def acts(fast_config: DeploymentConfig) -> RegistryActivities:
    return replication_fleet.ready_activities(fast_config)


def _aws(acts: RegistryActivities, cfg: DeploymentConfig):
    return acts.deployments.aws(cfg.name)


def _send(aws: Any, region: str, cfg: DeploymentConfig, *bodies: Any) -> None:
    sqs = aws.sqs(region)
    url = sqs.get_queue_url(QueueName=cfg.replication.events_queue)["QueueUrl"]
    for b in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=b if isinstance(b, str) else json.dumps(b))


def _drain(acts: RegistryActivities, cfg: DeploymentConfig):
    return acts.drain_registry_events(DrainInput(cfg.name, max_seconds=3, wait_seconds=0))


def _thing_event(name: str, op: str = "UPDATED") -> dict:
    return {
        "topic": f"$aws/events/thing/{name}/{op.lower()}",
        "payload": {
            "eventType": "THING_EVENT",
            "eventId": f"e-{name}-{op}",
            "timestamp": int(time.time() * 1000),
            "operation": op,
            "accountId": "123456789012",
            "thingName": name,
            "versionNumber": 2,
            "attributes": {},
        },
    }


def test_fleet_replicates_and_converges_after_mutations(
    acts: RegistryActivities, fast_config: DeploymentConfig, local_ca: pki.LocalCA
) -> None:
    aws = _aws(acts, fast_config)
    east, west = aws.iot(E), aws.iot(W)
    fleet = provision(east, local_ca, FLEET)
    west.create_thing(thingName="standby-only")  # made in the standby by someone else: never deleted
    aws.dynamodb(E).put_item(
        TableName=fast_config.claims_table,
        Item={"thingName": {"S": "dev-0001"}, "owner": {"S": "acme"}, "application": {"S": "metering"}},
    )

    before = registry_parity(aws, E, W)
    assert (
        not before.ok
        and before.kinds["thing"].missing == FLEET
        and before.kinds["certificate"].missing == FLEET
    )
    assert before.kinds["thing"].foreign == 1
    result = reconcile_pair(aws, E, W)
    assert result.applied["thing:create"] == FLEET and result.applied["certificate:create"] == FLEET
    assert not result.failed
    after = registry_parity(aws, E, W)
    assert after.ok, after.render()
    # same certificate ID, status, CA link and attachments in the standby
    cid = fleet.cert_ids["dev-0007"]
    desc = west.describe_certificate(certificateId=cid)["certificateDescription"]
    assert desc["status"] == "ACTIVE"
    assert west.list_thing_principals(thingName="dev-0007")["principals"] == [desc["certificateArn"]]
    assert [
        p["policyName"] for p in west.list_attached_policies(target=desc["certificateArn"])["policies"]
    ] == ["test-policy"]
    assert (
        west.describe_thing_group(thingGroupName="east-a")["thingGroupMetadata"]["parentGroupName"] == "east"
    )
    claim = aws.dynamodb(W).get_item(TableName=fast_config.claims_table, Key={"thingName": {"S": "dev-0001"}})
    assert claim["Item"]["owner"]["S"] == "acme"

    # mutate the primary: attributes, group moves, a revoked certificate, deletions, a new policy version
    east.update_thing(
        thingName="dev-0001", attributePayload={"attributes": {"sku": "new", "batch": ""}, "merge": True}
    )
    east.remove_thing_from_thing_group(thingGroupName="east", thingName="dev-0010")
    east.add_thing_to_thing_group(thingGroupName="test-fleet", thingName="dev-0010")
    east.update_certificate(certificateId=fleet.cert_ids["dev-0003"], newStatus="REVOKED")
    for name in ("dev-0004", "dev-0005"):
        arn = east.list_thing_principals(thingName=name)["principals"][0]
        east.detach_thing_principal(thingName=name, principal=arn)
        east.delete_thing(thingName=name)
    arn4 = east.describe_certificate(certificateId=fleet.cert_ids["dev-0004"])["certificateDescription"][
        "certificateArn"
    ]
    east.update_certificate(certificateId=fleet.cert_ids["dev-0004"], newStatus="INACTIVE")
    east.detach_policy(policyName="test-policy", target=arn4)
    east.delete_certificate(certificateId=fleet.cert_ids["dev-0004"])
    doc = {
        **POLICY,
        "Statement": [*POLICY["Statement"], {"Effect": "Allow", "Action": "iot:Publish", "Resource": "*"}],
    }
    east.create_policy_version(policyName="test-policy", policyDocument=json.dumps(doc), setAsDefault=True)
    aws.dynamodb(E).delete_item(TableName=fast_config.claims_table, Key={"thingName": {"S": "dev-0001"}})

    drift = registry_parity(aws, E, W)
    assert drift.kinds["thing"].different == 2 and drift.kinds["thing"].extra == 2
    assert drift.kinds["certificate"].different == 1 and drift.kinds["certificate"].extra == 1
    assert drift.kinds["policy"].different == 1 and drift.kinds["claim"].extra == 1
    again = reconcile_pair(aws, E, W)
    assert again.applied["thing:delete"] == 2 and again.applied["certificate:delete"] == 1
    assert registry_parity(aws, E, W).ok
    assert (
        west.describe_certificate(certificateId=fleet.cert_ids["dev-0003"])["certificateDescription"][
            "status"
        ]
        == "REVOKED"
    )
    names = {t["thingName"] for t in west.list_things(maxResults=250)["things"]}
    assert "dev-0004" not in names and "dev-0005" not in names and "standby-only" in names
    assert len(names) == FLEET - 1  # FLEET - 2 replicated + the standby's own thing, nothing duplicated
    assert west.describe_thing(thingName="dev-0001")["attributes"]["sku"] == "new"
    assert "Item" not in aws.dynamodb(W).get_item(
        TableName=fast_config.claims_table, Key={"thingName": {"S": "dev-0001"}}
    )


def test_deletion_rule_spares_what_replication_did_not_create(
    acts: RegistryActivities, fast_config: DeploymentConfig, local_ca: pki.LocalCA
) -> None:
    aws = _aws(acts, fast_config)
    west = aws.iot(W)
    west.create_thing(
        thingName="native", attributePayload={"attributes": {"replicatedBy": "iotfailover:other"}}
    )
    west.create_policy(policyName="native-policy", policyDocument=json.dumps(POLICY))
    west.create_thing_group(thingGroupName="native-group")
    reconcile_pair(aws, E, W)
    assert west.describe_thing(thingName="native")["thingName"] == "native"
    assert west.get_policy(policyName="native-policy")["policyName"] == "native-policy"
    assert west.describe_thing_group(thingGroupName="native-group")["thingGroupName"] == "native-group"
    report = registry_parity(aws, E, W)
    assert report.ok and report.kinds["thing"].foreign == 1 and report.kinds["policy"].foreign == 1


def test_scope_replication_and_scoped_parity(
    acts: RegistryActivities, fast_config: DeploymentConfig, local_ca: pki.LocalCA
) -> None:
    aws = _aws(acts, fast_config)
    provision(aws.iot(E), local_ca, 12)
    res = acts.replicate_scope(ReplicateScopeInput(fast_config.name, E, W, "east"))
    assert res.applied["thing:create"] == 8  # members of east and east-a (its child), not the others
    scoped = acts.check_registry_parity(ParityInput(fast_config.name, E, W, "east"))
    assert scoped.ok, scoped.render()
    assert not acts.check_registry_parity(ParityInput(fast_config.name, E, W)).ok


def test_events_converge_and_bad_events_are_dead_lettered(
    acts: RegistryActivities, fast_config: DeploymentConfig, local_ca: pki.LocalCA
) -> None:
    aws = _aws(acts, fast_config)
    east, west = aws.iot(E), aws.iot(W)
    fleet = provision(east, local_ca, 9)
    reconcile_pair(aws, E, W)
    # new device, attribute change, group move, revoked certificate, deleted thing, new policy version
    pem, _ = pki.issue_device_cert(local_ca, "dev-new")
    cert = east.register_certificate(certificatePem=pem, caCertificatePem=local_ca.cert_pem, status="ACTIVE")
    east.create_thing(thingName="dev-new", attributePayload={"attributes": {"sku": "n"}})
    east.attach_thing_principal(thingName="dev-new", principal=cert["certificateArn"])
    east.attach_policy(policyName="test-policy", target=cert["certificateArn"])
    claim = {"thingName": {"S": "dev-new"}, "owner": {"S": "acme"}}
    aws.dynamodb(E).put_item(TableName=fast_config.claims_table, Item=claim)
    east.update_thing(
        thingName="dev-0001", attributePayload={"attributes": {"sku": "changed"}, "merge": True}
    )
    east.remove_thing_from_thing_group(thingGroupName="east", thingName="dev-0007")
    east.add_thing_to_thing_group(thingGroupName="east-a", thingName="dev-0007")
    east.update_certificate(certificateId=fleet.cert_ids["dev-0003"], newStatus="REVOKED")
    arn = east.list_thing_principals(thingName="dev-0004")["principals"][0]
    east.detach_thing_principal(thingName="dev-0004", principal=arn)
    east.delete_thing(thingName="dev-0004")
    east.create_policy_version(
        policyName="test-policy", policyDocument=json.dumps({**POLICY, "Id": "v2"}), setAsDefault=True
    )
    dead_before = (
        REGISTRY.get_sample_value(
            "iotfailover_replication_dead_letters_total",
            {"deployment": fast_config.name, "reason": "not_found"},
        )
        or 0
    )
    _send(
        aws, E, fast_config,
        "{not json",
        {"eventType": "MYSTERY_EVENT", "operation": "CREATED"},
        {"eventType": "THING_EVENT", "operation": "UPDATED"},
        _thing_event("never-existed"),
        _thing_event("dev-new", "CREATED"),
        {  # flat form, as `SELECT *, topic() AS topic` delivers it
            "topic": "$aws/events/thingGroupMembership/thingGroup/east-a/thing/dev-0007/added",
            "eventType": "THING_GROUP_MEMBERSHIP_EVENT", "operation": "ADDED",
            "thingArn": "arn:aws:iot:us-east-1:123456789012:thing/dev-0007",
            "groupArn": "arn:aws:iot:us-east-1:123456789012:thinggroup/east-a",
        },
        _thing_event("dev-0001"),
        {"eventType": "CERTIFICATE_EVENT", "operation": "UPDATED", "status": "REVOKED",
         "globalCertIdentifier": fleet.cert_ids["dev-0003"], "thingName": "dev-0003"},
        _thing_event("dev-0004", "DELETED"),
        {"eventType": "POLICY_EVENT", "operation": "UPDATED", "thingPolicyName": "test-policy", "policyStatement": {}},
    )  # fmt: skip
    out = _drain(acts, fast_config)
    assert out.received == 10 and out.applied == 6 and out.dead_letter_count == 4
    reasons = sorted(d.reason for d in out.dead_letters)
    assert reasons == ["bad_json", "missing_field", "not_found", "unknown_type"]
    assert (
        REGISTRY.get_sample_value(
            "iotfailover_replication_dead_letters_total",
            {"deployment": fast_config.name, "reason": "not_found"},
        )
        == dead_before + 1
    )
    assert registry_parity(aws, E, W).ok, registry_parity(aws, E, W).render()
    assert west.describe_thing(thingName="dev-new")["attributes"] == {"sku": "n"}  # a copy
    assert Ledger(aws).has(W, "thing", "dev-new")  # and recorded as ours
    got = aws.dynamodb(W).get_item(TableName=fast_config.claims_table, Key={"thingName": {"S": "dev-new"}})
    assert got["Item"]["owner"]["S"] == "acme"  # the claim travelled with its thing
    # the queue is empty: nothing blocked it
    assert _drain(acts, fast_config).received == 0


def test_jitr_event_yields_the_device_everywhere_and_bad_cn_is_rejected(
    acts: RegistryActivities, fast_config: DeploymentConfig, local_ca: pki.LocalCA
) -> None:
    aws = _aws(acts, fast_config)
    east, west = aws.iot(E), aws.iot(W)
    east.create_policy(policyName="test-policy", policyDocument=json.dumps(POLICY))
    ca_id = acts.ensure_replication_ready(ReadyInput(fast_config.name)).ca_ids[E]
    good, _ = pki.issue_device_cert(local_ca, "jitr-1", sku="sku-9")
    bad, _ = pki.issue_device_cert(local_ca, "x", cn="plain-name")
    ids = [
        east.register_certificate(
            certificatePem=p, caCertificatePem=local_ca.cert_pem, status="PENDING_ACTIVATION"
        )["certificateId"]
        for p in (good, bad)
    ]
    bad_before = (
        REGISTRY.get_sample_value(
            "iotfailover_bad_input_total", {"source": "jitr", "reason": "bad_common_name"}
        )
        or 0
    )
    for cid in ids:
        _send(aws, E, fast_config, {
            "topic": f"$aws/events/certificates/registered/{ca_id}",
            "payload": {"certificateId": cid, "caCertificateId": ca_id, "certificateStatus": "PENDING_ACTIVATION",
                        "timestamp": int(time.time() * 1000), "awsAccountId": "123456789012"},
        })  # fmt: skip
    out = _drain(acts, fast_config)
    assert out.jitr == 1 and [d.reason for d in out.dead_letters] == ["bad_common_name"]
    assert (
        REGISTRY.get_sample_value(
            "iotfailover_bad_input_total", {"source": "jitr", "reason": "bad_common_name"}
        )
        == bad_before + 1
    )
    for iot in (east, west):
        thing = iot.describe_thing(thingName="jitr-1")
        assert thing["attributes"]["sku"] == "sku-9"
        desc = iot.describe_certificate(certificateId=ids[0])["certificateDescription"]
        assert desc["status"] == "ACTIVE"
        assert iot.list_thing_principals(thingName="jitr-1")["principals"] == [desc["certificateArn"]]
        assert [
            p["policyName"] for p in iot.list_attached_policies(target=desc["certificateArn"])["policies"]
        ] == ["test-policy"]
        assert "jitr-1" in iot.list_things_in_thing_group(thingGroupName="test-fleet")["things"]
    assert (
        east.describe_certificate(certificateId=ids[1])["certificateDescription"]["status"]
        == "PENDING_ACTIVATION"
    )


def test_parity_cli_exits_non_zero_on_drift(
    acts: RegistryActivities, fast_config: DeploymentConfig, local_ca: pki.LocalCA, tmp_path: Path, capsys
) -> None:
    import starter

    aws = _aws(acts, fast_config)
    provision(aws.iot(E), local_ca, 3)
    regions = "".join(
        f'[regions.{r}]\nrole = "{c.role}"\nendpoint_url = "{c.endpoint_url}"\n\n'
        for r, c in fast_config.regions.items()
    )
    toml = tmp_path / "deployment.toml"
    toml.write_text(
        f'[deployment]\nname = "{fast_config.name}"\nmode = "active-passive"\n'
        f'ca_certificate = "{fast_config.ca_certificate}"\n\n{regions}'
        '[fleet]\nthing_group = "test-fleet"\npolicy_name = "test-policy"\n'
    )
    assert starter.main(["--config", str(toml), "parity"]) == 1
    assert "DRIFT" in capsys.readouterr().out
    reconcile_pair(aws, E, W)
    assert starter.main(["--config", str(toml), "parity", "--thing-group", "east"]) == 0
    assert starter.main(["--config", str(toml), "parity"]) == 0
    assert "OK" in capsys.readouterr().out


def test_active_active_each_region_sources_its_own_devices(
    emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(local_ca.cert_pem)
    cfg = make_config(
        emulators,
        ca_file,
        deployment={"mode": "active-active"},
        regions={
            E: {"role": "peer", "endpoint_url": emulators[E]},
            W: {"role": "peer", "endpoint_url": emulators[W]},
        },
        quotas=FAST,
    )
    acts = RegistryActivities(Deployments([cfg]))
    ready = acts.ensure_replication_ready(ReadyInput(cfg.name))
    assert {(p.source, p.target) for p in ready.pairs} == {(E, W), (W, E)}
    aws = _aws(acts, cfg)
    aws.iot(E).create_policy(policyName="east-policy", policyDocument=json.dumps(POLICY))
    aws.iot(E).create_thing(thingName="east-dev", attributePayload={"attributes": {"sku": "e"}})
    aws.iot(W).create_thing(thingName="west-dev", attributePayload={"attributes": {"sku": "w"}})
    for _ in range(2):  # twice: the second round must find nothing to do, in either direction
        results = [reconcile_pair(aws, E, W), reconcile_pair(aws, W, E)]
    assert all(not r.applied for r in results), [r.applied for r in results]
    assert aws.iot(W).describe_thing(thingName="east-dev")["attributes"] == {"sku": "e"}
    assert Ledger(aws).has(W, "thing", "east-dev") and not Ledger(aws).has(E, "thing", "east-dev")
    assert aws.iot(E).describe_thing(thingName="west-dev")["attributes"]["sku"] == "w"
    assert registry_parity(aws, E, W).ok and registry_parity(aws, W, E).ok
    # a device deleted in its home region disappears from the other, and only there
    aws.iot(W).delete_thing(thingName="west-dev")
    reconcile_pair(aws, W, E)
    assert "west-dev" not in {t["thingName"] for t in aws.iot(E).list_things()["things"]}
    assert aws.iot(W).get_policy(policyName="east-policy")["policyName"] == "east-policy"


def test_region_outage_neither_blocks_nor_loses_events(
    acts: RegistryActivities, fast_config: DeploymentConfig, local_ca: pki.LocalCA
) -> None:
    from temporalio.exceptions import ApplicationError

    from rehearsal import faults

    aws = _aws(acts, fast_config)
    sqs = aws.sqs(E)
    url = sqs.get_queue_url(QueueName=fast_config.replication.events_queue)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "1"})
    aws.iot(E).create_thing(thingName="late", attributePayload={"attributes": {"sku": "l"}})
    _send(aws, E, fast_config, _thing_event("late", "CREATED"))
    faults.set_fault(fast_config.regions[W].endpoint_url, "outage")  # the target is down
    with pytest.raises(ApplicationError) as e:
        _drain(acts, fast_config)
    assert not e.value.non_retryable
    faults.set_fault(fast_config.regions[W].endpoint_url, "clear")
    time.sleep(1.2)  # the message becomes visible again: it was not deleted
    assert _drain(acts, fast_config).applied == 1
    assert aws.iot(W).describe_thing(thingName="late")["attributes"]["sku"] == "l"
    faults.set_fault(fast_config.regions[E].endpoint_url, "outage")  # a source's queue is down
    out = _drain(acts, fast_config)
    assert out.unreachable == [E] and out.received == 0


def test_reconcile_converges_through_throttling(
    acts: RegistryActivities, fast_config: DeploymentConfig, local_ca: pki.LocalCA
) -> None:
    from rehearsal import faults

    aws = _aws(acts, fast_config)
    provision(aws.iot(E), local_ca, 8)
    before = sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "iotfailover_aws_throttles"
        for s in m.samples
        if s.labels.get("region") == W and s.name.endswith("_total")
    )
    faults.set_fault(fast_config.regions[W].endpoint_url, "throttle", rate=0.03)
    try:
        result = reconcile_pair(aws, E, W)
    finally:
        faults.set_fault(fast_config.regions[W].endpoint_url, "clear")
    after = sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "iotfailover_aws_throttles"
        for s in m.samples
        if s.labels.get("region") == W and s.name.endswith("_total")
    )
    assert after > before  # throttles were seen (and slowed the limiter), yet nothing was left behind
    assert not result.failed
    assert registry_parity(aws, E, W).ok


def test_scope_replication_needs_no_prior_setup(fast_config: DeploymentConfig, local_ca: pki.LocalCA) -> None:
    """The cutover preflight calls replicate_scope on regions the replication workflow never prepared."""
    acts = RegistryActivities(Deployments([fast_config]))
    aws = _aws(acts, fast_config)
    provision(aws.iot(E), local_ca, 3)
    assert (
        acts.check_registry_parity(ParityInput(fast_config.name, E, W, "test-fleet")).kinds["thing"].missing
        == 3
    )
    res = acts.replicate_scope(ReplicateScopeInput(fast_config.name, E, W, "test-fleet"))
    assert res.applied["thing:create"] == 3 and not res.failed  # test-fleet and its descendants
    assert acts.check_registry_parity(ParityInput(fast_config.name, E, W, "test-fleet")).ok
    assert (
        aws.iot(W).describe_ca_certificate(
            certificateId=acts.ensure_replication_ready(ReadyInput(fast_config.name)).ca_ids[W]
        )["certificateDescription"]["status"]
        == "ACTIVE"
    )
