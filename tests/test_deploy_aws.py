"""The CloudFormation templates: cfn-lint clean, and carrying what the other parts rely on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cfnlint.api import lint_file
from cfnlint.decode import cfn_yaml

from bootstrap.runtime import ENDPOINTS_ENV

ROOT = Path(__file__).resolve().parent.parent
AWS = ROOT / "deploy" / "aws"
TEMPLATES = sorted(AWS.glob("*.yaml"))


def resources(name: str, rtype: str | None = None) -> dict[str, dict]:
    doc = cfn_yaml.load(str(AWS / name))
    return {k: v for k, v in doc["Resources"].items() if rtype is None or v["Type"] == rtype}


def test_templates_exist() -> None:
    assert {t.name for t in TEMPLATES} >= {"region.yaml", "bootstrap-api.yaml", "controller-identity.yaml"}


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_clean(template: Path) -> None:
    assert [str(m) for m in lint_file(template)] == []


def test_cfn_lint_catches_a_broken_template(tmp_path: Path) -> None:
    """The lint really runs: an unknown IAM action and a bad property type fail it."""
    (tmp_path / "broken.yaml").write_text(
        """
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: forever
  Role:
    Type: AWS::IAM::Role
    Properties:
      AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: lambda.amazonaws.com}, Action: sts:AssumeRole}]}
      Policies:
        - PolicyName: p
          PolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Action: sqs:SendMessages, Resource: "*"}]}
"""
    )
    found = {m.rule.id for m in lint_file(tmp_path / "broken.yaml")}
    assert {"E3012", "W3037"} <= found, found


EVENT_TOPICS = {
    "$aws/events/thing/+/+",
    "$aws/events/thingType/+/+",
    "$aws/events/thingTypeAssociation/thing/+/+",
    "$aws/events/thingGroup/+/+",
    "$aws/events/thingGroupMembership/thingGroup/+/thing/+/+",
    "$aws/events/thingGroupHierarchy/thingGroup/+/childThingGroup/+/+",
    "$aws/events/certificates/registered/+",
    "${CertificateEventTopic}",
    "${PolicyEventTopic}",
}


def _sql(payload: dict) -> str:
    sql = payload["Sql"]
    return sql["Fn::Sub"] if isinstance(sql, dict) else sql


def test_event_rules_route_every_event_kind_to_the_queue_with_a_dead_letter_action() -> None:
    rules = resources("region.yaml", "AWS::IoT::TopicRule")
    topics = set()
    for name, rule in rules.items():
        payload = rule["Properties"]["TopicRulePayload"]
        assert "ErrorAction" in payload, f"{name} has no error action"
        if rule.get("Condition") == "HasTelemetryRouting":
            continue
        sql = _sql(payload)
        assert sql.startswith("SELECT *, topic() AS topic FROM '"), (
            f"{name}: the consumer expects this envelope"
        )
        topics.add(sql.split("FROM '", 1)[1].rstrip("'"))
        assert payload["Actions"] == [
            {
                "Sqs": {
                    "QueueUrl": {"Ref": "EventsQueue"},
                    "RoleArn": {"Fn::GetAtt": ["TopicRuleRole", "Arn"]},
                    "UseBase64": False,
                }
            }
        ]
        assert payload["ErrorAction"]["Sqs"]["QueueUrl"] == {"Ref": "EventsDeadLetterQueue"}
    assert topics == EVENT_TOPICS


def test_queue_redrives_to_the_dead_letter_queue_and_registry_events_are_enabled() -> None:
    res = resources("region.yaml")
    redrive = res["EventsQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["EventsDeadLetterQueue", "Arn"]}
    types = set(res["RegistryEventConfigurations"]["Properties"]["EventTypes"])
    assert {"THING", "THING_GROUP", "THING_TYPE", "THING_GROUP_MEMBERSHIP", "THING_GROUP_HIERARCHY"} <= types


def test_tables_have_point_in_time_recovery_and_are_kept_on_delete() -> None:
    tables = resources("region.yaml", "AWS::DynamoDB::Table")
    assert set(tables) == {"BootstrapTable", "ClaimsTable", "RoutingTable", "LedgerTable"}
    for name, table in tables.items():
        assert table["Properties"]["PointInTimeRecoverySpecification"] == {
            "PointInTimeRecoveryEnabled": True
        }, name
        assert table["DeletionPolicy"] == "Retain", name


def test_controller_role_requires_the_external_id_and_trusts_only_the_worker() -> None:
    trust = resources("region.yaml")["ControllerRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [
        {
            "Effect": "Allow",
            "Principal": {"AWS": {"Ref": "WorkerRoleArn"}},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}},
        }
    ]


def test_routing_rule_uses_the_routing_table_in_its_substitution_template() -> None:
    rule = resources("region.yaml")["TelemetryRoutingRule"]["Properties"]["TopicRulePayload"]
    stream = rule["Actions"][0]["Kinesis"]["StreamName"]["Fn::Join"][1]
    assert (
        stream[0] == "${get_dynamodb('"
        and {"Ref": "RoutingTableName"} in stream
        and stream[-1] == "').stream}"
    )


def test_bootstrap_is_a_lambda_behind_mutual_tls_only() -> None:
    res = resources("bootstrap-api.yaml")
    assert res["BootstrapFunction"]["Properties"]["Handler"] == "bootstrap.lambda_handler.handler"
    env = res["BootstrapFunction"]["Properties"]["Environment"]["Variables"]
    assert env[ENDPOINTS_ENV] == {"Ref": "IotEndpoints"}
    domain = res["BootstrapDomain"]["Properties"]
    assert domain["MutualTlsAuthentication"]["TruststoreUri"] == {"Ref": "TruststoreUri"}
    assert res["BootstrapApi"]["Properties"]["DisableExecuteApiEndpoint"] is True
    routes = {r["Properties"]["RouteKey"] for r in res.values() if r["Type"] == "AWS::ApiGatewayV2::Route"}
    assert routes == {"GET /v1/bootstrap/{thingName}", "GET /healthz"}
    health_route = res["HealthRoute"]["Properties"]
    assert health_route["ApiId"] == {"Ref": "HealthApi"}, "the API without mTLS serves /healthz only"


def test_the_boot_path_alarms_watch_this_stacks_api_and_function_with_a_runbook_each() -> None:
    res = resources("bootstrap-api.yaml")
    alarms = {name: r["Properties"] for name, r in res.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    headings = set(re.findall(r"^#+ (\w+)$", (ROOT / "docs" / "operating.md").read_text(), re.M))
    watched = set()
    for name, alarm in alarms.items():
        stats = [m["MetricStat"]["Metric"] for m in alarm.get("Metrics", []) if "MetricStat" in m] or [alarm]
        for metric in stats:
            watched |= {
                (metric["Namespace"], d["Value"]["Ref"]) for d in metric["Dimensions"] if "Ref" in d["Value"]
            }
        anchor = re.search(r"docs/operating.md#(\w+)", alarm["AlarmDescription"]["Fn::Sub"]).group(1)
        assert anchor == name.removesuffix("Alarm").lower() and name.removesuffix("Alarm") in headings
    assert watched == {("AWS/ApiGateway", "BootstrapApi"), ("AWS/Lambda", "BootstrapFunction")}
    assert {"BootstrapServerErrorsAlarm", "BootstrapLatencyAlarm", "BootstrapThrottlesAlarm"} <= set(alarms)
    for stage in ("BootstrapStage", "HealthStage"):
        assert "DestinationArn" in res[stage]["Properties"]["AccessLogSettings"], (
            f"{stage} keeps no access log"
        )


def test_the_region_stack_enables_the_registry_events_replication_reads() -> None:
    from core.prerequisites import REGISTRY_EVENT_TYPES

    types = resources("region.yaml")["RegistryEventConfigurations"]["Properties"]["EventTypes"]
    assert sorted(types) == sorted(REGISTRY_EVENT_TYPES)
