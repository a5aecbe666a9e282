"""Dead letters of the registry event stream: each region's `<events_queue>-dlq` queue.

A message the drain cannot apply is sent there, with why in its message attributes, *before* it is
deleted from the events queue: a crash between the two leaves a duplicate, never a loss. Two other
kinds land there too, as deploy/aws/region.yaml sets up: a message the consumer received
`maxReceiveCount` times without deleting it (the events queue's redrive policy), and an event an
IoT rule could not deliver (its error action's envelope). Nothing here deletes a dead letter
without first putting it back on the events queue (`replay`), which the operator runs once the
cause is fixed (`starter.py replicate dead-letters --replay`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from core import logs
from core.aws import AwsClients

log = logs.get("replication")

MAX_RECEIVES = 5  # the redrive policy's maxReceiveCount, as in deploy/aws/region.yaml
RETENTION_SECONDS = 1_209_600  # 14 days, the most SQS keeps a message (and the template's value)
PEEK_VISIBILITY = 30  # seconds a listed message stays hidden, so one listing sees each once
DETAIL_CHARS = 1000


def dead_letter_queue(events_queue: str) -> str:
    return f"{events_queue}-dlq"


@dataclass
class DeadLetterMessage:
    """One dead letter as it waits in a region's dead-letter queue."""

    region: str  # the region whose events queue it came from
    reason: str
    detail: str
    message_id: str = ""
    at: str = ""  # when it was dead-lettered (or first sent, for a redriven message)
    receives: int = 0
    body: str = ""  # the start of the event itself


@dataclass
class DeadLetterListing:
    region: str
    queue: str
    count: int = 0  # ApproximateNumberOfMessages
    messages: list[DeadLetterMessage] = field(default_factory=list)  # the first `limit`


@dataclass
class ReplayResult:
    region: str
    moved: int = 0  # put back on the events queue, then removed from the dead-letter queue
    left: int = 0  # still waiting in the dead-letter queue after the replay


class DeadLetterQueues:
    """The events queue and its dead-letter queue in every region of one deployment."""

    def __init__(self, aws: AwsClients):
        self.aws = aws
        self.events_queue = aws.cfg.replication.events_queue
        self.dead_queue = dead_letter_queue(self.events_queue)
        self._urls: dict[tuple[str, str], str] = {}

    def url(self, region: str, dead: bool = False) -> str:
        name = self.dead_queue if dead else self.events_queue
        if (region, name) not in self._urls:
            self._urls[(region, name)] = self.aws.sqs(region).get_queue_url(QueueName=name)["QueueUrl"]
        return self._urls[(region, name)]

    def ensure(self, region: str) -> None:
        """Both queues, and the redrive policy from one to the other (the AWS template makes them)."""
        sqs = self.aws.sqs(region)
        dead = sqs.create_queue(
            QueueName=self.dead_queue, Attributes={"MessageRetentionPeriod": str(RETENTION_SECONDS)}
        )["QueueUrl"]
        events = sqs.create_queue(QueueName=self.events_queue)["QueueUrl"]
        self._urls[(region, self.dead_queue)], self._urls[(region, self.events_queue)] = dead, events
        have = sqs.get_queue_attributes(QueueUrl=events, AttributeNames=["RedrivePolicy"])
        if "RedrivePolicy" not in have.get("Attributes", {}):
            arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            policy = {"deadLetterTargetArn": arn, "maxReceiveCount": MAX_RECEIVES}
            sqs.set_queue_attributes(QueueUrl=events, Attributes={"RedrivePolicy": json.dumps(policy)})

    def send(self, region: str, msg: dict, reason: str, detail: str) -> None:
        """Park one events-queue message with why; raises if it could not be parked (keep it then)."""
        attrs = {
            "reason": reason,
            "detail": detail[:DETAIL_CHARS] or "-",
            "region": region,
            "deployment": self.aws.cfg.name,
            "dead-lettered-at": dt.datetime.now(dt.UTC).isoformat(),
            "message-id": msg.get("MessageId") or "-",
        }
        self.aws.sqs(region).send_message(
            QueueUrl=self.url(region, dead=True),
            MessageBody=msg.get("Body") or "(empty)",
            MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in attrs.items()},
        )

    def depth(self, region: str) -> int:
        resp = self.aws.sqs(region).get_queue_attributes(
            QueueUrl=self.url(region, dead=True), AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(resp["Attributes"].get("ApproximateNumberOfMessages", 0))

    def peek(self, region: str, limit: int = 20) -> DeadLetterListing:
        """The count and the first `limit` dead letters, left in the queue (visible again at once)."""
        out = DeadLetterListing(region, self.dead_queue, self.depth(region))
        got = self._receive(region, min(limit, out.count), PEEK_VISIBILITY)
        out.messages = [_describe(region, m) for m in got]
        sqs, url = self.aws.sqs(region), self.url(region, dead=True)
        for i in range(0, len(got), 10):
            entries = [
                {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for j, m in enumerate(got[i : i + 10])
            ]
            sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        return out

    def replay(self, region: str, limit: int | None = None) -> ReplayResult:
        """Move dead letters back onto the events queue: send first, then delete (a duplicate, never a loss).

        At most the number waiting when it starts (or `limit`), so an event that fails again and
        comes back while it runs is not replayed twice.
        """
        sqs, out = self.aws.sqs(region), ReplayResult(region)
        wanted = self.depth(region) if limit is None else limit
        events, dead = self.url(region), self.url(region, dead=True)
        seen: set[str] = set()
        while out.moved < wanted:
            got = [
                m
                for m in self._receive(region, min(10, wanted - out.moved), 60)
                if m["MessageId"] not in seen
            ]
            if not got:
                break
            for m in got:
                seen.add(m["MessageId"])
                sqs.send_message(QueueUrl=events, MessageBody=original_event(m.get("Body", "")))
                sqs.delete_message(QueueUrl=dead, ReceiptHandle=m["ReceiptHandle"])
                out.moved += 1
        out.left = self.depth(region)
        log.info("dead letters replayed", region=region, moved=out.moved, left=out.left)
        return out

    def _receive(self, region: str, limit: int, visibility: int) -> list[dict]:
        """Up to `limit` messages of the dead-letter queue, each once, hidden for `visibility` seconds."""
        sqs, url = self.aws.sqs(region), self.url(region, dead=True)
        found: list[dict] = []
        ids: set[str] = set()
        while len(found) < limit:
            got = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=min(10, limit - len(found)),
                VisibilityTimeout=visibility,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
            new = [m for m in got if m["MessageId"] not in ids]
            if not new:
                return found
            ids |= {m["MessageId"] for m in new}
            found += new
        return found


def original_event(body: str) -> str:
    """The event as the events queue takes it: an IoT rule's error envelope is unwrapped.

    The error action carries the event's payload base64-encoded, without the `topic` the rule's
    `SELECT *, topic() AS topic` adds; it is put back, so the replayed message reads as delivered.
    """
    envelope = _json(body)
    if not isinstance(envelope, dict) or "base64OriginalPayload" not in envelope:
        return body
    try:
        payload = base64.b64decode(envelope["base64OriginalPayload"]).decode()
    except (binascii.Error, UnicodeDecodeError, TypeError):
        return body
    event = _json(payload)
    if isinstance(event, dict) and envelope.get("topic"):
        return json.dumps({**event, "topic": envelope["topic"]})
    return payload


def _describe(region: str, m: dict) -> DeadLetterMessage:
    attrs = {k: v.get("StringValue", "") for k, v in (m.get("MessageAttributes") or {}).items()}
    system = m.get("Attributes") or {}
    body = m.get("Body", "")
    receives = int(system.get("ApproximateReceiveCount", 0) or 0)
    sent = system.get("SentTimestamp")
    at = attrs.get("dead-lettered-at") or (
        dt.datetime.fromtimestamp(int(sent) / 1000, dt.UTC).isoformat() if sent else ""
    )
    if "reason" in attrs:
        reason, detail = attrs["reason"], attrs.get("detail", "")
    elif isinstance(envelope := _json(body), dict) and "base64OriginalPayload" in envelope:
        failures = envelope.get("failures") or [{}]
        reason = "undeliverable"
        detail = f"rule {envelope.get('ruleName', '?')}: {(failures[0] or {}).get('errorMessage', '')}"
    else:
        reason, detail = "redriven", f"received {MAX_RECEIVES} or more times without being applied"
    return DeadLetterMessage(
        attrs.get("region") or region, reason, detail, attrs.get("message-id") or m["MessageId"], at,
        receives, body[:200],
    )  # fmt: skip


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
