"""Registry replication activities: readiness, anti-entropy, scope replication, parity, event stream.

Sources are the regions whose own devices are replicated: the primary in active/passive, every
region in active/active (each the source of what was created there, never of what the replicator
put there). Every activity pages and heartbeats; the reconcile resumes from its last page.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import certificates as certs
from activities.context import Deployments
from activities.ledger import CLAIMS_KEYS, LEDGER_KEYS, ensure_table
from activities.registry_dead_letters import DeadLetterQueues
from activities.registry_events import EventError, RegistryEvent, parse_event
from activities.registry_reconcile import Progress, Reconciler
from activities.registry_records import KINDS
from activities.registry_sync import Replicator
from core import logs, metrics
from core.aws import AwsClients, group_member_pages
from core.config import DeploymentConfig
from core.errors import (
    ACCESS_CODES,
    aws_activity,
    error_code,
    failing_as,
    is_not_found,
    is_retryable,
    to_application_error,
)

log = logs.get("replication")

LAG = Gauge(
    "iotfailover_replication_lag_seconds",
    "Age of the newest registry event applied to a target region (0 when its queue is drained)",
    ["deployment", "region"],
)
APPLIED = PromCounter(
    "iotfailover_replication_applied_total",
    "Registry changes applied to a target region, by kind and operation",
    ["deployment", "region", "kind", "operation"],
)
DRIFT = Gauge(
    "iotfailover_replication_drift",
    "Differences found by the last reconcile or parity check of a target region, by kind",
    ["deployment", "region", "kind"],
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


def sources(cfg: DeploymentConfig) -> list[str]:
    return cfg.region_names if cfg.mode == "active-active" else [cfg.primary]


@dataclass
class RegionPair:
    source: str
    target: str


@dataclass
class ReadyInput:
    deployment: str


@dataclass
class ReadyResult:
    ca_ids: dict[str, str] = field(default_factory=dict)
    pairs: list[RegionPair] = field(default_factory=list)


@dataclass
class ReconcileInput:
    deployment: str
    source: str
    target: str
    concurrency: int = 16
    page_size: int = 250


@dataclass
class ReplicateScopeInput:
    deployment: str
    source: str
    target: str
    thing_group: str
    concurrency: int = 16


@dataclass
class ReconcileResult:
    source: str
    target: str
    applied: dict[str, int] = field(default_factory=dict)  # "kind:operation" -> n
    drift: dict[str, int] = field(default_factory=dict)  # kind -> differences found
    failed: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: str = ""  # "<phase>@<page token>" when a retried attempt continued a checkpoint
    things: int = 0  # the source's own things seen (full reconcile)
    fleet_devices: int = 0  # members of the fleet thing group and its subgroups in the source (full)


@dataclass
class ParityInput:
    deployment: str
    source: str
    target: str
    thing_group: str | None = None


@dataclass
class KindCounts:
    missing: int = 0
    different: int = 0
    extra: int = 0  # replicated by us and gone from the source (the reconciler deletes these)
    foreign: int = 0  # only in the target and not ours: reported, not drift


@dataclass
class ParityReport:
    deployment: str
    source: str
    target: str
    thing_group: str | None = None
    kinds: dict[str, KindCounts] = field(default_factory=dict)
    sample: list[str] = field(default_factory=list)
    ok: bool = True

    def render(self) -> str:
        scope = f" (thing group {self.thing_group})" if self.thing_group else ""
        lines = [f"parity {self.source} -> {self.target}{scope}: {'OK' if self.ok else 'DRIFT'}"]
        for kind, c in self.kinds.items():
            lines.append(
                f"  {kind:<12} missing {c.missing:<5} different {c.different:<5} extra {c.extra:<5} "
                f"foreign {c.foreign}"
            )
        lines += [f"  - {s}" for s in self.sample]
        return "\n".join(lines)


@dataclass
class DrainInput:
    deployment: str
    max_seconds: float = 5.0
    max_messages: int = 500
    wait_seconds: int = 1


@dataclass
class DeadLetter:
    region: str
    reason: str
    detail: str
    message_id: str = ""
    at: str = ""


@dataclass
class DrainResult:
    received: int = 0
    applied: int = 0
    ignored: int = 0
    jitr: int = 0
    dead_letter_count: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)  # the first few, with reasons
    lag_seconds: dict[str, float] = field(default_factory=dict)  # target region -> lag
    unreachable: list[str] = field(default_factory=list)  # regions whose queue did not answer
    dead_letters_by_region: dict[str, int] = field(default_factory=dict)  # queue region -> this drain's
    dead_letter_queue_depth: dict[str, int] = field(default_factory=dict)  # region -> waiting in its DLQ


def registry_parity(
    aws: AwsClients, source: str, target: str, thing_group: str | None = None, concurrency: int = 16
) -> ParityReport:
    """Compare a target with a source (the whole registry, or one thing group's devices)."""
    rep = Replicator(aws, source, target, apply=False)
    Reconciler(rep, lambda _p: _beat(), concurrency, scope_group=thing_group).run()
    report = ParityReport(aws.cfg.name, source, target, thing_group)
    for kind in KINDS:
        d = rep.diffs.get(kind)
        if d is None:
            continue
        report.kinds[kind] = KindCounts(d.missing, d.different, d.extra, d.foreign)
        report.sample += [f"{kind} {s}" for s in d.sample][: max(0, 20 - len(report.sample))]
        DRIFT.labels(aws.cfg.name, target, kind).set(d.drift)
    report.ok = not any(c.missing or c.different or c.extra for c in report.kinds.values())
    return report


def reconcile_pair(
    aws: AwsClients,
    source: str,
    target: str,
    scope: str | None = None,
    concurrency: int = 16,
    page_size: int = 250,
    resume: Progress | None = None,
) -> ReconcileResult:
    """Converge `target` to `source` (one thing group's devices when `scope` is set)."""
    started = time.monotonic()
    hook = lambda region, kind, op: APPLIED.labels(aws.cfg.name, region, kind, op).inc()  # noqa: E731
    rep = Replicator(aws, source, target, apply=True, on_applied=hook)
    done = Reconciler(rep, _beat, concurrency, page_size, scope_group=scope).run(resume)
    for kind, n in done.drift.items():
        DRIFT.labels(aws.cfg.name, target, kind).set(n)
    return ReconcileResult(
        source,
        target,
        done.applied,
        done.drift,
        dict(rep.failed),
        rep.failures,
        round(time.monotonic() - started, 3),
        f"{resume.phase}@{resume.token or ''}" if resume else "",
        done.things,
        0 if scope else fleet_size(aws, source),
    )


def fleet_size(aws: AwsClients, region: str) -> int:
    """Members of the fleet thing group, its subgroups included, in `region` (0 if it has no such group)."""
    try:
        return sum(len(page) for page in group_member_pages(aws.iot(region), aws.cfg.fleet.thing_group, 250))
    except ClientError as e:
        if is_not_found(e):
            return 0
        raise


def _prepare(aws: AwsClients, region: str, with_ca: bool) -> str:
    """The ledger and claims tables in `region` (created if missing), and the CA when asked; its ID."""
    cfg = aws.cfg
    with failing_as("preparing replication", region):
        ensure_table(aws.dynamodb(region), cfg.replication.ledger_table, LEDGER_KEYS)
        ensure_table(aws.dynamodb(region), cfg.claims_table, CLAIMS_KEYS)
        return certs.register_ca(aws, region) if with_ca else ""


def _beat(details: Any = None) -> None:
    if activity.in_activity():
        activity.heartbeat(*([details] if details is not None else []))


def _resume_point() -> Progress | None:
    details = activity.info().heartbeat_details if activity.in_activity() else None
    if not details:
        return None
    d = details[0]
    return d if isinstance(d, Progress) else Progress(**d)


class RegistryActivities:
    def __init__(self, deployments: Deployments):
        self.deployments = deployments
        self._queues: dict[str, DeadLetterQueues] = {}

    def queues(self, aws: AwsClients) -> DeadLetterQueues:
        """The deployment's event and dead-letter queues (their URLs looked up once)."""
        if aws.cfg.name not in self._queues:
            self._queues[aws.cfg.name] = DeadLetterQueues(aws)
        return self._queues[aws.cfg.name]

    @activity.defn
    def ensure_replication_ready(self, inp: ReadyInput) -> ReadyResult:
        """Event and dead-letter queues, ledger and claims tables in every region, the CA everywhere."""
        aws = self.deployments.aws(inp.deployment)
        cfg = aws.cfg
        out = ReadyResult()
        for region in cfg.region_names:
            with failing_as("creating the registry event queues", region):
                self.queues(aws).ensure(region)
            out.ca_ids[region] = _prepare(aws, region, with_ca=True)
        out.pairs = [RegionPair(s, t) for s in sources(cfg) for t in cfg.region_names if t != s]
        return out

    def _reconcile(self, inp: Any, scope: str | None, page_size: int = 250) -> ReconcileResult:
        aws = self.deployments.aws(inp.deployment)
        for region in (inp.source, inp.target):  # callers other than the workflow (cutover preflight)
            _prepare(aws, region, with_ca=scope is not None and region == inp.target)
        resume = _resume_point()
        if resume:
            log.info("reconcile resuming", source=inp.source, target=inp.target, phase=resume.phase)
        with failing_as(f"reconciling {inp.source} -> {inp.target}", inp.target):
            return reconcile_pair(aws, inp.source, inp.target, scope, inp.concurrency, page_size, resume)

    @activity.defn
    def reconcile_registry(self, inp: ReconcileInput) -> ReconcileResult:
        """Full anti-entropy of one target against one source; resumes from its last heartbeat."""
        return self._reconcile(inp, None, inp.page_size)

    @activity.defn
    def replicate_scope(self, inp: ReplicateScopeInput) -> ReconcileResult:
        """Make a thing group's devices (CA, certificates, things, policies, attachments) exist in target."""
        return self._reconcile(inp, inp.thing_group)

    @activity.defn
    @aws_activity(lambda inp: ("checking registry parity", inp.target))
    def check_registry_parity(self, inp: ParityInput) -> ParityReport:
        """Differences between a target and a source, per kind, with a sample (nothing is changed)."""
        return registry_parity(self.deployments.aws(inp.deployment), inp.source, inp.target, inp.thing_group)

    @activity.defn
    def drain_registry_events(self, inp: DrainInput) -> DrainResult:
        """Apply the events waiting in every region's queue for up to `max_seconds`."""
        aws = self.deployments.aws(inp.deployment)
        return EventDrain(self.queues(aws), aws, inp).run()


class EventDrain:
    """One drain pass: receive, apply to every other region, delete; bad events become dead letters."""

    def __init__(self, queues: DeadLetterQueues, aws: AwsClients, inp: DrainInput):
        self.queues, self.aws, self.inp = queues, aws, inp
        self.cfg = aws.cfg
        self.out = DrainResult()
        self.sources = set(sources(self.cfg))
        self.hook = lambda region, kind, op: APPLIED.labels(self.cfg.name, region, kind, op).inc()

    def run(self) -> DrainResult:
        deadline = time.monotonic() + self.inp.max_seconds
        idle: set[str] = set()
        regions = list(self.cfg.region_names)
        while regions and time.monotonic() < deadline and self.out.received < self.inp.max_messages:
            for region in list(regions):
                try:
                    got = self._receive(region, 0 if region not in idle else self.inp.wait_seconds)
                except (ClientError, BotoCoreError) as e:
                    if not is_retryable(e):
                        raise to_application_error(e, "receiving registry events", region) from e
                    regions.remove(region)  # a region that is down does not hold up the others' events
                    self.out.unreachable.append(region)
                    log.warning("registry events unreachable", region=region, error=str(e)[:200])
                    continue
                (idle.add if not got else idle.discard)(region)
                _beat()
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
                    Reconciler(rep, _beat).claim(name)  # a claim travels with its thing
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


def activities(deployments: Deployments) -> list:
    a = RegistryActivities(deployments)
    return [
        a.ensure_replication_ready,
        a.reconcile_registry,
        a.replicate_scope,
        a.check_registry_parity,
        a.drain_registry_events,
    ]
