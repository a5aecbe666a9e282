"""Which AWS actions the code calls: every call made on a boto3 client from `core.aws.AwsClients`
in the scanned folders, read with `ast`, mapped to its API name through botocore's service model
and prefixed with the IAM service prefix (deploy/iam_actions.py places them in the templates).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
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
