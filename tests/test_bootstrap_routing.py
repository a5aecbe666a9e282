"""Telemetry routing and DNS flips, fenced by the epoch like the bootstrap, against the emulators."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import context
from activities.context import Deployments
from activities.routing import FlipDnsInput, FlipRoutingInput, ReadRoutingInput, RoutingActivities
from core.config import DeploymentConfig
from rehearsal import faults
from tests.conftest import make_config

EAST, WEST = "us-east-1", "us-west-2"


def run(fn, inp):
    return ActivityEnvironment().run(fn, inp)


def test_routing_flip_is_fenced_and_caught_up(config: DeploymentConfig) -> None:
    acts = RoutingActivities(Deployments([config]))
    assert run(acts.read_routing, ReadRoutingInput(config.name, EAST, "argus")) is None
    run(acts.flip_routing, FlipRoutingInput(config.name, 1, "argus", EAST))
    assert (
        run(acts.read_routing, ReadRoutingInput(config.name, WEST, "argus")).stream
        == "iotfailover-telemetry-argus"
    )
    faults.set_fault(config.regions[WEST].endpoint_url, "outage")
    try:
        result = run(acts.flip_routing, FlipRoutingInput(config.name, 2, "argus", WEST, "telemetry-west"))
    finally:
        faults.set_fault(config.regions[WEST].endpoint_url, "clear")
    assert (result.written, result.unreachable) == ([EAST], [WEST])
    assert run(acts.read_routing, ReadRoutingInput(config.name, WEST, "argus")).region == EAST  # behind
    run(acts.flip_routing, FlipRoutingInput(config.name, 2, "argus", WEST, "telemetry-west", regions=[WEST]))
    for region in (EAST, WEST):
        rec = run(acts.read_routing, ReadRoutingInput(config.name, region, "argus"))
        assert (rec.region, rec.stream, rec.epoch) == (WEST, "telemetry-west", 2)
    with pytest.raises(ApplicationError) as e:
        run(acts.flip_routing, FlipRoutingInput(config.name, 1, "argus", EAST, "telemetry-east"))
    assert e.value.type == "StaleEpoch" and e.value.non_retryable


def _dns_deployment(config: DeploymentConfig, zone_region: str = EAST) -> tuple[Deployments, Any, str]:
    """A deployment with a custom domain whose hosted zone lives in `zone_region`'s emulator.

    Route 53 is global in AWS; locally every emulator has its own, so the zone's emulator is the
    one a flip must reach.
    """
    probe = Deployments([config]).aws(config.name)
    r53 = probe.client(zone_region, "route53")
    zone = r53.create_hosted_zone(Name="example.com", CallerReference=config.name)["HostedZone"]["Id"]
    cfg = make_config(
        {r: c.endpoint_url for r, c in config.regions.items()},
        config.ca_certificate,
        deployment={"dns_record": "iot.example.com", "hosted_zone_id": zone.rsplit("/", 1)[-1]},
        regions={
            r: {
                "role": c.role,
                "endpoint_url": c.endpoint_url,
                "iot_endpoint": f"dev-ats.iot.{r}.amazonaws.com",
            }
            for r, c in config.regions.items()
        },
    )
    return Deployments([cfg]), r53, zone


def _record_sets(r53: Any, zone: str) -> dict[tuple[str, str], list[str]]:
    sets = r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    return {(s["Name"], s["Type"]): [r["Value"] for r in s.get("ResourceRecords", [])] for s in sets}


def test_dns_flip_points_the_record_at_the_region_and_is_fenced(config: DeploymentConfig) -> None:
    d, r53, zone = _dns_deployment(config)
    cfg = d.config(d.names()[0])
    acts = RoutingActivities(d)
    first = run(acts.flip_dns, FlipDnsInput(cfg.name, 1, EAST))
    assert first.changed and first.status == "INSYNC" and first.record == "iot.example.com."
    second = run(acts.flip_dns, FlipDnsInput(cfg.name, 2, WEST))
    assert second.changed and second.target == "dev-ats.iot.us-west-2.amazonaws.com"
    sets = _record_sets(r53, zone)
    assert sets[("iot.example.com.", "CNAME")] == [second.target]
    assert sets[("_iotfailover-epoch.iot.example.com.", "TXT")] == ['"epoch=2 region=us-west-2"']
    assert not run(acts.flip_dns, FlipDnsInput(cfg.name, 2, WEST)).changed  # a retry: nothing to do
    with pytest.raises(ApplicationError) as e:
        run(acts.flip_dns, FlipDnsInput(cfg.name, 1, EAST))
    assert e.value.type == "StaleEpoch" and e.value.non_retryable


def test_dns_flip_lands_through_the_next_region_when_the_first_is_down(config: DeploymentConfig) -> None:
    d, r53, zone = _dns_deployment(config, zone_region=WEST)
    cfg = d.config(d.names()[0])
    acts = RoutingActivities(d)
    faults.set_fault(cfg.regions[EAST].endpoint_url, "outage")  # the first region: Route 53 unreachable
    result = run(acts.flip_dns, FlipDnsInput(cfg.name, 2, WEST))
    assert result.changed and result.status == "INSYNC"
    assert _record_sets(r53, zone)[("iot.example.com.", "CNAME")] == ["dev-ats.iot.us-west-2.amazonaws.com"]

    faults.set_fault(cfg.regions[WEST].endpoint_url, "outage")  # none answers: retry later
    with pytest.raises(ApplicationError) as e:
        run(acts.flip_dns, FlipDnsInput(cfg.name, 3, WEST))
    assert e.value.type == "Route53Unreachable" and not e.value.non_retryable
    assert EAST in str(e.value) and WEST in str(e.value)


def test_dns_flip_uses_the_regions_it_is_given_in_their_order(config: DeploymentConfig) -> None:
    d, r53, zone = _dns_deployment(config, zone_region=WEST)
    cfg = d.config(d.names()[0])
    acts = RoutingActivities(d)
    result = run(acts.flip_dns, FlipDnsInput(cfg.name, 2, EAST, via_regions=[WEST, EAST]))
    assert result.changed  # through WEST: EAST's Route 53 has no such zone and is never asked
    with pytest.raises(ApplicationError) as e:
        run(acts.flip_dns, FlipDnsInput(cfg.name, 3, EAST, via_regions=["eu-central-9"]))
    assert e.value.non_retryable and "eu-central-9" in str(e.value)


@pytest.mark.parametrize("value", ['"garbage"', '"epoch=two region=us-east-1"', '"region=us-east-1"'])
def test_a_hand_edited_fence_record_fails_at_once_and_is_counted(
    config: DeploymentConfig, value: str
) -> None:
    d, r53, zone = _dns_deployment(config)
    cfg = d.config(d.names()[0])
    fence = {"Name": "_iotfailover-epoch.iot.example.com.", "Type": "TXT", "TTL": 60}
    r53.change_resource_record_sets(
        HostedZoneId=zone,
        ChangeBatch={
            "Changes": [
                {"Action": "CREATE", "ResourceRecordSet": {**fence, "ResourceRecords": [{"Value": value}]}}
            ]
        },
    )
    labels = {"source": "flip_dns", "reason": "malformed_record"}
    before = REGISTRY.get_sample_value("iotfailover_bad_input_total", labels) or 0
    with pytest.raises(ApplicationError) as e:
        run(RoutingActivities(d).flip_dns, FlipDnsInput(cfg.name, 2, WEST))
    assert e.value.type == "MalformedRecord" and e.value.non_retryable
    assert "_iotfailover-epoch.iot.example.com." in str(e.value) and "hint" in str(e.value)
    assert REGISTRY.get_sample_value("iotfailover_bad_input_total", labels) == before + 1
    assert ("iot.example.com.", "CNAME") not in _record_sets(r53, zone)  # nothing written


def test_dns_flip_heartbeats_while_route53_is_slow(config: DeploymentConfig, monkeypatch) -> None:
    d, _, _ = _dns_deployment(config)
    cfg = d.config(d.names()[0])
    monkeypatch.setattr(context, "HEARTBEAT_SECONDS", 0.2)
    faults.set_fault(cfg.regions[EAST].endpoint_url, "latency", latency_ms=1500)  # every call 1.5 s
    beats: list[float] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(time.monotonic())
    started = time.monotonic()
    env.run(RoutingActivities(d).flip_dns, FlipDnsInput(cfg.name, 1, EAST))
    stamps = [started, *beats, time.monotonic()]
    assert max(b - a for a, b in itertools.pairwise(stamps)) < 1.0, stamps


def test_dns_flip_without_a_custom_domain_is_refused(config: DeploymentConfig) -> None:
    with pytest.raises(ApplicationError, match="does not use a custom domain") as e:
        run(RoutingActivities(Deployments([config])).flip_dns, FlipDnsInput(config.name, 1, EAST))
    assert e.value.non_retryable


def test_a_hand_edited_routing_record_fails_at_once_and_is_counted(config: DeploymentConfig) -> None:
    d = Deployments([config])
    acts = RoutingActivities(d)
    run(acts.flip_routing, FlipRoutingInput(config.name, 1, "argus", EAST))
    d.aws(config.name).dynamodb(EAST).put_item(
        TableName=config.routing_table,
        Item={"applicationId": {"S": "argus"}, "region": {"S": EAST}, "epoch": {"S": "one"}},
    )
    labels = {"source": "read_routing", "reason": "malformed_record"}
    before = REGISTRY.get_sample_value("iotfailover_bad_input_total", labels) or 0
    with pytest.raises(ApplicationError) as e:
        run(acts.read_routing, ReadRoutingInput(config.name, EAST, "argus"))
    assert e.value.type == "MalformedRecord" and e.value.non_retryable and "hint" in str(e.value)
    assert REGISTRY.get_sample_value("iotfailover_bad_input_total", labels) == before + 1
