"""The DynamoDB tables the controller creates where they are missing (the AWS templates make them
up front): the replication ledger, the claims table, the bootstrap and routing config tables."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from core.errors import error_code, is_already_exists


def hash_key(attribute: str) -> list[dict[str, str]]:
    """The key schema of a table keyed by one string attribute."""
    return [{"AttributeName": attribute, "KeyType": "HASH"}]


def ensure_table(ddb: Any, name: str, keys: list[dict[str, str]], tags: dict[str, str] | None = None) -> bool:
    """Create a pay-per-request table of string keys if missing and wait until it is active; True
    when this call created it."""
    try:
        ddb.create_table(
            TableName=name,
            KeySchema=keys,
            AttributeDefinitions=[{"AttributeName": k["AttributeName"], "AttributeType": "S"} for k in keys],
            BillingMode="PAY_PER_REQUEST",
            **({"Tags": [{"Key": k, "Value": v} for k, v in tags.items()]} if tags else {}),
        )
        created = True
    except ClientError as e:
        if error_code(e) != "ResourceInUseException" and not is_already_exists(e):
            raise
        created = False
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return created
