"""Least privilege, checked against the code: every role allows exactly the AWS actions its code calls."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from cfnlint.api import lint_file

from deploy import iam_actions as iam
from deploy import iam_scan

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def calls() -> list[iam_scan.Call]:
    return iam_scan.scan()


@pytest.mark.parametrize("principal", iam.PRINCIPALS, ids=lambda p: p.name)
def test_role_allows_exactly_what_the_code_calls(
    principal: iam.Principal, calls: list[iam_scan.Call]
) -> None:
    diff = iam.Diff(principal, principal.actions(calls), iam.template_actions(principal))
    assert not diff.missing and not diff.extra, "\n" + diff.render(calls)


def test_every_called_action_is_a_real_iam_action(calls: list[iam_scan.Call]) -> None:
    assert iam.unknown_actions(calls) == [], "add the IAM names to OVERRIDES in deploy/iam_scan.py"


@pytest.mark.parametrize("principal", iam.PRINCIPALS, ids=lambda p: p.name)
def test_statements_scope_resources_where_iam_allows(principal: iam.Principal) -> None:
    """Resource-level actions never get "*"; account-level actions get "*" (anything else never matches)."""
    for st in iam.template_statements(principal):
        resources = iam._as_list(st["Resource"])
        for action in iam._as_list(st["Action"]):
            types = iam.resource_types(action)
            assert types is not None, f"{action} is not an IAM action"
            if types:
                assert "*" not in resources, f"{principal.template} {st.get('Sid')}: {action} can be scoped"
            else:
                assert resources == ["*"], (
                    f"{principal.template} {st.get('Sid')}: {action} needs Resource '*'"
                )


def test_scanner_follows_clients_pagers_and_helpers() -> None:
    source = textwrap.dedent(
        """
        from core.aws import all_items, fetch_page

        def work(deployments, name, region):
            aws = deployments.aws(name)
            src = aws.iot(region)
            fetch_page(src, "list_things_in_thing_group", "things", thingGroupName="g")
            for _ in all_items(aws.iot(region), "list_thing_groups", "thingGroups"):
                pass
            aws.iot_data(region).get_thing_shadow(thingName="t")
            table = aws.dynamodb(region)
            table.transact_write_items(TransactItems=[])
            aws.client(region, "route53").get_paginator("list_resource_record_sets")
            aws.device_endpoint(region)
            _helper(aws.iot(region))
            aws.sqs(region).delete_message_batch(QueueUrl="q", Entries=[])
            src.not_an_api_call()
            unrelated.create_thing(thingName="not a client")

        def _helper(target_iot):
            target_iot.attach_thing_principal(thingName="t", principal="arn")

        def assume(session):
            sts = session.client("sts")
            sts.assume_role(RoleArn="arn", RoleSessionName="s")

        class Store:
            def __init__(self, name):
                self.table = boto3.resource("dynamodb").Table(name)

            def read(self, key):
                with self.table.batch_writer() as batch:
                    pass
                return self.table.get_item(Key=key)

            def flip(self, region):
                self._target_iot(region).update_thing(thingName="t")
                src, dst = aws.iot(region), aws.sqs(region)
                dst.send_message_batch(QueueUrl="q", Entries=[])
                aws.dynamodb(region).get_waiter("table_exists").wait(TableName="t")
                dst.get_waiter("no_such_waiter")
                aws.client(region, "cloudwatch").get_metric_data(MetricDataQueries=[])
                data, watch = aws.iot_data(region), Watch()
                watch.call(data.update_thing_shadow, thingName="canary", payload=b"{}")
                watch.call(fetch_page, aws.iot(region), "list_things", "things", page_size=1)
        """
    )
    found = {c.action for c in iam_scan.scan_source(source)}
    assert found == {
        "iot:ListThingsInThingGroup",
        "iot:ListThingGroups",
        "iot:GetThingShadow",
        "dynamodb:ConditionCheckItem",
        "dynamodb:DeleteItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "route53:ListResourceRecordSets",
        "iot:DescribeEndpoint",
        "iot:AttachThingPrincipal",
        "sqs:DeleteMessage",
        "sts:AssumeRole",
        "dynamodb:BatchWriteItem",
        "dynamodb:GetItem",
        "iot:UpdateThing",
        "sqs:SendMessage",
        "dynamodb:DescribeTable",
        "cloudwatch:GetMetricData",
        "iot:UpdateThingShadow",
        "iot:ListThings",
    }
    assert [c.caller for c in iam_scan.scan_source(source) if c.action == "sts:AssumeRole"] == [True]


def test_a_client_whose_service_is_not_a_literal_is_reported(tmp_path: Path) -> None:
    (tmp_path / "activities").mkdir()
    (tmp_path / "activities" / "x.py").write_text(
        "def f(aws, r, svc):\n    aws.client(r, svc).list_things()\n"
    )
    assert iam_scan.unresolved(["activities"], tmp_path) == [
        "activities/x.py:2: client(..., <not a string literal>)"
    ]


@pytest.fixture
def scratch_repo(tmp_path: Path) -> Path:
    """A copy of the templates and core, plus an activity and a bootstrap module that call more of AWS."""
    shutil.copytree(ROOT / "deploy" / "aws", tmp_path / "deploy" / "aws")
    for principal in iam.PRINCIPALS:  # start from empty policies, whatever the real code needs today
        iam.write_template(principal, set(), tmp_path)
    shutil.copytree(ROOT / "core", tmp_path / "core")
    for folder in ("activities", "bootstrap", "workflows"):
        (tmp_path / folder).mkdir()
    (tmp_path / "activities" / "fake.py").write_text(
        textwrap.dedent(
            """
            def run(aws, source, target):
                aws.iot(target).create_thing(thingName="t")
                aws.iot(target).register_certificate(certificatePem="")
                aws.iot(target).create_job(jobId="d-1-0", targets=[])
                aws.dynamodb(target).update_item(TableName="t", Key={})
                aws.sqs(source).receive_message(QueueUrl="q")
                r53 = aws.client(source, "route53")
                r53.change_resource_record_sets(HostedZoneId="z", ChangeBatch={})
                r53.get_change(Id="c")
                aws.client(source, "cloudwatch").get_metric_data(MetricDataQueries=[])
            """
        )
    )
    (tmp_path / "bootstrap" / "store.py").write_text(
        "def read(aws, region):\n    aws.dynamodb(region).get_item(TableName='t', Key={})\n"
    )
    return tmp_path


def test_diff_names_what_to_add_and_write_fixes_it(scratch_repo: Path, capsys: pytest.CaptureFixture) -> None:
    assert iam.main(["--root", str(scratch_repo)]) == 1
    out = capsys.readouterr().out
    assert "add    iot:CreateThing" in out and "activities/fake.py:3" in out
    assert "statement IotDeploymentResources" in out
    assert "add    dynamodb:GetItem" in out  # the bootstrap function's role

    assert iam.main(["--root", str(scratch_repo), "--write"]) == 0
    calls = iam_scan.scan(root=scratch_repo)
    for d in iam.diffs(calls, scratch_repo):
        assert not d.missing and not d.extra, d.render(calls)
    for template in sorted((scratch_repo / "deploy" / "aws").glob("*.yaml")):
        assert [str(m) for m in lint_file(template)] == []

    (scratch_repo / "activities" / "fake.py").write_text(
        "def run(aws, r):\n    aws.iot(r).create_thing(thingName='t')\n"
    )
    assert iam.main(["--root", str(scratch_repo)]) == 1
    assert "remove iot:RegisterCertificate" in capsys.readouterr().out
