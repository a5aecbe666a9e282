"""The AWS actions the code calls, read from the code, and their place in the IAM templates.

Least privilege is only as good as its list of actions, and a hand-kept list drifts the day someone
adds an activity. This module reads the list from the code instead: it parses (with `ast`) every
Python file of the scanned folders, finds calls made on boto3 clients that come from
`core.aws.AwsClients` (`iot`, `iot_data`, `jobs_data`, `dynamodb`, `sqs`, `client(region, "svc")`,
names assigned from them, parameters named after a service such as `iot` or `target_iot`, and boto3
DynamoDB tables),
including the pager's method strings (`fetch_page(iot, "list_things", ...)`), maps each method to its
API name with botocore's service model and prefixes it with the IAM service prefix. Clients made
straight from a boto3 session (`session.client("sts")`) count too. STS calls are the caller's own:
they run with the worker's identity to assume a region's role, so they go to the worker's policy.

    python -m deploy.iam_actions            # actions found, where, and the diff against the templates
    python -m deploy.iam_actions --write    # regenerate the templates' policy blocks from the code
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from deploy.iam_scan import ACCOUNT_WIDE, ROOT, SCANNED, Call, scan, scan_source, unresolved

# ---- where the actions go: principals, their templates and the scopes of their statements ----


@dataclass(frozen=True)
class Scope:
    """One policy statement: which actions it takes and the resources it allows them on.

    `arns` maps an IAM resource type (from the service's authorization reference, as cfn-lint ships
    it) to the ARN of the deployment's resources of that type; an action goes to the first scope of
    its prefix whose `resource_level` matches whether the action supports resource-level
    permissions, and gets the ARNs of the resource types it names.
    """

    sid: str
    prefix: str
    resource_level: bool
    arns: dict[str, str | list[str]] = field(default_factory=dict)
    condition: str | None = None  # a template Condition the statement depends on


@dataclass(frozen=True)
class Principal:
    name: str
    template: str
    resource: str  # the AWS::IAM::Role's logical ID
    folders: tuple[str, ...]
    caller: bool  # the caller-side actions (the worker's own identity) instead of the role's
    scopes: tuple[Scope, ...]
    policy_name: str

    def actions(self, calls: Iterable[Call]) -> set[str]:
        return {c.action for c in calls if c.caller == self.caller and c.path.split("/")[0] in self.folders}


_IOT = "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}"
_IOT_ARNS = {
    "thing": f"{_IOT}:thing/*",
    "thinggroup": f"{_IOT}:thinggroup/*",
    "dynamicthinggroup": f"{_IOT}:thinggroup/*",
    "thingtype": f"{_IOT}:thingtype/*",
    "policy": f"{_IOT}:policy/*",
    "cert": f"{_IOT}:cert/*",
    "cacert": f"{_IOT}:cacert/*",
    "job": f"{_IOT}:job/${{DeploymentName}}-*",
    "topic": f"{_IOT}:topic/iotfailover/${{DeploymentName}}/*",
    "client": f"{_IOT}:client/iotfailover-${{DeploymentName}}-*",
}
_TABLE = "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table"
_QUEUE = "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${EventsQueueName}"
_ALL_TABLES = [
    f"{_TABLE}/${{{t}}}"
    for t in ("BootstrapTableName", "ClaimsTableName", "RoutingTableName", "LedgerTableName")
]
CONTROLLER_SCOPES = (
    Scope("IotAccountLevel", "iot", False),
    Scope("IotDeploymentResources", "iot", True, _IOT_ARNS),
    Scope("IotJobsDeviceSide", "iotjobsdata", True, {"thing": _IOT_ARNS["thing"]}),
    Scope("DynamoDbAccountLevel", "dynamodb", False),
    Scope(
        "DeploymentTables",
        "dynamodb",
        True,
        {"table": _ALL_TABLES, "index": [f"{t}/index/*" for t in _ALL_TABLES]},
    ),
    Scope("SqsAccountLevel", "sqs", False),
    Scope("CloudWatchMetricsRead", "cloudwatch", False),  # IoT's connect/publish metrics (health probe)
    Scope(
        "RegistryEventsQueue",
        "sqs",
        True,
        {"queue": [_QUEUE, f"{_QUEUE}-dlq"]},  # the events queue and its dead-letter queue
    ),
    Scope("Route53AccountLevel", "route53", False, condition="HasDnsRecord"),
    Scope(
        "Route53DeploymentRecord",
        "route53",
        True,
        {
            "hostedzone": "arn:${AWS::Partition}:route53:::hostedzone/${HostedZoneId}",
            "change": "arn:${AWS::Partition}:route53:::change/*",
        },
        condition="HasDnsRecord",
    ),
)
BOOTSTRAP_SCOPES = (
    Scope("IotAccountLevel", "iot", False),
    Scope(
        "IotRegistryRead",
        "iot",
        True,
        {k: _IOT_ARNS[k] for k in ("thing", "thinggroup", "dynamicthinggroup")},
    ),
    Scope("BootstrapTable", "dynamodb", True, {"table": f"{_TABLE}/${{BootstrapTableName}}"}),
)
WORKER_SCOPES = (Scope("AssumeControllerRoles", "sts", True, {"role": "!ControllerRoleArns"}),)

PRINCIPALS = (
    Principal(
        "controller",
        "deploy/aws/region.yaml",
        "ControllerRole",
        SCANNED,
        False,
        CONTROLLER_SCOPES,
        "controller-actions",
    ),
    Principal(
        "bootstrap",
        "deploy/aws/bootstrap-api.yaml",
        "BootstrapFunctionRole",
        ("bootstrap",),
        False,
        BOOTSTRAP_SCOPES,
        "bootstrap-actions",
    ),
    Principal(
        "worker",
        "deploy/aws/controller-identity.yaml",
        "WorkerRole",
        SCANNED,
        True,
        WORKER_SCOPES,
        "assume-regions",
    ),
)


@cache
def _policy_data() -> dict:
    """IAM actions and their resource types, from the authorization reference cfn-lint ships."""
    import cfnlint

    path = Path(cfnlint.__file__).parent / "data" / "AdditionalSpecs" / "Policies.json"
    return json.loads(path.read_text())


def resource_types(action: str) -> list[str] | None:
    """The resource types an IAM action can be scoped to ([] for none), None for an unknown action."""
    prefix, name = action.split(":", 1)
    found = _policy_data().get(prefix, {}).get("Actions", {}).get(name.lower())
    if found is None:
        return None
    return [] if action in ACCOUNT_WIDE else list(found.get("Resources", []))


def scope_for(action: str, scopes: Iterable[Scope]) -> Scope | None:
    types = resource_types(action)
    if types is None:
        return None
    prefix = action.split(":", 1)[0]
    return next((s for s in scopes if s.prefix == prefix and s.resource_level == bool(types)), None)


# ---- reading and writing the templates' policies ----


def template_actions(principal: Principal, root: Path = ROOT) -> set[str]:
    """The actions the principal's role allows in its template, as CloudFormation reads it."""
    return {a for st in template_statements(principal, root) for a in _as_list(st.get("Action"))}


def template_statements(principal: Principal, root: Path = ROOT) -> list[dict]:
    from cfnlint.decode import cfn_yaml

    doc = cfn_yaml.load(str(root / principal.template))
    props = doc["Resources"][principal.resource].get("Properties", {})
    out: list[dict] = []
    for policy in props.get("Policies", []):
        for st in _unwrap_if(policy["PolicyDocument"].get("Statement", [])):
            if st.get("Effect") == "Allow":
                out.append(st)
    return out


def _unwrap_if(statements: list) -> Iterator[dict]:
    """Statements, with `Fn::If` taken on its true branch (the feature enabled)."""
    for st in statements:
        if isinstance(st, dict) and "Fn::If" in st:
            yield from _unwrap_if([st["Fn::If"][1]])
        elif isinstance(st, dict) and "Ref" not in st:
            yield st


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def render_policy(principal: Principal, actions: set[str], indent: int) -> tuple[list[str], list[str]]:
    """The YAML of the role's `Policies:` property, and the actions no scope takes."""
    grouped: dict[str, list[str]] = {}
    orphans = []
    for action in sorted(actions):
        scope = scope_for(action, principal.scopes)
        if scope is None:
            orphans.append(action)
        else:
            grouped.setdefault(scope.sid, []).append(action)
    pad = " " * indent
    lines = [
        f"{pad}Policies:",
        f"{pad}  - PolicyName: {principal.policy_name}",
        f"{pad}    PolicyDocument:",
        f'{pad}      Version: "2012-10-17"',
        f"{pad}      Statement:",
    ]
    for scope in principal.scopes:
        if scope.sid not in grouped:
            continue
        body = [f"Sid: {scope.sid}", "Effect: Allow", "Action:"]
        body += [f"  - {a}" for a in grouped[scope.sid]]
        body += _render_resources(scope, grouped[scope.sid])
        if scope.condition:
            lines += [f"{pad}        - !If", f"{pad}          - {scope.condition}"]
            lines += [f"{pad}          - {body[0]}"] + [f"{pad}            {b}" for b in body[1:]]
            lines += [f"{pad}          - !Ref AWS::NoValue"]
        else:
            lines += [f"{pad}        - {body[0]}"] + [f"{pad}          {b}" for b in body[1:]]
    if not grouped:
        lines = []
    return lines, orphans


def _render_resources(scope: Scope, actions: list[str]) -> list[str]:
    if not scope.resource_level:
        return ['Resource: "*"']
    arns: list[str] = []
    for action in actions:
        for rtype in resource_types(action) or []:
            for arn in _as_list(scope.arns.get(rtype, [])):
                if arn not in arns:
                    arns.append(arn)
    if len(arns) == 1 and arns[0].startswith("!"):
        return [f"Resource: !Ref {arns[0][1:]}"]
    return ["Resource:"] + [f"  - !Sub '{arn}'" for arn in arns]


_BEGIN = "# BEGIN iam_actions {name}"
_END = "# END iam_actions {name}"


def write_template(principal: Principal, actions: set[str], root: Path = ROOT) -> list[str]:
    """Regenerate the principal's policy block between its markers; returns orphan actions."""
    path = root / principal.template
    text = path.read_text().splitlines()
    begin = next(i for i, line in enumerate(text) if line.strip() == _BEGIN.format(name=principal.name))
    end = next(i for i, line in enumerate(text) if line.strip() == _END.format(name=principal.name))
    indent = len(text[begin]) - len(text[begin].lstrip())
    block, orphans = render_policy(principal, actions, indent)
    path.write_text("\n".join(text[: begin + 1] + block + text[end:]) + "\n")
    return orphans


# ---- report ----


@dataclass
class Diff:
    principal: Principal
    needed: set[str]
    allowed: set[str]

    @property
    def missing(self) -> list[str]:
        return sorted(self.needed - self.allowed)

    @property
    def extra(self) -> list[str]:
        return sorted(self.allowed - self.needed)

    def render(self, calls: list[Call]) -> str:
        p = self.principal
        lines = [
            f"{p.template} {p.resource} ({p.name}): {len(self.needed)} actions needed, {len(self.allowed)} allowed"
        ]
        for a in self.missing:
            where = next(f"{c.path}:{c.line}" for c in calls if c.action == a)
            scope = scope_for(a, p.scopes)
            hint = f"statement {scope.sid}" if scope else "no scope: add a Scope in deploy/iam_actions.py"
            lines.append(f"  add    {a:45} called at {where}; {hint}")
        lines += [f"  remove {a:45} no code calls it" for a in self.extra]
        if self.missing or self.extra:
            lines.append("  fix: python -m deploy.iam_actions --write  (then review and commit the template)")
        return "\n".join(lines)


def diffs(calls: list[Call], root: Path = ROOT) -> list[Diff]:
    return [Diff(p, p.actions(calls), template_actions(p, root)) for p in PRINCIPALS]


def unknown_actions(calls: Iterable[Call]) -> list[str]:
    """Mapped actions that IAM does not know: they need an entry in OVERRIDES."""
    return sorted({c.action for c in calls if resource_types(c.action) is None})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="regenerate the templates' policy blocks")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    calls = scan(root=args.root)
    print("AWS actions called by the code:")
    for action in sorted({c.action for c in calls}):
        sites = sorted({f"{c.path}:{c.line}" for c in calls if c.action == action})
        side = " (caller identity)" if any(c.caller for c in calls if c.action == action) else ""
        print(f"  {action}{side}: {', '.join(sites[:3])}{' ...' if len(sites) > 3 else ''}")
    for where in unresolved(root=args.root):
        print(f"warning: {where}: the scan cannot tell which service; pass the service name as a literal")
    bad = unknown_actions(calls)
    for a in bad:
        print(f"unknown IAM action {a}: add its real name(s) to OVERRIDES in deploy/iam_scan.py")
    if args.write:
        for p in PRINCIPALS:
            for orphan in write_template(p, p.actions(calls), args.root):
                print(f"{p.template}: no scope takes {orphan}: add a Scope in deploy/iam_actions.py")
                bad.append(orphan)
    drift = diffs(calls, args.root)
    print()
    for d in drift:
        print(d.render(calls))
    return 1 if bad or any(d.missing or d.extra for d in drift) else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "Call",
    "PRINCIPALS",
    "Scope",
    "diffs",
    "main",
    "scan",
    "scan_source",
    "resource_types",
    "scope_for",
]
