"""Shadow sync and parity between two regions: one page of things per activity, never one per device.

A page's things are synced by a bounded thread pool inside the activity (the shadow API is the
bottleneck, not the worker), each request paced by the per-region, per-API rate limiter of
AwsClients. The activity heartbeats which things of its page are done, with their tally, so a
retry (after an outage, a throttle or a worker crash) resumes without redoing or recounting them.
A retryable AWS error (outage, throttling, 5xx) stops the page and fails the activity retryably; a
thing-level problem (missing in the target, a device writing faster than the sync can read)
is counted as failed with its reason and the page goes on.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from prometheus_client import Counter, Gauge, Histogram
from pydantic import TypeAdapter
from temporalio import activity

from activities.context import Deployments
from activities.recovery_point import DeviceLoss, RecoveryPoint, RecoveryTally
from activities.shadow_merge import merge_shadow
from activities.shadow_reads import (
    ShadowPacer,
    device_loss,
    get_shadow,
    label,
    list_scope_page,
    named_shadows,
    run_page,
    thing_differences,
)
from core import logs
from core.aws import AwsClients
from core.errors import (
    ACCESS_CODES,
    error_code,
    is_conflict,
    is_not_found,
    is_retryable,
)

SAMPLE = 20  # failures and stale leaves kept by name; the counts are exact
CONFLICT_TRIES = 5  # re-read the target this often when a device writes during the sync
LIST_PAGE = 100  # things per AWS list call

SYNCED = Counter(
    "iotfailover_shadows_synced_total",
    "Shadows synced between regions, by outcome (copied, merged, unchanged, failed)",
    ["deployment", "source", "target", "outcome"],
)
CONFLICTS = Counter(
    "iotfailover_shadow_conflicts_total",
    "Version conflicts while writing a target shadow (a device wrote during the sync); each is retried",
    ["deployment", "source", "target"],
)
STALE = Counter(
    "iotfailover_shadow_stale_leaves_total",
    "Shadow leaves found older (or missing) in the target and carried over from the source",
    ["deployment", "source", "target"],
)
SYNC_LAG = Histogram(
    "iotfailover_shadow_sync_lag_seconds",
    "Age of a source shadow write when the sync carried it to the target",
    ["deployment", "source", "target"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
RECOVERY_POINT = Gauge(
    "iotfailover_recovery_point_seconds",
    "Last measured recovery point of losing the source: span of the writes its standby lacked, per device",
    ["deployment", "source", "target", "quantile"],
)
RECOVERY_POINT_DEVICES = Gauge(
    "iotfailover_recovery_point_devices_lost",
    "Devices of the last measured scope whose standby lacked at least one source shadow write",
    ["deployment", "source", "target"],
)
log = logs.get("activities.shadows")


@dataclass
class ShadowSyncResult:
    """Counts of a sync (a page, a child, a round); shadows are counted one by one, classic and named."""

    things_scanned: int = 0
    shadows_copied: int = 0
    merged: int = 0
    unchanged: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # "thing[#shadow]: reason", first SAMPLE
    stale_leaves: int = 0
    stale_sample: list[str] = field(default_factory=list)  # "thing[#shadow]:section.path", first SAMPLE
    conflicts: int = 0

    def add(self, other: ShadowSyncResult) -> None:
        for name in ("things_scanned", "shadows_copied", "merged", "unchanged", "failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.stale_leaves += other.stale_leaves
        self.conflicts += other.conflicts
        self.failures = (self.failures + other.failures)[:SAMPLE]
        self.stale_sample = (self.stale_sample + other.stale_sample)[:SAMPLE]


@dataclass
class ShadowPageInput:
    deployment: str
    source: str
    target: str
    things: list[str]
    concurrency: int = 8


@dataclass
class ShadowPageProgress:
    """Heartbeat details of a page: which things (by index) are done, and their tally."""

    done: list[int] = field(default_factory=list)
    tally: ShadowSyncResult = field(default_factory=ShadowSyncResult)


@dataclass
class ThingPageInput:
    deployment: str
    region: str
    thing_group: str | None = None  # None: every thing in the region
    token: str | None = None
    limit: int = 1000


@dataclass
class ThingPage:
    things: list[str]
    next_token: str | None


@dataclass
class ShadowParityInput:
    deployment: str
    source: str
    target: str
    thing_group: str | None = None
    concurrency: int = 8


@dataclass
class ShadowParityReport:
    """Parity holds when syncing would change nothing: every source leaf is in the target, or newer."""

    things_checked: int = 0
    differing: int = 0
    sample: list[str] = field(default_factory=list)  # "thing[#shadow]: N stale leaves (first path)"
    ok: bool = True


@dataclass
class RecoveryPointInput:
    deployment: str
    source: str
    target: str  # the standby that would take over
    thing_group: str | None = None  # the scope; None: the deployment's fleet group
    as_of: datetime | None = None  # the moment of the (simulated) loss; None: when the activity starts
    concurrency: int = 8


def _heartbeat(details: Any) -> None:
    if activity.in_activity():
        activity.heartbeat(details)


def _resumed(kind: type) -> Any:
    """The heartbeat details of the previous attempt, as `kind`, or None on a first attempt."""
    if not activity.in_activity() or not activity.info().heartbeat_details:
        return None
    return TypeAdapter(kind).validate_python(activity.info().heartbeat_details[0])


class ShadowActivities:
    def __init__(self, deployments: Deployments):
        self.deployments = deployments

    # ---- listing -------------------------------------------------------------------------
    @activity.defn
    def list_shadow_things(self, inp: ThingPageInput) -> ThingPage:
        """Up to about `limit` thing names of a thing group (recursively) or the whole region."""
        aws = self.deployments.aws(inp.deployment)
        resumed = _resumed(ThingPage)
        things, token = (resumed.things, resumed.next_token) if resumed else ([], inp.token)
        if resumed and (not token or len(things) >= inp.limit):
            return resumed
        while True:
            size = max(1, min(LIST_PAGE, inp.limit - len(things)))
            page, token = list_scope_page(aws, inp.region, inp.thing_group, token, size)
            things = things + page
            _heartbeat(ThingPage(things, token))
            if not token or len(things) >= inp.limit:
                return ThingPage(things, token)

    # ---- sync ----------------------------------------------------------------------------
    @activity.defn
    def sync_shadow_page(self, inp: ShadowPageInput) -> ShadowSyncResult:
        """Sync the classic and every named shadow of each thing of the page, source into target."""
        aws = self.deployments.aws(inp.deployment)
        labels = (inp.deployment, inp.source, inp.target)
        progress = _resumed(ShadowPageProgress) or ShadowPageProgress()

        def one(thing: str) -> ShadowSyncResult:
            return self._sync_thing(aws, labels, thing)

        def done(index: int, result: ShadowSyncResult) -> None:
            progress.done.append(index)
            progress.tally.add(result)
            _heartbeat(progress)

        run_page(
            inp.things,
            set(progress.done),
            inp.concurrency,
            one,
            done,
            lambda: _heartbeat(progress),
            f"syncing shadows to {inp.target}",
        )
        return progress.tally

    def _sync_thing(self, aws: AwsClients, labels: tuple[str, str, str], thing: str) -> ShadowSyncResult:
        source = labels[1]
        result = ShadowSyncResult(things_scanned=1)
        pace = ShadowPacer(aws)
        try:
            names: list[str | None] = [None, *named_shadows(aws, source, thing, pace)]
        except ClientError as e:
            _fail(result, labels, thing, None, e, "listing its named shadows in the source", "source")
            return result
        for name in names:
            try:
                self._sync_shadow(aws, labels, thing, name, pace, result)
            except ClientError as e:
                _fail(result, labels, thing, name, e, "syncing", "target")
        return result

    def _sync_shadow(
        self,
        aws: AwsClients,
        labels: tuple[str, str, str],
        thing: str,
        name: str | None,
        pace: ShadowPacer,
        result: ShadowSyncResult,
    ) -> None:
        source, target = labels[1], labels[2]
        src = get_shadow(aws, source, thing, name, pace)
        for _ in range(CONFLICT_TRIES):
            tgt = get_shadow(aws, target, thing, name, pace)
            merge = merge_shadow(src, tgt)
            if merge.payload is None:
                result.unchanged += 1
                SYNCED.labels(*labels, "unchanged").inc()
                return
            if tgt is not None:
                merge.payload["version"] = tgt["version"]
            try:
                kwargs = {"shadowName": name} if name else {}
                pace.call(
                    target,
                    aws.iot_data(target).update_thing_shadow,
                    thingName=thing,
                    payload=json.dumps(merge.payload).encode(),
                    **kwargs,
                )
            except ClientError as e:
                if not is_conflict(e):
                    raise
                result.conflicts += 1
                CONFLICTS.labels(*labels).inc()
                continue
            if merge.outcome == "copied":
                result.shadows_copied += 1
            else:
                result.merged += 1
            SYNCED.labels(*labels, merge.outcome).inc()
            result.stale_leaves += len(merge.stale)
            STALE.labels(*labels).inc(len(merge.stale))
            room = SAMPLE - len(result.stale_sample)
            result.stale_sample += [f"{label(thing, name)}:{s.path}" for s in merge.stale[:room]]
            now = time.time()
            for s in merge.stale:
                if s.source_timestamp:
                    SYNC_LAG.labels(*labels).observe(max(0.0, now - s.source_timestamp))
            return
        result.failed += 1
        SYNCED.labels(*labels, "failed").inc()
        if len(result.failures) < SAMPLE:
            result.failures.append(
                f"{label(thing, name)}: version conflict {CONFLICT_TRIES} times in a row "
                "(a device keeps writing it); the next sync retries"
            )

    # ---- parity --------------------------------------------------------------------------
    @activity.defn
    def check_shadow_parity(self, inp: ShadowParityInput) -> ShadowParityReport:
        """Which things' shadows a sync would still change; resumes from its heartbeated page token."""
        aws = self.deployments.aws(inp.deployment)
        committed = _resumed(_ParityProgress) or _ParityProgress()
        while True:
            things, next_token = list_scope_page(aws, inp.source, inp.thing_group, committed.token, LIST_PAGE)
            report = ShadowParityReport(**vars(committed.report))

            def one(thing: str) -> list[str]:
                return thing_differences(aws, inp.source, inp.target, thing)

            def done(_: int, differences: list[str], report: ShadowParityReport = report) -> None:
                report.things_checked += 1
                if differences:
                    report.differing += 1
                    report.sample = (report.sample + differences)[:SAMPLE]

            beat = lambda c=committed: _heartbeat(c)  # noqa: E731 (only whole pages are committed)
            run_page(things, set(), inp.concurrency, one, done, beat, f"comparing shadows with {inp.target}")
            committed = _ParityProgress(report, next_token)
            _heartbeat(committed)
            if not next_token:
                report.ok = report.differing == 0
                return report

    # ---- recovery point ------------------------------------------------------------------
    @activity.defn
    def measure_recovery_point(self, inp: RecoveryPointInput) -> RecoveryPoint:
        """What losing the source at `as_of` would lose: per device of the scope, the span of the
        writes its standby lacks (activities/recovery_point.py). Pages through the scope with
        bounded concurrency; each finished page is heartbeated, so a retry resumes after it."""
        aws = self.deployments.aws(inp.deployment)
        scope = inp.thing_group or self.deployments.config(inp.deployment).fleet.thing_group
        as_of = inp.as_of.timestamp() if inp.as_of else time.time()
        committed = _resumed(_RecoveryProgress) or _RecoveryProgress(RecoveryTally(as_of))
        while True:
            things, next_token = list_scope_page(aws, inp.source, scope, committed.token, LIST_PAGE)
            tally = copy.deepcopy(committed.tally)

            def one(thing: str, as_of: float = tally.as_of) -> DeviceLoss:
                return device_loss(aws, inp.source, inp.target, thing, as_of)

            beat = lambda c=committed: _heartbeat(c)  # noqa: E731 (only whole pages are committed)
            doing = f"measuring the recovery point against {inp.target}"

            def add(_: int, loss: DeviceLoss, t: RecoveryTally = tally) -> None:
                t.add(loss)

            run_page(things, set(), inp.concurrency, one, add, beat, doing)
            committed = _RecoveryProgress(tally, next_token)
            _heartbeat(committed)
            if not next_token:
                break
        point = RecoveryPoint.of(committed.tally, inp.source, inp.target, scope)
        labels = (inp.deployment, inp.source, inp.target)
        for quantile, value in (
            ("0.5", point.p50_seconds),
            ("0.95", point.p95_seconds),
            ("1", point.max_seconds),
        ):
            RECOVERY_POINT.labels(*labels, quantile).set(value or 0.0)
        RECOVERY_POINT_DEVICES.labels(*labels).set(point.devices_lost)
        log.info(
            "recovery point measured",
            deployment=inp.deployment,
            source=inp.source,
            target=inp.target,
            scope=scope,
            devices=point.devices,
            devices_lost=point.devices_lost,
            p95_seconds=point.p95_seconds,
            max_seconds=point.max_seconds,
        )
        return point


@dataclass
class _RecoveryProgress:
    tally: RecoveryTally
    token: str | None = None


@dataclass
class _ParityProgress:
    report: ShadowParityReport = field(default_factory=ShadowParityReport)
    token: str | None = None


def _fail(
    result: ShadowSyncResult,
    labels: tuple[str, str, str],
    thing: str,
    name: str | None,
    e: ClientError,
    doing: str,
    side: str,
) -> None:
    """Count a thing-level failure with its reason; re-raise what the whole page must retry or stop on."""
    if is_retryable(e) or error_code(e) in ACCESS_CODES:
        raise e
    if is_not_found(e) and side == "target":
        reason = "thing not found in the target (replicate the registry first)"
    elif is_not_found(e):
        reason = "thing not found in the source (deleted since it was listed)"
    else:
        reason = f"{doing}: {error_code(e)}: {e}"
    result.failed += 1
    SYNCED.labels(*labels, "failed").inc()
    if len(result.failures) < SAMPLE:
        result.failures.append(f"{label(thing, name)}: {reason}")


def activities(deployments: Deployments) -> list[Callable]:
    a = ShadowActivities(deployments)
    return [a.list_shadow_things, a.sync_shadow_page, a.check_shadow_parity, a.measure_recovery_point]
