"""Region health probes, and the one rule that turns their results into a region's health.

Probes measure, `score_region` judges. Each probe is its own activity (own timeout, run
concurrently by RegionHealthWorkflow) and returns a ProbeResult instead of raising: a failing region
is data, not an error. Probes use their own client set with a single attempt, no client-side
backoff and a read timeout of the probe timeout, so a probe measures one try of the region itself
and the health interval is its retry. Throttling answers mean the service is up but pushing back:
"degraded", never "failed". The one exception is the bootstrap health endpoint: it is public, so its
429s may be anyone's flood and count as "ok" (see `_bootstrap`).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter, Histogram
from temporalio import activity

from activities.context import Deployments
from core import logs
from core.aws import AwsClients, fetch_page
from core.config import HealthPolicy
from core.device_report import DeviceReport
from core.errors import error_code, is_already_exists, is_not_found, is_throttle
from core.health_scoring import DEGRADED, FAILED, OK, SKIPPED, ProbeResult

PROBE_SECONDS = Histogram(
    "iotfailover_probe_seconds",
    "Duration of one region health probe",
    ["deployment", "region", "probe"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
PROBE_RESULTS = Counter(
    "iotfailover_probe_results_total",
    "Region health probe outcomes",
    ["deployment", "region", "probe", "status"],
)
BOOTSTRAP_THROTTLED = Counter(
    "iotfailover_bootstrap_probe_throttled_total",
    "Bootstrap health checks answered 429 (counted ok: the public endpoint is up and shedding load)",
    ["deployment", "region"],
)


@dataclass
class ProbeInput:
    """One probe of one region; the policy gives its timeout, the canary thing and sample sizes."""

    deployment: str
    region: str
    policy: HealthPolicy


class _Watch:
    """Times a probe's AWS calls (keeping the slowest, in ms) against the probe's time budget.

    The budget is most of the activity's timeout: a probe that runs out of it reports what it
    measured instead of being cut off, so latency below the timeout reads as slow, not as down.
    """

    def __init__(self, policy: HealthPolicy):
        self.ms = 0.0
        self._deadline = time.monotonic() + 0.8 * policy.probe_timeout_seconds

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.ms = max(self.ms, (time.perf_counter() - t0) * 1000)

    def left(self) -> float:
        """Seconds left in the budget."""
        return self._deadline - time.monotonic()

    def room_for_another(self) -> bool:
        return self.left() > self.ms / 1000


def _from_error(probe: str, exc: BaseException) -> ProbeResult:
    if is_throttle(exc):
        return ProbeResult(probe, DEGRADED, None, f"throttled ({error_code(exc)})")
    return ProbeResult(probe, FAILED, None, f"{error_code(exc)}: {str(exc)[:200]}")


class HealthProbes:
    """The probe activities; one probe client set per deployment (single attempt, short timeout)."""

    def __init__(self, deployments: Deployments):
        self.deployments = deployments
        self._clients: dict[str, AwsClients] = {}
        self._lock = threading.Lock()

    def activities(self) -> list[Callable]:
        return [
            self.probe_control_plane,
            self.probe_data_plane,
            self.probe_bootstrap,
            self.probe_heartbeats,
            self.probe_cloudwatch,
        ]

    @activity.defn(name="probe_control_plane")
    def probe_control_plane(self, inp: ProbeInput) -> ProbeResult:
        """DescribeEndpoint and a one-item ListThings: the registry answers, and how fast."""
        return self._run("control_plane", inp, self._control_plane)

    @activity.defn(name="probe_data_plane")
    def probe_data_plane(self, inp: ProbeInput) -> ProbeResult:
        """Write the canary thing's classic shadow and read it back: the write must be visible."""
        return self._run("data_plane", inp, self._data_plane)

    @activity.defn(name="probe_bootstrap")
    def probe_bootstrap(self, inp: ProbeInput) -> ProbeResult:
        """GET <bootstrap_url>/healthz of the region's bootstrap service, when it has one."""
        return self._run("bootstrap", inp, self._bootstrap)

    @activity.defn(name="probe_heartbeats")
    def probe_heartbeats(self, inp: ProbeInput) -> ProbeResult:
        """Share of sampled fleet devices connected here whose connectivity report is fresh."""
        return self._run("heartbeats", inp, self._heartbeats)

    @activity.defn(name="probe_cloudwatch")
    def probe_cloudwatch(self, inp: ProbeInput) -> ProbeResult:
        """In AWS, IoT's own connect and publish success versus server errors (skipped locally)."""
        return self._run("cloudwatch", inp, self._cloudwatch)

    def _probe_clients(self, inp: ProbeInput) -> AwsClients:
        with self._lock:
            c = self._clients.get(inp.deployment)
            if c is None:
                cfg = self.deployments.config(inp.deployment)
                c = self._clients[inp.deployment] = AwsClients(
                    cfg,
                    max_pool_connections=16,
                    max_attempts=1,
                    read_timeout=inp.policy.probe_timeout_seconds,
                    retry_mode="standard",  # no client-side slowdown after throttles: measure the region
                )
            return c

    def _run(
        self, probe: str, inp: ProbeInput, fn: Callable[[ProbeInput, AwsClients], ProbeResult]
    ) -> ProbeResult:
        clients = self._probe_clients(inp)
        t0 = time.perf_counter()
        try:
            result = fn(inp, clients)
        except (ClientError, BotoCoreError, OSError) as e:
            result = _from_error(probe, e)
        PROBE_SECONDS.labels(inp.deployment, inp.region, probe).observe(time.perf_counter() - t0)
        PROBE_RESULTS.labels(inp.deployment, inp.region, probe, result.status).inc()
        if result.status in (DEGRADED, FAILED):
            logs.get("health", deployment=inp.deployment, region=inp.region).info(
                "probe not ok", probe=probe, status=result.status, detail=result.detail
            )
        return result

    def _control_plane(self, inp: ProbeInput, clients: AwsClients) -> ProbeResult:
        iot, watch = clients.iot(inp.region), _Watch(inp.policy)
        watch.call(iot.describe_endpoint, endpointType="iot:Data-ATS")
        if not watch.room_for_another():
            return ProbeResult(
                "control_plane", OK, round(watch.ms, 1), "DescribeEndpoint (ListThings: no time left)"
            )
        watch.call(fetch_page, iot, "list_things", "things", page_size=1)
        return ProbeResult("control_plane", OK, round(watch.ms, 1), "DescribeEndpoint + ListThings")

    def _data_plane(self, inp: ProbeInput, clients: AwsClients) -> ProbeResult:
        data, watch, name = clients.iot_data(inp.region), _Watch(inp.policy), inp.policy.canary_thing
        token = uuid.uuid4().hex
        payload = json.dumps({"state": {"reported": {"probe": {"token": token, "at": int(time.time())}}}})
        try:
            written = watch.call(data.update_thing_shadow, thingName=name, payload=payload)
        except ClientError as e:
            if not is_not_found(e):
                raise
            self._create_canary(clients, inp.region, name)
            written = watch.call(data.update_thing_shadow, thingName=name, payload=payload)
        wrote = json.loads(written["payload"].read())["version"]
        if not watch.room_for_another():
            return ProbeResult(
                "data_plane", OK, round(watch.ms, 1), f"wrote version {wrote} (read-back: no time left)"
            )
        doc = json.loads(watch.call(data.get_thing_shadow, thingName=name)["payload"].read())
        seen = doc.get("state", {}).get("reported", {}).get("probe", {}).get("token")
        if seen != token or doc.get("version", 0) < wrote:
            return ProbeResult(
                "data_plane",
                FAILED,
                round(watch.ms, 1),
                f"wrote version {wrote} but read back version {doc.get('version')} without it",
            )
        return ProbeResult("data_plane", OK, round(watch.ms, 1), f"wrote version {wrote}, read it back")

    @staticmethod
    def _create_canary(clients: AwsClients, region: str, name: str) -> None:
        try:
            clients.iot(region).create_thing(thingName=name)
        except ClientError as e:
            if not is_already_exists(e):
                raise

    def _bootstrap(self, inp: ProbeInput, clients: AwsClients) -> ProbeResult:
        url = clients.region(inp.region).bootstrap_url
        if not url:
            return ProbeResult("bootstrap", SKIPPED, None, "no bootstrap_url for this region")
        url = url.rstrip("/") + "/healthz"
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=inp.policy.probe_timeout_seconds) as resp:  # noqa: S310
                resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 429:
                # The health API is public and rate-limited: anyone can flood it into 429s. Counting them
                # as failed or degraded would let an outsider mark a region down, or veto failovers onto
                # a standby (only a Healthy one is a target); the other probes still see a real outage.
                BOOTSTRAP_THROTTLED.labels(inp.deployment, inp.region).inc()
                return ProbeResult(
                    "bootstrap",
                    OK,
                    None,
                    f"{url} answered HTTP 429: throttled, endpoint up (service not checked)",
                )
            return ProbeResult("bootstrap", FAILED, None, f"{url} answered HTTP {e.code}")
        except (urllib.error.URLError, OSError) as e:
            return ProbeResult("bootstrap", FAILED, None, f"{url} unreachable: {getattr(e, 'reason', e)}")
        return ProbeResult("bootstrap", OK, round((time.perf_counter() - t0) * 1000, 1), url)

    def _heartbeats(self, inp: ProbeInput, clients: AwsClients) -> ProbeResult:
        policy, region, watch = inp.policy, inp.region, _Watch(inp.policy)
        group = self.deployments.config(inp.deployment).fleet.thing_group
        if policy.heartbeat_sample == 0:
            return ProbeResult("heartbeats", SKIPPED, None, "heartbeat_sample = 0")
        try:
            names, _ = watch.call(
                fetch_page,
                clients.iot(region),
                "list_things_in_thing_group",
                "things",
                page_size=min(policy.heartbeat_sample, 250),
                thingGroupName=group,
            )
        except ClientError as e:
            if is_not_found(e):
                return ProbeResult("heartbeats", SKIPPED, None, f"n/a: no thing group {group} in {region}")
            raise
        ages, unread = _read_heartbeats(clients, region, names, watch.left())
        if names and unread == len(names):
            return ProbeResult("heartbeats", SKIPPED, None, "n/a: no shadow read within the probe's time")
        claims = [age for r, age in ages if r == region]
        if not claims:
            return ProbeResult(
                "heartbeats", SKIPPED, None, f"n/a: none of {len(names)} sampled devices reports {region}"
            )
        fresh = sum(1 for age in claims if age is not None and age <= policy.heartbeat_fresh_seconds)
        detail = (
            f"{fresh}/{len(claims)} devices connected here reported within "
            f"{policy.heartbeat_fresh_seconds:.0f}s (sampled {len(names)}, unread {unread})"
        )
        return ProbeResult("heartbeats", OK, round(fresh / len(claims), 3), detail)

    def _cloudwatch(self, inp: ProbeInput, clients: AwsClients) -> ProbeResult:
        if clients.region(inp.region).endpoint_url:
            return ProbeResult("cloudwatch", SKIPPED, None, "no CloudWatch on the local emulator")
        return judge_iot_metrics(iot_metric_sums(clients.client(inp.region, "cloudwatch")))


def _read_heartbeats(
    clients: AwsClients, region: str, names: list[str], budget: float
) -> tuple[list[tuple[str | None, float | None]], int]:
    """(claimed region, heartbeat age in s) per device read within `budget` seconds, and how many
    were not read. Reads run 8 at a time and the probe does not wait past its budget, so a slow
    region still yields a sample; when no read succeeds, the first error is raised (and classified
    by the caller)."""
    data, now = clients.iot_data(region), time.time()

    def one(name: str) -> tuple[str | None, float | None]:
        try:
            report = DeviceReport.parse(data.get_thing_shadow(thingName=name)["payload"].read())
        except ClientError as e:
            if is_not_found(e):
                return None, None
            raise
        heard = report.last_heard
        return report.region, None if heard is None else now - heard

    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="heartbeat")
    futures = [pool.submit(one, n) for n in names]
    done, _ = wait(futures, timeout=budget)
    pool.shutdown(wait=False, cancel_futures=True)
    read = [f.result() for f in done if not f.exception()]
    errors = [f.exception() for f in done if f.exception()]
    if errors and not read:
        raise errors[0]  # type: ignore[misc]
    return read, len(names) - len(read)


IOT_METRICS = (
    "Connect.Success",
    "Connect.ServerError",
    "Connect.Throttle",
    "PublishIn.Success",
    "PublishIn.ServerError",
    "PublishIn.Throttle",
)


def iot_metric_sums(cloudwatch: Any, minutes: int = 5, protocol: str = "MQTT") -> dict[str, float]:
    """Sums of IoT's broker metrics over the last `minutes`, up to the end of the current minute
    (metrics with no data are absent)."""
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    queries = [
        {
            "Id": f"m{i}",
            "Label": name,
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/IoT",
                    "MetricName": name,
                    "Dimensions": [{"Name": "Protocol", "Value": protocol}],
                },
                "Period": minutes * 60,
                "Stat": "Sum",
            },
        }
        for i, name in enumerate(IOT_METRICS)
    ]
    resp = cloudwatch.get_metric_data(
        MetricDataQueries=queries, StartTime=end - timedelta(minutes=minutes), EndTime=end
    )
    return {r["Label"]: sum(r["Values"]) for r in resp["MetricDataResults"] if r.get("Values")}


def judge_iot_metrics(sums: dict[str, float]) -> ProbeResult:
    """Worst success ratio of connects and publishes against server errors; throttles degrade."""
    ratios, throttled = [], 0.0
    for kind in ("Connect", "PublishIn"):
        ok, err = sums.get(f"{kind}.Success", 0), sums.get(f"{kind}.ServerError", 0)
        throttled += sums.get(f"{kind}.Throttle", 0)
        if ok + err:
            ratios.append((kind, ok / (ok + err)))
    if not ratios:
        return ProbeResult("cloudwatch", SKIPPED, None, "n/a: no connect or publish traffic in 5 minutes")
    kind, worst = min(ratios, key=lambda kr: kr[1])
    detail = f"{kind} success {worst:.1%} vs server errors, {throttled:.0f} throttled"
    total = sum(sums.values())
    if worst < 0.5:
        return ProbeResult("cloudwatch", FAILED, round(worst, 3), detail)
    if worst < 0.95 or throttled > 0.05 * total:
        return ProbeResult("cloudwatch", DEGRADED, round(worst, 3), detail)
    return ProbeResult("cloudwatch", OK, round(worst, 3), detail)


def activities(deployments: Deployments) -> list[Callable]:
    return HealthProbes(deployments).activities()
