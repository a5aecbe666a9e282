"""Registry replication activities: readiness, anti-entropy, scope replication, parity, event stream.

A thin front of the engine in replication/: each activity looks up its deployment, prepares the
tables it writes, heartbeats the engine's progress and resumes from it. The engine's result types
are re-exported here, where workflows/ and cli/ import them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from temporalio import activity

from activities.context import Deployments
from core import logs
from core.aws import AwsClients
from core.errors import aws_activity, failing_as
from replication import certificates as certs
from replication.dead_letters import DeadLetterQueues
from replication.drain import EventDrain
from replication.ledger import CLAIMS_KEYS, LEDGER_KEYS, ensure_table
from replication.pairs import fleet_size, reconcile_pair, registry_parity, sources
from replication.reconcile import Progress
from replication.results import DeadLetter, DrainResult, KindCounts, ParityReport, ReconcileResult

__all__ = [  # re-exported: the engine's results and entry points, imported from here by workflows/ and cli/
    "DeadLetter",
    "DrainResult",
    "KindCounts",
    "ParityReport",
    "ReconcileResult",
    "fleet_size",
    "reconcile_pair",
    "registry_parity",
    "sources",
]

log = logs.get("replication")


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
class ParityInput:
    deployment: str
    source: str
    target: str
    thing_group: str | None = None


@dataclass
class DrainInput:
    deployment: str
    max_seconds: float = 5.0
    max_messages: int = 500
    wait_seconds: int = 1


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
            return reconcile_pair(
                aws, inp.source, inp.target, scope, inp.concurrency, page_size, resume, checkpoint=_beat
            )

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
        aws = self.deployments.aws(inp.deployment)
        return registry_parity(aws, inp.source, inp.target, inp.thing_group, beat=_beat)

    @activity.defn
    def drain_registry_events(self, inp: DrainInput) -> DrainResult:
        """Apply the events waiting in every region's queue for up to `max_seconds`."""
        aws = self.deployments.aws(inp.deployment)
        drain = EventDrain(self.queues(aws), aws, inp.max_seconds, inp.max_messages, inp.wait_seconds, _beat)
        return drain.run()


def activities(deployments: Deployments) -> list:
    a = RegistryActivities(deployments)
    return [
        a.ensure_replication_ready,
        a.reconcile_registry,
        a.replicate_scope,
        a.check_registry_parity,
        a.drain_registry_events,
    ]
