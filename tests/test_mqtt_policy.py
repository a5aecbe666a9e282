"""IoT policy evaluation of the rehearsal broker (pure logic): wildcards, variables, explicit Deny."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from rehearsal.mqtt import policy
from simulator.provision import policy_document

ARN = "arn:aws:iot:us-east-1:123456789012"
THING = {"iot:Connection.Thing.ThingName": "dev-1", "iot:ClientId": "dev-1"}


def test_the_fleet_policy_allows_a_device_only_its_own_client_id_and_topics() -> None:
    statements = policy.parse(json.dumps(policy_document("app")))
    assert policy.allowed(statements, "iot:Connect", f"{ARN}:client/dev-1", THING)
    assert not policy.allowed(statements, "iot:Connect", f"{ARN}:client/dev-2", THING)
    assert policy.allowed(statements, "iot:Publish", f"{ARN}:topic/data/app/dev-1/t", THING)
    assert not policy.allowed(statements, "iot:Publish", f"{ARN}:topic/data/app/dev-2/t", THING)
    assert policy.allowed(
        statements, "iot:Subscribe", f"{ARN}:topicfilter/$aws/things/dev-1/jobs/+/get/+", THING
    )
    # a client ID that is no attached thing leaves the thing variable unresolved: nothing matches
    assert not policy.allowed(statements, "iot:Connect", f"{ARN}:client/dev-1", {"iot:ClientId": "dev-1"})


def test_explicit_deny_wins_and_conditions_never_allow() -> None:
    statements = [
        {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
        {"Effect": "Deny", "Action": ["iot:Publish"], "Resource": f"{ARN}:topic/secret/*"},
        {"Effect": "Allow", "Action": "iot:Receive", "Resource": "*", "Condition": {"Bool": {"x": "true"}}},
    ]
    assert policy.allowed(statements, "iot:Publish", f"{ARN}:topic/open/1", {})
    assert not policy.allowed(statements, "iot:Publish", f"{ARN}:topic/secret/1", {})
    assert not policy.allowed(statements[2:], "iot:Receive", f"{ARN}:topic/open/1", {})
    assert policy.parse("not json") == [] and policy.parse('{"Statement": {"Effect": "Allow"}}')


@given(st.text(alphabet="abc/+#$-_.?*", max_size=30))
def test_a_literal_resource_matches_only_itself(topic: str) -> None:
    literal = topic.replace("*", "").replace("?", "")
    statements = [{"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{ARN}:topic/{literal}"}]
    assert policy.allowed(statements, "iot:Publish", f"{ARN}:topic/{literal}", {})
    assert not policy.allowed(statements, "iot:Publish", f"{ARN}:topic/{literal}x", {})
