"""Bootstrap config flips: what devices are told at boot, written to every region's table, fenced.

A cutover flips the deployment default or a scope (a canary or wave thing group); a rollback is a
new flip of the previous config under a higher epoch; finishing or abandoning a scope's cutover
clears the scope with a tombstone at a new epoch (so a late, older write cannot resurrect it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from botocore.exceptions import BotoCoreError, ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.context import Deployments, Keepalive
from activities.fencing import (
    EnsureTablesResult,
    FlipResult,
    ensure_tables,
    flip_regions,
    put_one,
    scan_table,
    unreachable,
)
from core.bootstrap_records import (
    DEFAULT_SCOPE,
    BootstrapRecord,
    MalformedRecord,
    from_item,
    parse_record,
    scope_problem,
    to_item,
)
from core.config import DeploymentConfig
from core.errors import failing_as, is_not_found, to_application_error
from core.metrics import BAD_INPUT

__all__ = ["BootstrapRecord", "EnsureTablesResult", "FlipResult"]


@dataclass
class EnsureTablesInput:
    deployment: str
    regions: list[str] | None = None  # None: every region of the deployment


@dataclass
class FlipBootstrapInput:
    deployment: str
    epoch: int
    primary: str
    order: list[str]  # failover order; the primary is moved to the front
    scope: str = DEFAULT_SCOPE
    reason: str = ""
    retry: int = 5  # connection failures before a device moves to the next endpoint
    regions: list[str] | None = None  # tables to write; None: every region (catch-up: the missed ones)


@dataclass
class ClearBootstrapScopeInput:
    deployment: str
    epoch: int
    scope: str
    reason: str = ""
    regions: list[str] | None = None


@dataclass
class ReadBootstrapInput:
    deployment: str
    region: str
    scope: str = DEFAULT_SCOPE


@dataclass
class CatchUpBootstrapInput:
    deployment: str
    region: str  # a region that missed flips (it was unreachable) and answers again


@dataclass
class ReadFencesInput:
    deployment: str


@dataclass
class FencedRecord:
    """The newest record of one bootstrap scope or routed application across regions."""

    epoch: int
    primary: str  # bootstrap: the primary region; routing: the region that processes the telemetry
    order: list[str] = field(default_factory=list)
    cleared: bool = False


@dataclass
class FenceSnapshot:
    """Config-table fences across regions; `records` is keyed `<scope>` or `routing:<application>`."""

    epoch: int = 0  # the highest epoch any fence holds: a restarted entity continues above it
    records: dict[str, FencedRecord] = field(default_factory=dict)
    lagging: list[str] = field(default_factory=list)  # regions holding an older record than another
    unreachable: list[str] = field(default_factory=list)


@dataclass
class CatchUpResult:
    region: str
    sources: list[str] = field(default_factory=list)  # the regions its records were taken from
    written: list[str] = field(default_factory=list)  # scopes brought up to date
    current: list[str] = field(default_factory=list)  # scopes that already were
    ahead: list[str] = field(default_factory=list)  # scopes where it holds a newer epoch (left alone)


def _bad(source: str, reason: str, message: str) -> ApplicationError:
    BAD_INPUT.labels(source=source, reason=reason).inc()
    return ApplicationError(message, type="InvalidFlip", non_retryable=True)


def _regions(cfg: DeploymentConfig, wanted: list[str] | None, source: str) -> list[str]:
    regions = cfg.region_names if wanted is None else wanted
    unknown = [r for r in regions if r not in cfg.regions]
    if unknown:
        raise _bad(source, "region", f"regions {unknown} are not regions of deployment {cfg.name!r}")
    return regions


def _config_tables(cfg: DeploymentConfig) -> list[tuple[str, str, str, str]]:
    """(kind, table, key attribute, name prefix) of the epoch-fenced config tables."""
    return [
        ("bootstrap", cfg.bootstrap_table, "scope", ""),
        ("routing", cfg.routing_table, "applicationId", "routing:"),
    ]


def _fenced(values: dict) -> FencedRecord:
    order = values.get("regions")
    return FencedRecord(
        epoch=_epoch(values),
        primary=str(values.get("primary") or values.get("region") or ""),
        order=[str(r) for r in order] if isinstance(order, list) else [],
        cleared=values.get("cleared") is True,
    )


def _epoch(values: dict) -> int:
    try:
        return int(values.get("epoch", 0))
    except (TypeError, ValueError):
        return 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class BootstrapActivities:
    def __init__(self, deployments: Deployments):
        self.deployments = deployments

    @activity.defn
    def ensure_bootstrap_tables(self, inp: EnsureTablesInput) -> EnsureTablesResult:
        """Create the bootstrap and routing tables in every (reachable) region; idempotent."""
        cfg = self.deployments.config(inp.deployment)
        tables = {cfg.bootstrap_table: "scope", cfg.routing_table: "applicationId"}
        return ensure_tables(
            self.deployments.aws(inp.deployment), _regions(cfg, inp.regions, "tables"), tables
        )

    @activity.defn
    def flip_bootstrap(self, inp: FlipBootstrapInput) -> FlipResult:
        """Point a scope's devices at `primary` (then `order`) under `epoch`, in every reachable region."""
        cfg = self.deployments.config(inp.deployment)
        record = self._record(cfg, inp)
        return self._write(cfg, record, inp.regions)

    @activity.defn
    def clear_bootstrap_scope(self, inp: ClearBootstrapScopeInput) -> FlipResult:
        """Retire a scope override: its devices fall back to the default (tombstone at a new epoch)."""
        cfg = self.deployments.config(inp.deployment)
        if inp.scope == DEFAULT_SCOPE or scope_problem(inp.scope):
            raise _bad(
                "flip_bootstrap",
                "scope",
                f"cannot clear scope {inp.scope!r}: only group scopes are cleared; the default is flipped",
            )
        record = BootstrapRecord(
            scope=inp.scope,
            epoch=self._epoch(inp.epoch),
            primary=cfg.primary,
            order=[cfg.primary, *cfg.standbys()],
            reason=inp.reason,
            cleared=True,
            deployment=cfg.name,
        )
        return self._write(cfg, record, inp.regions)

    @activity.defn
    def catch_up_bootstrap(self, inp: CatchUpBootstrapInput) -> CatchUpResult:
        """Copy the newest record of every bootstrap scope and routed application from the other
        regions into one that missed flips while it was down.

        The same fencing applies, so the copy never overwrites a newer epoch, and the caller needs
        no memory of the flips the region missed. Routing entries are named `routing:<application>`.
        """
        cfg = self.deployments.config(inp.deployment)
        region = _regions(cfg, [inp.region], "catch_up_bootstrap")[0]
        aws = self.deployments.aws(cfg.name)
        out = CatchUpResult(region=region)
        for kind, table, key, prefix in _config_tables(cfg):
            newest = self._newest(aws, cfg, table, key, exclude=region, sources=out.sources)
            for name, values in sorted(newest.items()):
                activity.heartbeat(f"{prefix}{name}")
                outcome = put_one(aws, kind, region, table, key, values)
                if outcome == "unreachable":
                    raise ApplicationError(
                        f"{region} does not answer yet; will retry", type="RegionUnreachable"
                    )
                {"written": out.written, "unchanged": out.current}.get(outcome, out.ahead).append(
                    f"{prefix}{name}"
                )
        return out

    @activity.defn
    def read_fences(self, inp: ReadFencesInput) -> FenceSnapshot:
        """The newest bootstrap and routing records across the regions that answer, and which
        region lags behind them: what a restarted deployment entity adopts and catches up."""
        cfg = self.deployments.config(inp.deployment)
        aws = self.deployments.aws(cfg.name)
        out = FenceSnapshot()
        seen: dict[str, dict[str, int]] = {}
        for kind, table, key, prefix in _config_tables(cfg):
            for region in cfg.region_names:
                try:
                    items = scan_table(aws, region, table, key)
                except (ClientError, BotoCoreError) as e:
                    if not unreachable(e):
                        raise to_application_error(e, f"reading {table}", region) from e
                    if region not in out.unreachable:
                        out.unreachable.append(region)
                    continue
                for name, values in items.items():
                    rec = _fenced(values)
                    seen.setdefault(region, {})[f"{prefix}{name}"] = rec.epoch
                    newest = out.records.get(f"{prefix}{name}")
                    if newest is None or rec.epoch > newest.epoch:
                        out.records[f"{prefix}{name}"] = rec
                seen.setdefault(region, {})
            activity.heartbeat(kind)
        if len(out.unreachable) == len(cfg.region_names):
            raise ApplicationError(
                f"no region's config tables answer ({', '.join(out.unreachable)}); will retry",
                type="RegionUnreachable",
            )
        out.epoch = max((r.epoch for r in out.records.values()), default=0)
        for region, epochs in seen.items():
            if any(epochs.get(name, -1) < r.epoch for name, r in out.records.items()):
                out.lagging.append(region)
        return out

    def _newest(
        self, aws, cfg: DeploymentConfig, table: str, key: str, exclude: str, sources: list[str]
    ) -> dict[str, dict]:
        newest: dict[str, dict] = {}
        for other in (r for r in cfg.region_names if r != exclude):
            try:
                records = scan_table(aws, other, table, key)
            except (ClientError, BotoCoreError) as e:
                if unreachable(e):
                    continue
                raise to_application_error(e, f"reading {table}", other) from e
            if other not in sources:
                sources.append(other)
            for name, values in records.items():
                if name not in newest or _epoch(values) > _epoch(newest[name]):
                    newest[name] = values
        return newest

    @activity.defn
    def read_bootstrap(self, inp: ReadBootstrapInput) -> BootstrapRecord | None:
        """The record of a scope in one region's table (None: never flipped there)."""
        cfg = self.deployments.config(inp.deployment)
        region = _regions(cfg, [inp.region], "read_bootstrap")[0]
        ddb = self.deployments.aws(inp.deployment).dynamodb(region)
        with failing_as(f"reading bootstrap scope {inp.scope!r}", region):
            try:
                item = ddb.get_item(
                    TableName=cfg.bootstrap_table, Key=to_item({"scope": inp.scope}), ConsistentRead=True
                ).get("Item")
            except ClientError as e:
                if is_not_found(e):
                    return None
                raise
        if item is None:
            return None
        try:
            return parse_record(from_item(item), cfg.region_names)
        except MalformedRecord as e:
            BAD_INPUT.labels(source="bootstrap_table", reason="malformed_record").inc()
            raise ApplicationError(
                f"{e} in {region} (hint: flip the scope again with a higher epoch to overwrite it)",
                type="MalformedRecord",
                non_retryable=True,
            ) from None

    def _epoch(self, epoch: int) -> int:
        if epoch < 1:
            raise _bad("flip_bootstrap", "epoch", f"epoch must be >= 1, got {epoch}")
        return epoch

    def _record(self, cfg: DeploymentConfig, inp: FlipBootstrapInput) -> BootstrapRecord:
        problem = scope_problem(inp.scope)
        if problem:
            raise _bad("flip_bootstrap", "scope", problem)
        order = [inp.primary, *[r for r in inp.order if r != inp.primary]]
        _regions(cfg, order, "flip_bootstrap")  # the primary is always in it, so never empty
        if len(set(order)) != len(order):
            raise _bad("flip_bootstrap", "order", f"order lists a region twice: {inp.order}")
        if inp.retry < 1:
            raise _bad("flip_bootstrap", "retry", f"retry must be >= 1, got {inp.retry}")
        return BootstrapRecord(
            scope=inp.scope,
            epoch=self._epoch(inp.epoch),
            primary=inp.primary,
            order=order,
            retry=inp.retry,
            reason=inp.reason,
            deployment=cfg.name,
        )

    def _write(self, cfg: DeploymentConfig, record: BootstrapRecord, regions: list[str] | None) -> FlipResult:
        record.updated_at = _now()
        targets = _regions(cfg, regions, "flip_bootstrap")
        values = from_item(record.item())
        with Keepalive(record.scope):  # a worker that dies mid-flip is noticed within the heartbeat timeout
            return flip_regions(
                self.deployments.aws(cfg.name), "bootstrap", targets, cfg.bootstrap_table, "scope", values
            )


def activities(deployments: Deployments) -> list:
    a = BootstrapActivities(deployments)
    return [
        a.ensure_bootstrap_tables,
        a.flip_bootstrap,
        a.clear_bootstrap_scope,
        a.catch_up_bootstrap,
        a.read_fences,
        a.read_bootstrap,
    ]
