"""Telemetry routing and the optional DNS flip, fenced by the cutover's epoch like the bootstrap.

Routing ("process data once" in active/active): every region's routing table maps an application
to the one region and stream that processes its telemetry; each region's IoT rule looks its
application up there (deploy/aws/telemetry-routing.yaml) and forwards only what is its own.

DNS: when devices connect through a custom domain (an IoT domain configuration), its Route 53 CNAME
is pointed at the target region's device endpoint. The epoch lives in a TXT record beside it,
changed in the same atomic change batch (DELETE of the exact old TXT + CREATE of the new one), so a
concurrent or older flip fails instead of overwriting a newer one. Route 53 is global, but its
calls need some region's credentials (and, locally, its emulator): the flip goes through the
regions it is given in order and moves on from one that does not answer, so a dead region never
blocks the emergency cutover away from it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.context import Deployments, Keepalive
from activities.fencing import FLIPS, FlipResult, flip_regions, unreachable
from core import logs
from core.bootstrap_records import from_item, to_item
from core.config import DeploymentConfig
from core.errors import error_code, failing_as, is_not_found, to_application_error
from core.metrics import BAD_INPUT

_APPLICATION = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_STREAM = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")
DEFAULT_STREAM_PREFIX = "iotfailover-telemetry-"  # the streams deploy/aws/region.yaml lets rules write
_DNS_TTL = 60
_INSYNC_WAIT_SECONDS = 300
_FENCE_VALUE = re.compile(r'^"?epoch=(\d{1,18}) region=([a-z0-9-]{1,32})"?$')


@dataclass
class FlipRoutingInput:
    deployment: str
    epoch: int
    application: str
    region: str  # the region that processes this application's telemetry from now on
    stream: str = ""  # the stream the IoT rule forwards to; "" is iotfailover-telemetry-<application>
    regions: list[str] | None = None  # tables to write; None: every region


@dataclass
class ReadRoutingInput:
    deployment: str
    region: str
    application: str


@dataclass
class RoutingRecord:
    application: str
    region: str
    stream: str
    epoch: int
    updated_at: str = ""


@dataclass
class FlipDnsInput:
    deployment: str
    epoch: int
    region: str  # the region whose device endpoint the record points to
    # Regions whose credentials (locally: emulator) may carry the Route 53 calls, tried in order;
    # empty: every region of the deployment in config order. Pass the healthy ones first.
    via_regions: list[str] = field(default_factory=list)


@dataclass
class DnsFlipResult:
    epoch: int
    record: str
    target: str
    changed: bool  # False: this epoch and target were already in place (a retry)
    change_id: str = ""
    status: str = ""  # INSYNC once Route 53 has propagated the change


def _bad(source: str, reason: str, message: str) -> ApplicationError:
    BAD_INPUT.labels(source=source, reason=reason).inc()
    return ApplicationError(message, type="InvalidFlip", non_retryable=True)


def _malformed(source: str, message: str) -> ApplicationError:
    """A fence record edited into another shape: no retry makes it readable, and guessing its epoch
    could let an older flip through, so it fails at once and is counted."""
    BAD_INPUT.labels(source=source, reason="malformed_record").inc()
    return ApplicationError(message, type="MalformedRecord", non_retryable=True)


def _check_region(cfg: DeploymentConfig, region: str, source: str) -> None:
    if region not in cfg.regions:
        raise _bad(source, "region", f"{region!r} is not a region of deployment {cfg.name!r}")


class RoutingActivities:
    def __init__(self, deployments: Deployments):
        self.deployments = deployments

    @activity.defn
    def flip_routing(self, inp: FlipRoutingInput) -> FlipResult:
        """Route an application's telemetry to one region and stream, in every reachable region's table."""
        cfg = self.deployments.config(inp.deployment)
        _check_region(cfg, inp.region, "flip_routing")
        for r in inp.regions or []:
            _check_region(cfg, r, "flip_routing")
        if inp.epoch < 1:
            raise _bad("flip_routing", "epoch", f"epoch must be >= 1, got {inp.epoch}")
        if not _APPLICATION.match(inp.application):
            raise _bad("flip_routing", "application", f"application {inp.application!r}: use [A-Za-z0-9_-]")
        stream = inp.stream or f"{DEFAULT_STREAM_PREFIX}{inp.application}"
        if not _STREAM.match(stream):
            raise _bad("flip_routing", "stream", f"stream {stream!r} is not a valid stream name")
        values = {
            "applicationId": inp.application,
            "region": inp.region,
            "stream": stream,
            "epoch": inp.epoch,
            "deployment": cfg.name,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        targets = cfg.region_names if inp.regions is None else inp.regions
        aws = self.deployments.aws(cfg.name)
        with Keepalive(inp.application):
            return flip_regions(aws, "routing", targets, cfg.routing_table, "applicationId", values)

    @activity.defn
    def read_routing(self, inp: ReadRoutingInput) -> RoutingRecord | None:
        """Where an application's telemetry is processed, as one region's table says."""
        cfg = self.deployments.config(inp.deployment)
        _check_region(cfg, inp.region, "read_routing")
        ddb = self.deployments.aws(cfg.name).dynamodb(inp.region)
        with failing_as(f"reading routing of {inp.application!r}", inp.region):
            try:
                item = ddb.get_item(
                    TableName=cfg.routing_table,
                    Key=to_item({"applicationId": inp.application}),
                    ConsistentRead=True,
                ).get("Item")
            except ClientError as e:
                if is_not_found(e):
                    return None
                raise
        if item is None:
            return None
        v = from_item(item)
        epoch = v.get("epoch", 0)
        if not isinstance(epoch, Decimal | int) or isinstance(epoch, bool) or epoch != int(epoch):
            raise _malformed(
                "read_routing",
                f"the routing record of {inp.application!r} in {inp.region} ({cfg.routing_table}) has epoch "
                f"{epoch!r} (hint: a whole number; restore it with a new flip_routing at a higher epoch)",
            )
        return RoutingRecord(
            application=str(v["applicationId"]),
            region=str(v.get("region", "")),
            stream=str(v.get("stream", "")),
            epoch=int(epoch),
            updated_at=str(v.get("updated_at", "")),
        )

    @activity.defn
    def flip_dns(self, inp: FlipDnsInput) -> DnsFlipResult:
        """Point the deployment's custom domain at a region's device endpoint, fenced, then wait INSYNC.

        Heartbeats every few seconds with the change ID once written, so a dead worker is noticed
        quickly and a retry waits for the same change instead of writing again.
        """
        cfg = self.deployments.config(inp.deployment)
        if not (cfg.dns_record and cfg.hosted_zone_id):
            raise _bad(
                "flip_dns",
                "not_configured",
                f"deployment {cfg.name!r} has no dns_record/hosted_zone_id: it does not use a custom domain",
            )
        _check_region(cfg, inp.region, "flip_dns")
        via = inp.via_regions or cfg.region_names
        for r in via:
            _check_region(cfg, r, "flip_dns")
        aws, log = self.deployments.aws(cfg.name), logs.get("routing", deployment=cfg.name)
        record = cfg.dns_record.rstrip(".") + "."
        doing = f"flipping {record} to {inp.region} at epoch {inp.epoch}"
        details = activity.info().heartbeat_details
        with Keepalive(*details[:1]) as beat:
            with failing_as(f"{doing}: reading the device endpoint", inp.region):
                target = aws.device_endpoint(inp.region)
            result = DnsFlipResult(epoch=inp.epoch, record=record, target=target, changed=bool(details))
            result.change_id = str(details[0]) if details else ""
            missed: list[str] = []
            for region in via:
                try:
                    _flip_through(aws.client(region, "route53"), cfg.hosted_zone_id, inp, result, beat)
                    break
                except (ClientError, BotoCoreError) as e:
                    if not unreachable(e):
                        raise _dns_error(e, doing, region) from e
                    missed.append(f"{region}: {error_code(e)}")
                    log.warning("route53 unreachable, trying the next region", region=region, error=str(e))
            else:
                raise ApplicationError(
                    f"{doing}: Route 53 answered through none of {', '.join(missed)}; will retry",
                    type="Route53Unreachable",
                )
        FLIPS.labels(kind="dns", region="route53", outcome="written" if result.changed else "unchanged").inc()
        log.info("dns flipped", via=region, **vars(result))
        return result


def _flip_through(r53: Any, zone: str, inp: FlipDnsInput, result: DnsFlipResult, beat: Keepalive) -> None:
    """Read the fence, write the flip unless it is in place, wait INSYNC: all through one client."""
    fence = f"_iotfailover-epoch.{result.record}"
    if not result.change_id:
        current = _read_fence(r53, zone, fence)
        if current != (inp.epoch, inp.region):
            _refuse_if_stale(current, inp, result.record)
            result.change_id = _write(r53, zone, result.record, fence, result.target, current, inp)
            result.changed = True
            beat.beat(result.change_id)
    result.status = _wait_insync(r53, result.change_id, beat) if result.change_id else "INSYNC"


def _dns_error(e: ClientError | BotoCoreError, doing: str, region: str) -> ApplicationError:
    if error_code(e) == "InvalidChangeBatch" and re.search("not found|already exists", str(e)):
        return ApplicationError(
            f"{doing}: the epoch record changed under this flip (another flip ran); will re-read",
            type="FenceMoved",
        )
    return to_application_error(e, doing, region)


def _txt(epoch: int, region: str) -> str:
    return f'"epoch={epoch} region={region}"'


def _read_fence(r53: Any, zone: str, fence: str) -> tuple[int, str] | None:
    """The (epoch, region) the fence TXT record holds, or None before the first flip."""
    sets = r53.list_resource_record_sets(
        HostedZoneId=zone, StartRecordName=fence, StartRecordType="TXT", MaxItems="1"
    )["ResourceRecordSets"]
    if not sets or sets[0]["Name"].rstrip(".") != fence.rstrip(".") or sets[0]["Type"] != "TXT":
        return None
    values = [r.get("Value", "") for r in sets[0].get("ResourceRecords", [])]
    match = _FENCE_VALUE.match(values[0]) if len(values) == 1 else None
    if match is None:
        raise _malformed(
            "flip_dns",
            f"the DNS fence record {fence} in zone {zone} holds {values!r}, not one "
            '"epoch=N region=R" (hint: set it to the epoch and region of the last DNS flip, '
            "as the deployment's history shows, or delete it if no flip ever ran; then retry)",
        )
    return int(match[1]), match[2]


def _refuse_if_stale(current: tuple[int, str] | None, inp: FlipDnsInput, record: str) -> None:
    if current is not None and current[0] >= inp.epoch:
        FLIPS.labels(kind="dns", region="route53", outcome="refused").inc()
        raise ApplicationError(
            f"DNS flip of {record} to {inp.region} at epoch {inp.epoch} refused: the record is at epoch "
            f"{current[0]} ({current[1]}) (hint: start a new cutover with a higher epoch)",
            {"epoch": current[0], "region": current[1]},
            type="StaleEpoch",
            non_retryable=True,
        )


def _write(
    r53: Any,
    zone: str,
    record: str,
    fence: str,
    target: str,
    current: tuple[int, str] | None,
    inp: FlipDnsInput,
) -> str:
    def rrset(name: str, kind: str, value: str) -> dict:
        return {"Name": name, "Type": kind, "TTL": _DNS_TTL, "ResourceRecords": [{"Value": value}]}

    changes = [{"Action": "CREATE", "ResourceRecordSet": rrset(fence, "TXT", _txt(inp.epoch, inp.region))}]
    if current is not None:
        changes.insert(0, {"Action": "DELETE", "ResourceRecordSet": rrset(fence, "TXT", _txt(*current))})
    changes.append({"Action": "UPSERT", "ResourceRecordSet": rrset(record, "CNAME", target)})
    resp = r53.change_resource_record_sets(
        HostedZoneId=zone,
        ChangeBatch={"Comment": f"iotfailover epoch {inp.epoch}: {inp.region}", "Changes": changes},
    )
    return resp["ChangeInfo"]["Id"]


def _wait_insync(r53: Any, change_id: str, beat: Keepalive) -> str:
    deadline = time.monotonic() + _INSYNC_WAIT_SECONDS
    while True:
        status = r53.get_change(Id=change_id)["ChangeInfo"]["Status"]
        if status == "INSYNC":
            return status
        if time.monotonic() > deadline:
            raise ApplicationError(f"Route 53 change {change_id} still {status}; will check again")
        beat.beat(change_id)
        time.sleep(2)


def activities(deployments: Deployments) -> list:
    a = RoutingActivities(deployments)
    return [a.flip_routing, a.read_routing, a.flip_dns]
