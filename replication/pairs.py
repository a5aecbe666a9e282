"""Replication of one (source, target) pair as a whole: converge it, compare it, count the fleet.

Sources are the regions whose own devices are replicated: the primary in active/passive, every
region in active/active (each the source of what was created there, never of what the replicator
put there).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from botocore.exceptions import ClientError
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

from core.aws import AwsClients, group_member_pages
from core.config import DeploymentConfig
from core.errors import is_not_found
from replication.reconcile import Progress, Reconciler
from replication.records import KINDS
from replication.results import KindCounts, ParityReport, ReconcileResult
from replication.sync import Replicator

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


def sources(cfg: DeploymentConfig) -> list[str]:
    return cfg.region_names if cfg.mode == "active-active" else [cfg.primary]


def registry_parity(
    aws: AwsClients,
    source: str,
    target: str,
    thing_group: str | None = None,
    concurrency: int = 16,
    beat: Callable[[], None] = lambda: None,
) -> ParityReport:
    """Compare a target with a source (the whole registry, or one thing group's devices); `beat`
    is called after every page (an activity heartbeats there)."""
    rep = Replicator(aws, source, target, apply=False)
    Reconciler(rep, lambda _p: beat(), concurrency, scope_group=thing_group).run()
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
    checkpoint: Callable[[Progress], None] = lambda _p: None,
) -> ReconcileResult:
    """Converge `target` to `source` (one thing group's devices when `scope` is set), from `resume`;
    `checkpoint` gets the progress after every page (an activity heartbeats it)."""
    started = time.monotonic()
    hook = lambda region, kind, op: APPLIED.labels(aws.cfg.name, region, kind, op).inc()  # noqa: E731
    rep = Replicator(aws, source, target, apply=True, on_applied=hook)
    done = Reconciler(rep, checkpoint, concurrency, page_size, scope_group=scope).run(resume)
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
