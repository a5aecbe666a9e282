"""One pass over the registry event queues: receive, apply to every other region, delete.

An event is a hint of what changed (replication.events): the Replicator re-reads it from its
source and converges the targets. An event that cannot be applied is parked in its region's
dead-letter queue (replication.dead_letters) before it is deleted; a retryable failure leaves it
queued for SQS to hand out again.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge
from temporalio.exceptions import ApplicationError

from core import logs, metrics
from core.aws import AwsClients
from core.errors import ACCESS_CODES, error_code, failing_as, is_retryable, to_application_error
from replication import certificates as certs
from replication.dead_letters import DeadLetterQueues
from replication.events import EventError, RegistryEvent, parse_event
from replication.pairs import APPLIED, sources
from replication.reconcile import Reconciler
from replication.results import DeadLetter, DrainResult
from replication.sync import Replicator

log = logs.get("replication")

LAG = Gauge(
    "iotfailover_replication_lag_seconds",
    "Age of the newest registry event applied to a target region (0 when its queue is drained)",
    ["deployment", "region"],
)
DEAD_LETTERS = PromCounter(
    "iotfailover_replication_dead_letters_total",
    "Registry events that could not be applied, by reason (access_denied: the controller's role lacks a right)",
    ["deployment", "reason"],
)
DEAD_LETTER_QUEUE = Gauge(
    "iotfailover_replication_dead_letter_queue_messages",
    "Registry events waiting in a region's dead-letter queue (ApproximateNumberOfMessages)",
    ["deployment", "region"],
)


class EventDrain:
    """One drain pass: receive, apply to every other region, delete; bad events become dead letters."""

    def __init__(
        self,
        queues: DeadLetterQueues,
        aws: AwsClients,
        max_seconds: float,
        max_messages: int,
        wait_seconds: int,
        beat: Callable[[], None] = lambda: None,
    ):
        self.queues, self.aws, self.beat = queues, aws, beat
        self.max_seconds, self.max_messages, self.wait_seconds = max_seconds, max_messages, wait_seconds
        self.cfg = aws.cfg
        self.out = DrainResult()
        self.sources = set(sources(self.cfg))
        self.hook = lambda region, kind, op: APPLIED.labels(self.cfg.name, region, kind, op).inc()

    def run(self) -> DrainResult:
        deadline = time.monotonic() + self.max_seconds
        idle: set[str] = set()
        regions = list(self.cfg.region_names)
        while regions and time.monotonic() < deadline and self.out.received < self.max_messages:
            for region in list(regions):
                try:
                    got = self._receive(region, 0 if region not in idle else self.wait_seconds)
                except (ClientError, BotoCoreError) as e:
                    if not is_retryable(e):
                        raise to_application_error(e, "receiving registry events", region) from e
                    regions.remove(region)  # a region that is down does not hold up the others' events
                    self.out.unreachable.append(region)
                    log.warning("registry events unreachable", region=region, error=str(e)[:200])
                    continue
                (idle.add if not got else idle.discard)(region)
                self.beat()
            if regions and len(idle) >= len(regions) and self.out.received:
                break  # drained
        if not regions:
            raise ApplicationError(
                f"no region's registry event queue answered ({', '.join(self.out.unreachable)})"
            )
        for region in self.cfg.region_names:
            self.out.lag_seconds.setdefault(region, 0.0)
            LAG.labels(self.cfg.name, region).set(self.out.lag_seconds[region])
        for region in regions:
            self._count_dead_letters(region)
        return self.out

    def _count_dead_letters(self, region: str) -> None:
        try:
            n = self.queues.depth(region)
        except (ClientError, BotoCoreError) as e:  # the count is for the UI and alerts: never fatal
            log.warning("dead-letter queue not readable", region=region, error=str(e)[:200])
            return
        self.out.dead_letter_queue_depth[region] = n
        DEAD_LETTER_QUEUE.labels(self.cfg.name, region).set(n)

    def _receive(self, region: str, wait: int) -> int:
        """One batch from `region`'s queue; handled messages are deleted even if a later one fails."""
        sqs = self.aws.sqs(region)
        url = self.queues.url(region)
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait).get(
            "Messages", []
        )
        handled: list[dict] = []
        try:
            for m in msgs:
                self.out.received += 1
                self._handle(region, m)
                handled.append(m)
        finally:
            if handled:
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(handled)]
                sqs.delete_message_batch(QueueUrl=url, Entries=entries)
        return len(msgs)

    def _handle(self, region: str, msg: dict) -> None:
        try:
            event = parse_event(msg.get("Body", ""))
            if event.jitr_certificate:
                self._jitr(region, event)
            elif region not in self.sources:
                self.out.ignored += 1  # changes made directly in a standby are not replicated back
            else:
                self._apply(region, event)
        except EventError as e:
            self._dead(region, msg, e.reason, e.detail)
        except (ClientError, BotoCoreError) as e:
            if is_retryable(e):  # left in the queue: SQS hands it out again after its visibility timeout
                raise to_application_error(e, "applying a registry event", region) from e
            # AccessDenied is the controller's role, not the event: parked so it blocks nothing, and
            # counted under its own reason so that it alerts.
            reason = "access_denied" if error_code(e) in ACCESS_CODES else "aws_error"
            self._dead(region, msg, reason, f"{error_code(e)}: {e}")

    def _apply(self, region: str, event: RegistryEvent) -> None:
        failures: list[str] = []
        gone = False
        for target in self.cfg.region_names:
            if target == region:
                continue
            rep = Replicator(self.aws, region, target, on_applied=self.hook)
            for kind, name in event.items:
                gone |= rep.converge_one(kind, name) == "gone"
                if kind == "thing":
                    Reconciler(rep, lambda _p: None).claim(name)  # a claim travels with its thing
            failures += rep.failures
            if event.timestamp_ms:
                lag = max(0.0, time.time() - event.timestamp_ms / 1000)
                self.out.lag_seconds[target] = max(self.out.lag_seconds.get(target, 0.0), lag)
        if failures:
            raise EventError("unappliable", "; ".join(failures)[:300])
        if gone and event.operation not in ("DELETED", "REMOVED"):
            kind, name = event.items[0]
            raise EventError("not_found", f"{kind} {name} no longer exists in {region}")
        self.out.applied += 1

    def _jitr(self, region: str, event: RegistryEvent) -> None:
        thing = certs.onboard_jitr(self.aws, region, event.jitr_certificate or "")
        self.out.jitr += 1
        for target in self.cfg.region_names:
            if target != region:
                rep = Replicator(self.aws, region, target, on_applied=self.hook)
                rep.converge_one("thing", thing)
                if rep.failures:
                    raise EventError("unappliable", "; ".join(rep.failures)[:300])
        self.out.applied += 1

    def _dead(self, region: str, msg: dict, reason: str, detail: str) -> None:
        """Park the message in the region's dead-letter queue; only then may it be deleted."""
        with failing_as("dead-lettering a registry event (it stays queued)", region):
            self.queues.send(region, msg, reason, detail)
        self.out.dead_letter_count += 1
        self.out.dead_letters_by_region[region] = self.out.dead_letters_by_region.get(region, 0) + 1
        DEAD_LETTERS.labels(self.cfg.name, reason).inc()
        if reason in ("bad_json", "unknown_type", "missing_field"):
            metrics.BAD_INPUT.labels(source="registry_event", reason=reason).inc()
        if len(self.out.dead_letters) < 20:
            self.out.dead_letters.append(
                DeadLetter(
                    region,
                    reason,
                    detail[:300],
                    msg.get("MessageId", ""),
                    dt.datetime.now(dt.UTC).isoformat(),
                )
            )
        log.warning(
            "registry event dead-lettered", region=region, reason=reason, detail=detail[:300],
            body=str(msg.get("Body", ""))[:500],
        )  # fmt: skip
