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
import ast
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import botocore.exceptions
import botocore.session
from botocore import xform_name

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("activities", "bootstrap", "cli", "core", "replication", "workflows")

# AwsClients methods and the boto3 service each returns.
CLIENT_METHODS = {
    "iot": "iot",
    "iot_data": "iot-data",
    "jobs_data": "iot-jobs-data",
    "dynamodb": "dynamodb",
    "sqs": "sqs",
}
# A parameter or variable with one of these names (or ending in `_<name>`) holds that service's client.
CONVENTIONAL_NAMES = {
    "iot_data": "iot-data",
    "jobs_data": "iot-jobs-data",
    "iot": "iot",
    "dynamodb": "dynamodb",
    "ddb": "dynamodb",
    "sqs": "sqs",
    "route53": "route53",
    "r53": "route53",
    "sts": "sts",
    "cloudwatch": "cloudwatch",
}
# IAM service prefixes that differ from the boto3 service name: shadows and publish are `iot:`
# actions; the device-side jobs API has its own prefix (the controller should not need it).
IAM_PREFIX = {"iot-data": "iot", "iot-jobs-data": "iotjobsdata"}
# API operations whose IAM action has another name (batch and transactional calls are authorized
# by the single-item actions they perform).
OVERRIDES = {
    "dynamodb:TransactWriteItems": (
        "dynamodb:ConditionCheckItem",
        "dynamodb:DeleteItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    ),
    "dynamodb:TransactGetItems": ("dynamodb:GetItem",),
    "sqs:DeleteMessageBatch": ("sqs:DeleteMessage",),
    "sqs:SendMessageBatch": ("sqs:SendMessage",),
    "sqs:ChangeMessageVisibilityBatch": ("sqs:ChangeMessageVisibility",),
}
# Actions the authorization reference lists with a resource type but that are granted on "*" in
# practice (CloudWatch metric reads are not scoped to a resource).
ACCOUNT_WIDE = {"cloudwatch:GetMetricData", "cloudwatch:GetMetricStatistics", "cloudwatch:ListMetrics"}
# Pagers taking the method as a string (core/aws.py; marker_items: the older name of all_items).
PAGER_FUNCTIONS = {"fetch_page", "all_items", "fetch_marker_page", "marker_items"}
# boto3 conveniences whose requests are another operation's.
ALIASES = {("dynamodb", "batch_writer"): "batch_write_item"}
# AwsClients helpers that call AWS themselves.
HELPER_CALLS = {"device_endpoint": ("iot", "DescribeEndpoint")}


@dataclass(frozen=True, order=True)
class Call:
    """One AWS call site: the IAM action it needs and where it is."""

    action: str
    path: str
    line: int

    @property
    def caller(self) -> bool:
        """Made with the worker's own identity, to assume a region's role."""
        return self.action.startswith("sts:")


@cache
def _operations(service: str) -> dict[str, str]:
    """snake_case method name -> API operation name, from botocore's service model."""
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(op): op for op in model.operation_names}


@cache
def _waiters(service: str) -> dict[str, str]:
    """snake_case waiter name -> the snake_case method it polls."""
    try:
        model = botocore.session.get_session().get_waiter_model(service)
    except botocore.exceptions.UnknownServiceError:  # the service has no waiters
        return {}
    return {xform_name(n): xform_name(model.get_waiter(n).operation) for n in model.waiter_names}


@cache
def known_services() -> frozenset[str]:
    """Every service botocore has a model for (so a new one, e.g. cloudwatch, is not missed)."""
    return frozenset(botocore.session.get_session().get_available_services())


def iam_actions_for(service: str, operation: str) -> tuple[str, ...]:
    action = f"{IAM_PREFIX.get(service, service)}:{operation}"
    return OVERRIDES.get(action, (action,))


def _const_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _dotted(node: ast.AST) -> str | None:
    """`name` or `self.attr.attr` as a string key, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _conventional(name: str) -> str | None:
    last = name.rsplit(".", 1)[-1]
    for conv, service in CONVENTIONAL_NAMES.items():
        if last == conv or last.endswith("_" + conv):
            return service
    return None


class _FileScan:
    """Client bindings and AWS calls of one source file (bindings are file-wide: simple and safe)."""

    def __init__(self, tree: ast.AST, path: str):
        self.tree, self.path = tree, path
        self.bindings: dict[str, set[str]] = {}
        self.calls: list[Call] = []
        self.unresolved: list[str] = []

    def client_of(self, node: ast.AST) -> set[str]:
        """The services the expression may be a client of."""
        if isinstance(node, ast.Call):
            return self._client_call(node)
        key = _dotted(node)
        if key is None:
            return set()
        if key in self.bindings:
            return self.bindings[key]
        service = _conventional(key)
        return {service} if service else set()

    def _client_call(self, node: ast.Call) -> set[str]:
        func, args = node.func, node.args
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in CLIENT_METHODS and len(args) == 1:
            return {CLIENT_METHODS[name]}
        first = _const_str(args[0]) if args else None
        if name == "client" and len(args) == 2:  # AwsClients.client(region, "svc")
            service = _const_str(args[1])
            if service is None:
                self.unresolved.append(f"{self.path}:{node.lineno}: client(..., <not a string literal>)")
            return {service} if service in known_services() else set()
        if name in {"client", "resource"} and first in known_services():  # boto3 / session.client("sts")
            return {first}
        if name == "Table":  # a boto3 DynamoDB resource's table: same method names as the client
            return {"dynamodb"}
        service = _conventional(name.lstrip("_"))  # e.g. self._target_iot(region)
        return {service} if service else set()

    def run(self) -> _FileScan:
        for node in ast.walk(self.tree):  # pass 1: names bound to clients
            targets: list[ast.AST] = []
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
                targets, value = [node.target], node.value
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                targets, value = [node.optional_vars], node.context_expr
            for t in targets:
                self._bind(t, value)
        for node in ast.walk(self.tree):  # pass 2: their methods, called or passed on as callables
            if isinstance(node, ast.Call):
                self._call(node)
            elif isinstance(node, ast.Attribute):
                self._record(self.client_of(node.value), node.attr, node)
        return self

    def _bind(self, target: ast.AST, value: ast.AST) -> None:
        """Remember which services a name holds, unpacking `a, b = x, y` pairwise."""
        sequence = ast.Tuple | ast.List
        if (
            isinstance(target, sequence)
            and isinstance(value, sequence)
            and len(target.elts) == len(value.elts)
        ):
            for t, v in zip(target.elts, value.elts, strict=True):
                self._bind(t, v)
            return
        key = _dotted(target)
        found = self.client_of(value) if key else set()
        if found:
            self.bindings.setdefault(key, set()).update(found)

    def _record(self, clients: set[str], method: str | None, node: ast.AST) -> None:
        if method is None:
            return
        for service in clients:
            op = _operations(service).get(ALIASES.get((service, method), method))
            if op is None:
                continue
            for action in iam_actions_for(service, op):
                self.calls.append(Call(action, self.path, node.lineno))

    def _call(self, node: ast.Call) -> None:
        func = node.func
        name = (
            func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        )
        args = node.args
        if name in PAGER_FUNCTIONS or name == "getattr":  # method as a string: f(client, "method", ...)
            self._record_string_method(args, 0, node)
        for i, arg in enumerate(args):  # the pager passed on: retry(fetch_page, client, "method", ...)
            if (arg.attr if isinstance(arg, ast.Attribute) else getattr(arg, "id", None)) in PAGER_FUNCTIONS:
                self._record_string_method(args, i + 1, node)
        if isinstance(func, ast.Attribute) and name in HELPER_CALLS:
            service, op = HELPER_CALLS[name]
            self.calls += [Call(a, self.path, node.lineno) for a in iam_actions_for(service, op)]
        elif isinstance(func, ast.Attribute) and args:  # direct calls are counted as attributes
            clients = self.client_of(func.value)
            if name == "get_paginator":
                self._record(clients, _const_str(args[0]), node)
            elif name == "get_waiter":  # a waiter polls one operation
                for service in clients:
                    self._record({service}, _waiters(service).get(_const_str(args[0]) or ""), node)

    def _record_string_method(self, args: list[ast.expr], i: int, node: ast.AST) -> None:
        if len(args) > i + 1:
            self._record(self.client_of(args[i]), _const_str(args[i + 1]), node)


def scan_source(source: str, path: str = "<string>") -> list[Call]:
    """Every AWS call site in one Python source text."""
    return sorted(_FileScan(ast.parse(source), path).run().calls)


# Actions AWS allows every identity, which no policy can grant or deny.
UNGOVERNED = {"sts:GetCallerIdentity"}


def scan(folders: Iterable[str] = SCANNED, root: Path = ROOT) -> list[Call]:
    return sorted(c for f in _scan_files(folders, root) for c in f.calls if c.action not in UNGOVERNED)


def unresolved(folders: Iterable[str] = SCANNED, root: Path = ROOT) -> list[str]:
    """Client expressions whose service the scan cannot tell (their calls are not counted)."""
    return [u for f in _scan_files(folders, root) for u in f.unresolved]


def _scan_files(folders: Iterable[str], root: Path) -> list[_FileScan]:
    files = [file for folder in folders for file in sorted((root / folder).rglob("*.py"))]
    return [_FileScan(ast.parse(f.read_text()), str(f.relative_to(root))).run() for f in files]


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
        print(f"unknown IAM action {a}: add its real name(s) to OVERRIDES in deploy/iam_actions.py")
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
