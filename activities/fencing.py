"""Epoch-fenced writes of per-region config tables (bootstrap and telemetry routing).

Every region holds its own copy of a table, so a device or an IoT rule reads its answer locally
and a regional outage takes out only that region's copy. A write is a conditional put
(`attribute_not_exists(key) OR epoch < :epoch`): an older or equal epoch never overwrites a newer
one; replaying the same epoch with the same content is success (activity retries); a region that
does not answer is reported as unreachable so the caller catches it up later with the same input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter
from temporalio.exceptions import ApplicationError

from core import logs
from core.aws import AwsClients
from core.bootstrap_records import from_item, to_item
from core.errors import is_conflict, is_not_found, is_retryable, is_throttle, to_application_error
from core.tables import ensure_table, hash_key

FLIPS = Counter(
    "iotfailover_config_flips_total",
    "Fenced config writes by table kind, region and outcome (written, unchanged, refused, unreachable)",
    ["kind", "region", "outcome"],
)
# Not part of what a write means: a replay (a retry, or a catch-up by another caller) of the same
# epoch that differs only in these is the same write.
_VOLATILE = {"updated_at", "reason", "deployment"}


@dataclass
class FlipResult:
    """Where a fenced write landed. `refused` is only non-empty in a StaleEpoch error's details."""

    epoch: int
    written: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@dataclass
class EnsureTablesResult:
    created: list[str] = field(default_factory=list)  # "<region>/<table>"
    existing: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)  # regions


def _ensure_table(aws: AwsClients, region: str, table: str, key: str) -> bool:
    return ensure_table(aws.dynamodb(region), table, hash_key(key), tags={"iotfailover": aws.cfg.name})


def ensure_tables(aws: AwsClients, regions: list[str], tables: dict[str, str]) -> EnsureTablesResult:
    """Every `tables` (name -> key attribute) in every region; regions that are down are listed."""
    out = EnsureTablesResult()
    for region in regions:
        try:
            for table, key in tables.items():
                (out.created if _ensure_table(aws, region, table, key) else out.existing).append(
                    f"{region}/{table}"
                )
        except (ClientError, BotoCoreError) as e:
            if not unreachable(e):
                raise to_application_error(e, f"creating config tables {list(tables)}", region) from e
            out.unreachable.append(region)
    return out


def scan_table(aws: AwsClients, region: str, table: str, key: str) -> dict[str, dict[str, Any]]:
    """Every item of one region's config table by its key (one item per scope or application, so
    the table stays tiny); a missing table reads as empty."""
    items: dict[str, dict[str, Any]] = {}
    try:
        for page in aws.dynamodb(region).get_paginator("scan").paginate(TableName=table):
            for item in page.get("Items", []):
                values = from_item(item)
                items[str(values.get(key))] = values
    except ClientError as e:
        if not is_not_found(e):
            raise
    return items


def unreachable(exc: BaseException) -> bool:
    """A region that does not answer (connection error, 5xx, emulator outage) after botocore's tries."""
    return is_retryable(exc) and not is_throttle(exc)


def fenced_put(aws: AwsClients, region: str, table: str, key: str, values: dict[str, Any]) -> str:
    """One conditional write: 'written', 'unchanged' (same epoch, same content) or 'refused'."""
    ddb = aws.dynamodb(region)
    try:
        ddb.put_item(
            TableName=table,
            Item=to_item(values),
            ConditionExpression="attribute_not_exists(#k) OR #e < :e",
            ExpressionAttributeNames={"#k": key, "#e": "epoch"},
            ExpressionAttributeValues={":e": {"N": str(values["epoch"])}},
        )
        return "written"
    except ClientError as e:
        if not is_conflict(e):
            raise
    current = ddb.get_item(TableName=table, Key=to_item({key: values[key]}), ConsistentRead=True).get("Item")
    wanted = from_item(to_item(values))
    if current and _content(from_item(current)) == _content(wanted):
        return "unchanged"
    return "refused"


def _content(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in _VOLATILE}


def flip_regions(
    aws: AwsClients, kind: str, regions: list[str], table: str, key: str, values: dict[str, Any]
) -> FlipResult:
    """Write `values` to `table` in each region; a missing table is created on the way.

    Raises a non-retryable ApplicationError of type StaleEpoch (details: the FlipResult) when any
    region already holds a newer epoch, or the same epoch with other content: the caller's cutover
    has been superseded and must not carry on as if its write had landed.
    """
    epoch = int(values["epoch"])
    log = logs.get("fencing", deployment=aws.cfg.name, kind=kind, epoch=epoch)
    result = FlipResult(epoch=epoch)
    for region in regions:
        outcome = put_one(aws, kind, region, table, key, values)
        log.info("config flip", region=region, outcome=outcome, key=values[key])
        {"written": result.written, "unchanged": result.written, "refused": result.refused}.get(
            outcome, result.unreachable
        ).append(region)
    if result.refused:
        raise ApplicationError(
            f"{kind} write of {key}={values[key]!r} at epoch {epoch} refused in "
            f"{', '.join(result.refused)}: that table already holds a newer epoch (or this epoch with other "
            "content); another cutover superseded this one (hint: read the current record and start a new "
            "cutover with a higher epoch)",
            asdict(result),
            type="StaleEpoch",
            non_retryable=True,
        )
    return result


def put_one(aws: AwsClients, kind: str, region: str, table: str, key: str, values: dict[str, Any]) -> str:
    """fenced_put, creating a missing table, with 'unreachable' for a region that does not answer."""
    outcome = _put_one(aws, region, table, key, values)
    FLIPS.labels(kind=kind, region=region, outcome=outcome).inc()
    return outcome


def _put_one(aws: AwsClients, region: str, table: str, key: str, values: dict[str, Any]) -> str:
    doing = f"writing {table}[{values[key]}] at epoch {values['epoch']}"
    try:
        try:
            return fenced_put(aws, region, table, key, values)
        except ClientError as e:
            if not is_not_found(e):
                raise
            _ensure_table(aws, region, table, key)
            return fenced_put(aws, region, table, key, values)
    except (ClientError, BotoCoreError) as e:
        if unreachable(e):
            return "unreachable"
        raise to_application_error(e, doing, region) from e
