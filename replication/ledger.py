"""The replication ledger: per region, what this deployment's replicator created there.

Every kind (things, certificates, policies, thing types, thing groups) is recorded here, in a
DynamoDB table per region (cfg.replication.ledger_table; key `scope` = "<deployment>#<kind>", sort
key `name`), so replicas carry nothing the customer did not put on the source: a thing's
attributes are its source's (AWS allows only 3 on a thing without a type). The record is written
*before* the create, and only when the resource was absent, so a crash between the two never
leaves an unrecorded resource of ours; a record without its resource is harmless (deleting a
missing resource is a no-op). The deletion rule (records.may_delete) trusts only this
record (and, once, the `replicatedBy` marker of things replicated before the ledger held them).
"""

from __future__ import annotations

import datetime as dt

from botocore.exceptions import ClientError

from core.aws import AwsClients
from core.errors import is_not_found
from core.tables import ensure_table, hash_key

LEDGER_KEYS = [
    {"AttributeName": "scope", "KeyType": "HASH"},
    {"AttributeName": "name", "KeyType": "RANGE"},
]
CLAIMS_KEYS = hash_key("thingName")
__all__ = ["CLAIMS_KEYS", "LEDGER_KEYS", "Ledger", "ensure_table"]  # ensure_table: bench/ takes it here


class Ledger:
    def __init__(self, aws: AwsClients):
        self.aws = aws
        self.table = aws.cfg.replication.ledger_table
        self.deployment = aws.cfg.name

    def _key(self, kind: str, name: str) -> dict:
        return {"scope": {"S": f"{self.deployment}#{kind}"}, "name": {"S": name}}

    def record(self, region: str, kind: str, name: str, source: str) -> bool:
        """Record `name` as ours in `region`; True when it was recorded already (an earlier attempt)."""
        item = {
            **self._key(kind, name),
            "source": {"S": source},
            "at": {"S": dt.datetime.now(dt.UTC).isoformat()},
        }
        resp = self.aws.dynamodb(region).put_item(TableName=self.table, Item=item, ReturnValues="ALL_OLD")
        return "Attributes" in resp

    def forget(self, region: str, kind: str, name: str) -> None:
        self.aws.dynamodb(region).delete_item(TableName=self.table, Key=self._key(kind, name))

    def has(self, region: str, kind: str, name: str) -> bool:
        try:
            resp = self.aws.dynamodb(region).get_item(
                TableName=self.table, Key=self._key(kind, name), ConsistentRead=True
            )
        except ClientError as e:
            if is_not_found(e):  # no ledger in this region: nothing was replicated into it
                return False
            raise
        return "Item" in resp

    def names(self, region: str, kind: str) -> set[str]:
        """Every name of `kind` recorded in `region` (paged query)."""
        pages = (
            self.aws.dynamodb(region)
            .get_paginator("query")
            .paginate(
                TableName=self.table,
                KeyConditionExpression="#s = :s",
                ExpressionAttributeNames={"#s": "scope", "#n": "name"},
                ExpressionAttributeValues={":s": {"S": f"{self.deployment}#{kind}"}},
                ProjectionExpression="#n",
            )
        )
        try:
            return {i["name"]["S"] for page in pages for i in page["Items"]}
        except ClientError as e:
            if is_not_found(e):  # no ledger in this region: nothing was replicated into it
                return set()
            raise
