"""The probes against the real per-region emulators, with the fault switch, and their scoring."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from prometheus_client import REGISTRY

from activities.context import Deployments
from activities.health import (
    HealthProbes,
    ProbeInput,
    ProbeResult,
    iot_metric_sums,
    judge_iot_metrics,
)
from core.aws import AwsClients
from core.config import DeploymentConfig, HealthPolicy
from core.health_scoring import score_region
from rehearsal import faults, pki
from tests.conftest import make_config

EAST, WEST = "us-east-1", "us-west-2"


@pytest.fixture
def cfg(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path) -> DeploymentConfig:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(local_ca.cert_pem)
    # a generous timeout: the shared test machine can be slow; one test tightens it
    return make_config(emulators, ca_file, health={"degraded_latency_ms": 100, "probe_timeout_seconds": 10})


def probe_all(cfg: DeploymentConfig, region: str) -> list[ProbeResult]:
    """Every probe at once, as the workflow runs them."""
    probes = HealthProbes(Deployments([cfg]))
    inp = ProbeInput(cfg.name, region, cfg.health)
    with ThreadPoolExecutor(max_workers=5) as pool:
        return list(pool.map(lambda fn: fn(inp), probes.activities()))


def by_probe(results: list[ProbeResult]) -> dict[str, ProbeResult]:
    return {r.probe: r for r in results}


def test_clear_region_is_healthy_and_the_canary_shadow_moves(cfg: DeploymentConfig) -> None:
    first = by_probe(probe_all(cfg, EAST))
    assert first["control_plane"].status == "ok" and first["control_plane"].value is not None
    assert first["data_plane"].status == "ok", first["data_plane"].detail
    assert first["bootstrap"].status == "skipped"  # no bootstrap_url configured
    assert first["cloudwatch"].status == "skipped"  # local emulator
    assert first["heartbeats"].detail.startswith("n/a")
    second = by_probe(probe_all(cfg, EAST))
    v1, v2 = (int(re.search(r"version (\d+)", r["data_plane"].detail)[1]) for r in (first, second))
    assert v2 > v1  # the canary exists now and its version moves on every check
    assert score_region(list(second.values()), HealthPolicy()).state == "Healthy"  # default 800 ms
    labels = {"deployment": cfg.name, "region": EAST, "probe": "control_plane"}
    assert REGISTRY.get_sample_value("iotfailover_probe_seconds_count", labels) == 2


def test_outage_is_unhealthy(cfg: DeploymentConfig, emulators: dict[str, str]) -> None:
    faults.set_fault(emulators[EAST], "outage")
    results = probe_all(cfg, EAST)
    a = score_region(results, cfg.health)
    assert a.state == "Unhealthy"
    assert by_probe(results)["control_plane"].status == "failed"
    assert "ServiceUnavailable" in by_probe(results)["data_plane"].detail
    assert all(r.status in ("ok", "skipped") for r in probe_all(cfg, WEST))  # the other region is fine


def test_latency_below_the_timeout_is_degraded(cfg: DeploymentConfig, emulators: dict[str, str]) -> None:
    probe_all(cfg, EAST)  # create the canary first, so the slow round measures plain calls
    faults.set_fault(emulators[EAST], "latency", latency_ms=300)
    results = probe_all(cfg, EAST)
    a = score_region(results, cfg.health)
    assert a.state == "Degraded", a.reasons
    assert by_probe(results)["control_plane"].value >= 300
    assert "control_plane slow" in a.reasons[0]


def test_latency_near_the_timeout_is_still_degraded(cfg: DeploymentConfig, emulators: dict[str, str]) -> None:
    """Each call below the 4 s timeout but two in a row above it: the probes stop in time."""
    cfg = cfg.model_copy(update={"health": cfg.health.model_copy(update={"probe_timeout_seconds": 4})})
    probe_all(cfg, EAST)
    faults.set_fault(emulators[EAST], "latency", latency_ms=2500)
    started = time.monotonic()
    results = by_probe(probe_all(cfg, EAST))
    assert time.monotonic() - started < cfg.health.probe_timeout_seconds
    assert "no time left" in results["data_plane"].detail and results["data_plane"].value >= 2500
    assert score_region(list(results.values()), cfg.health).state == "Degraded"


def test_throttling_is_degraded_not_unhealthy(cfg: DeploymentConfig, emulators: dict[str, str]) -> None:
    faults.set_fault(emulators[EAST], "throttle")
    results = probe_all(cfg, EAST)
    assert {r.probe: r.status for r in results}["control_plane"] == "degraded"
    assert by_probe(results)["data_plane"].detail.startswith("throttled")
    assert score_region(results, cfg.health).state == "Degraded"


def test_heartbeats_share_of_fresh_devices_claiming_the_region(cfg: DeploymentConfig) -> None:
    aws = AwsClients(cfg)
    iot, data = aws.iot(EAST), aws.iot_data(EAST)
    iot.create_thing_group(thingGroupName=cfg.fleet.thing_group)
    now = time.time()
    # connected for an hour but reporting now: fresh (the latest report counts, not the connect time)
    devices = {"d-1": (EAST, now), "d-2": (EAST, now), "d-long": (EAST, now - 3600), "d-west": (WEST, now)}
    for name, (region, since) in devices.items():
        iot.create_thing(thingName=name)
        iot.add_thing_to_thing_group(thingGroupName=cfg.fleet.thing_group, thingName=name)
        connectivity = {"region": region, "endpoint": "x", "epoch": 1, "since": since}
        data.update_thing_shadow(
            thingName=name, payload=json.dumps({"state": {"reported": {"connectivity": connectivity}}})
        )
    iot.create_thing(thingName="d-no-shadow")
    iot.add_thing_to_thing_group(thingGroupName=cfg.fleet.thing_group, thingName="d-no-shadow")
    r = by_probe(probe_all(cfg, EAST))["heartbeats"]
    assert (r.status, r.value) == ("ok", 1.0), r.detail
    assert "3/3 devices connected here" in r.detail and "sampled 5" in r.detail
    stale = cfg.model_copy(
        update={"health": cfg.health.model_copy(update={"heartbeat_fresh_seconds": 0.001})}
    )
    time.sleep(1.1)
    r = by_probe(probe_all(stale, EAST))["heartbeats"]
    assert (r.status, r.value) == ("ok", 0.0)
    assert score_region([r], stale.health).statuses["heartbeats"] == "failed"


def test_heartbeats_not_applicable_where_no_device_claims_the_region(cfg: DeploymentConfig) -> None:
    aws = AwsClients(cfg)
    aws.iot(WEST).create_thing_group(thingGroupName=cfg.fleet.thing_group)
    aws.iot(WEST).create_thing(thingName="d1")
    aws.iot(WEST).add_thing_to_thing_group(thingGroupName=cfg.fleet.thing_group, thingName="d1")
    r = by_probe(probe_all(cfg, WEST))["heartbeats"]
    assert r.status == "skipped" and r.detail.startswith("n/a: none of 1 sampled devices")


class _Healthz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def bootstrap_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    _Healthz.status = 200


def test_bootstrap_healthz(
    emulators: dict[str, str], tmp_path: Path, local_ca: pki.LocalCA, bootstrap_url: str
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(local_ca.cert_pem)
    regions = {
        EAST: {"role": "primary", "endpoint_url": emulators[EAST], "bootstrap_url": bootstrap_url},
        WEST: {"role": "standby", "endpoint_url": emulators[WEST], "bootstrap_url": "http://127.0.0.1:9"},
    }
    cfg = make_config(emulators, ca_file, regions=regions)
    probes = HealthProbes(Deployments([cfg]))
    assert probes.probe_bootstrap(ProbeInput(cfg.name, EAST, cfg.health)).status == "ok"
    _Healthz.status = 503
    r = probes.probe_bootstrap(ProbeInput(cfg.name, EAST, cfg.health))
    assert (r.status, r.detail) == ("failed", f"{bootstrap_url}/healthz answered HTTP 503")
    r = probes.probe_bootstrap(ProbeInput(cfg.name, WEST, cfg.health))
    assert r.status == "failed" and "unreachable" in r.detail


def test_cloudwatch_metrics_read_and_judged(emulators: dict[str, str]) -> None:
    """The AWS-only probe's query, run against moto's CloudWatch in the emulator."""
    cw = boto3.client(
        "cloudwatch",
        region_name=EAST,
        endpoint_url=emulators[EAST],
        aws_access_key_id="t",
        aws_secret_access_key="t",
    )
    dims = [{"Name": "Protocol", "Value": "MQTT"}]
    for name, value in {"Connect.Success": 90, "Connect.ServerError": 10, "PublishIn.Success": 500}.items():
        cw.put_metric_data(
            Namespace="AWS/IoT", MetricData=[{"MetricName": name, "Dimensions": dims, "Value": value}]
        )
    sums = iot_metric_sums(cw)
    assert sums == {"Connect.Success": 90, "Connect.ServerError": 10, "PublishIn.Success": 500}
    r = judge_iot_metrics(sums)
    assert (r.status, r.value) == ("degraded", 0.9)
    assert judge_iot_metrics({"Connect.Success": 10, "Connect.ServerError": 90}).status == "failed"
    assert judge_iot_metrics({"Connect.Success": 100, "PublishIn.Success": 100}).status == "ok"
    assert judge_iot_metrics({}).status == "skipped"


def test_a_throttled_bootstrap_health_endpoint_is_up_not_failed(
    emulators: dict[str, str], tmp_path: Path, local_ca: pki.LocalCA, bootstrap_url: str
) -> None:
    """The health API is public: anyone can flood it into 429s. That is the endpoint up and shedding
    load, so it must not fail the probe, nor degrade the region (a Degraded standby is no failover
    target: an outsider could veto failovers)."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(local_ca.cert_pem)
    regions = {
        EAST: {"role": "primary", "endpoint_url": emulators[EAST], "bootstrap_url": bootstrap_url},
        WEST: {"role": "standby", "endpoint_url": emulators[WEST]},
    }
    cfg = make_config(emulators, ca_file, regions=regions)
    labels = {"deployment": cfg.name, "region": EAST}
    throttled = REGISTRY.get_sample_value("iotfailover_bootstrap_probe_throttled_total", labels) or 0
    _Healthz.status = 429
    results = probe_all(cfg, EAST)
    r = by_probe(results)["bootstrap"]
    assert (r.status, r.value) == ("ok", None)
    assert "HTTP 429" in r.detail and "throttled" in r.detail
    assert score_region(results, HealthPolicy()).state == "Healthy", score_region(results, HealthPolicy())
    assert REGISTRY.get_sample_value("iotfailover_bootstrap_probe_throttled_total", labels) == throttled + 1
