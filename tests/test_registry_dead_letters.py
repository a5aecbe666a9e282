"""Dead-lettered registry events are parked in each region's dead-letter queue, counted and replayable.

Against the emulators (moto's SQS applies the redrive policy). AWS IAM is not emulated, so an
access denial is injected at the boto3 client, the one place the controller would see it.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from temporalio.exceptions import ApplicationError

from activities.registry import DrainInput, DrainResult, RegistryActivities
from core.config import DeploymentConfig
from rehearsal import faults, pki
from replication.dead_letters import DeadLetterQueues, dead_letter_queue
from tests import replication_fleet
from tests.replication_fleet import POLICY, denied

E, W = "us-east-1", "us-west-2"


@pytest.fixture
def fast_config(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path) -> DeploymentConfig:
    return replication_fleet.fast_config(emulators, local_ca, tmp_path)


@pytest.fixture
def acts(fast_config: DeploymentConfig) -> RegistryActivities:
    return replication_fleet.ready_activities(fast_config)


def _aws(acts: RegistryActivities, cfg: DeploymentConfig) -> Any:
    return acts.deployments.aws(cfg.name)


def _send(aws: Any, cfg: DeploymentConfig, body: Any, region: str = E) -> None:
    url = aws.sqs(region).get_queue_url(QueueName=cfg.replication.events_queue)["QueueUrl"]
    aws.sqs(region).send_message(
        QueueUrl=url, MessageBody=body if isinstance(body, str) else json.dumps(body)
    )


def _drain(acts: RegistryActivities, cfg: DeploymentConfig) -> DrainResult:
    return acts.drain_registry_events(DrainInput(cfg.name, max_seconds=3, wait_seconds=0))


def _queued(aws: Any, cfg: DeploymentConfig, region: str = E) -> int:
    url = aws.sqs(region).get_queue_url(QueueName=cfg.replication.events_queue)["QueueUrl"]
    attrs = aws.sqs(region).get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def _dead_total(cfg: DeploymentConfig, reason: str) -> float:
    labels = {"deployment": cfg.name, "reason": reason}
    return REGISTRY.get_sample_value("iotfailover_replication_dead_letters_total", labels) or 0


def _jitr(iot: Any, ca: pki.LocalCA, device: str) -> dict:
    pem, _ = pki.issue_device_cert(ca, device, sku="s")
    cid = iot.register_certificate(
        certificatePem=pem, caCertificatePem=ca.cert_pem, status="PENDING_ACTIVATION"
    )["certificateId"]
    ca_id = iot.list_ca_certificates()["certificates"][0]["certificateId"]
    return {
        "topic": f"$aws/events/certificates/registered/{ca_id}",
        "payload": {"certificateId": cid, "caCertificateId": ca_id, "timestamp": int(time.time() * 1000)},
    }


def test_unappliable_events_are_parked_with_their_reason_and_replay_once_fixed(
    acts: RegistryActivities, fast_config: DeploymentConfig, local_ca: pki.LocalCA, tmp_path: Path, capsys
) -> None:
    import starter

    aws = _aws(acts, fast_config)
    east, west = aws.iot(E), aws.iot(W)
    queues = DeadLetterQueues(aws)
    # the events queue redrives to its dead-letter queue after 5 receives (as the AWS template)
    events_url = aws.sqs(E).get_queue_url(QueueName=fast_config.replication.events_queue)["QueueUrl"]
    redrive = aws.sqs(E).get_queue_attributes(QueueUrl=events_url, AttributeNames=["RedrivePolicy"])
    assert dead_letter_queue(fast_config.replication.events_queue) in redrive["Attributes"]["RedrivePolicy"]

    east.create_thing(thingName="dev-1", attributePayload={"attributes": {"sku": "1"}})
    denied_before = _dead_total(fast_config, "access_denied")
    _send(aws, fast_config, "{poison")
    _send(aws, fast_config, _jitr(east, local_ca, "jitr-1"))  # the fleet policy is missing in the source
    _send(aws, fast_config, {"eventType": "THING_EVENT", "operation": "CREATED", "thingName": "dev-1"})
    with denied(west, "CreateThing"):  # the controller's role may not create things in the standby
        out = _drain(acts, fast_config)
    assert out.received == 3 and out.applied == 0 and out.dead_letter_count == 3
    assert sorted(d.reason for d in out.dead_letters) == ["access_denied", "bad_json", "not_found"]
    assert out.dead_letters_by_region == {E: 3} and out.dead_letter_queue_depth[E] == 3
    assert _dead_total(fast_config, "access_denied") == denied_before + 1
    assert REGISTRY.get_sample_value(
        "iotfailover_replication_dead_letter_queue_messages", {"deployment": fast_config.name, "region": E}
    ) == 3  # fmt: skip
    assert _queued(aws, fast_config) == 0  # nothing blocks the queue...
    listing = queues.peek(E)  # ...and nothing is lost: each waits with why
    assert listing.count == 3
    by_reason = {m.reason: m for m in listing.messages}
    assert by_reason["bad_json"].body == "{poison" and by_reason["bad_json"].region == E
    assert "CreateThing" in by_reason["access_denied"].detail
    assert "test-policy" in by_reason["not_found"].detail

    toml = replication_fleet.write_toml(fast_config, tmp_path / "deployment.toml")
    assert starter.main(["--config", str(toml), "replicate", "dead-letters"]) == 1  # some are waiting
    shown = capsys.readouterr().out
    assert f"{E}: 3 dead letters" in shown and f"{W}: 0 dead letters" in shown
    assert "access_denied" in shown and "bad_json" in shown and "not_found" in shown
    assert queues.depth(E) == 3  # listing leaves them where they are

    # the operator fixes both causes, then replays: the two apply, the poison comes back
    east.create_policy(policyName="test-policy", policyDocument=json.dumps(POLICY))
    assert starter.main(["--config", str(toml), "replicate", "dead-letters", "--replay"]) == 0
    assert "us-east-1: 3 moved back to the events queue" in capsys.readouterr().out
    assert queues.depth(E) == 0
    again = _drain(acts, fast_config)
    assert again.received == 3 and again.applied == 2 and again.jitr == 1
    assert [d.reason for d in again.dead_letters] == ["bad_json"]
    assert west.describe_thing(thingName="dev-1")["attributes"] == {"sku": "1"}
    assert west.describe_thing(thingName="jitr-1")["thingName"] == "jitr-1"
    # replaying is idempotent: the poison goes round again, nothing is duplicated or lost
    assert queues.replay(E).moved == 1 and queues.replay(E).moved == 0
    assert _drain(acts, fast_config).dead_letter_count == 1 and queues.depth(E) == 1


def test_a_message_is_deleted_only_once_it_is_parked(
    acts: RegistryActivities, fast_config: DeploymentConfig
) -> None:
    aws = _aws(acts, fast_config)
    sqs = aws.sqs(E)
    events_url = sqs.get_queue_url(QueueName=fast_config.replication.events_queue)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=events_url, Attributes={"VisibilityTimeout": "1"})
    dead_url = sqs.get_queue_url(QueueName=dead_letter_queue(fast_config.replication.events_queue))[
        "QueueUrl"
    ]
    sqs.delete_queue(QueueUrl=dead_url)  # the dead-letter queue is gone: parking fails
    _send(aws, fast_config, "{poison")
    with pytest.raises(ApplicationError) as e:
        RegistryActivities(acts.deployments).drain_registry_events(
            DrainInput(fast_config.name, max_seconds=2, wait_seconds=0)
        )
    assert "dead-lettering a registry event (it stays queued)" in str(e.value)
    assert _queued(aws, fast_config) == 1  # still in the events queue, not lost


def test_retryable_failures_are_never_dead_lettered(
    acts: RegistryActivities, fast_config: DeploymentConfig
) -> None:
    aws = _aws(acts, fast_config)
    aws.iot(E).create_thing(thingName="late")
    _send(aws, fast_config, {"eventType": "THING_EVENT", "operation": "CREATED", "thingName": "late"})
    faults.set_fault(fast_config.regions[W].endpoint_url, "throttle")  # every target call throttled
    try:
        with pytest.raises(ApplicationError) as e:
            _drain(acts, fast_config)
    finally:
        faults.set_fault(fast_config.regions[W].endpoint_url, "clear")
    assert not e.value.non_retryable
    assert DeadLetterQueues(aws).depth(E) == 0 and _queued(aws, fast_config) == 1


def test_redriven_and_undeliverable_messages_are_listed_and_replayed(
    acts: RegistryActivities, fast_config: DeploymentConfig
) -> None:
    """What lands in the dead-letter queue without the drain: redrive after 5 receives, a rule's error action."""
    aws = _aws(acts, fast_config)
    sqs, queues = aws.sqs(E), DeadLetterQueues(aws)
    aws.iot(E).create_thing(thingName="slow")
    aws.iot(E).create_thing(thingName="undelivered")
    _send(aws, fast_config, {"eventType": "THING_EVENT", "operation": "CREATED", "thingName": "slow"})
    url = queues.url(E)
    for _ in range(6):  # a consumer that never deletes it (each receive counts)
        sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=0)
    event = {"eventType": "THING_EVENT", "operation": "CREATED", "thingName": "undelivered"}
    envelope = {  # AWS IoT's error action, when the rule could not deliver to the events queue
        "ruleName": "iotfailover_registry_things",
        "topic": "$aws/events/thing/undelivered/created",
        "cloudwatchTraceId": "trace",
        "clientId": "iot-rules",
        "base64OriginalPayload": base64.b64encode(json.dumps(event).encode()).decode(),
        "failures": [{"failedAction": "SqsAction", "errorMessage": "queue throttled"}],
    }
    sqs.send_message(QueueUrl=queues.url(E, dead=True), MessageBody=json.dumps(envelope))
    listing = queues.peek(E)
    assert listing.count == 2
    assert sorted((m.reason, m.detail) for m in listing.messages) == [
        ("redriven", "received 5 or more times without being applied"),
        ("undeliverable", "rule iotfailover_registry_things: queue throttled"),
    ]
    assert queues.replay(E).moved == 2
    out = _drain(acts, fast_config)
    assert out.applied == 2 and out.dead_letter_count == 0
    assert {t["thingName"] for t in aws.iot(W).list_things()["things"]} == {"slow", "undelivered"}
