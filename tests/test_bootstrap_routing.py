"""Telemetry routing and DNS flips, fenced by the epoch like the bootstrap, against the emulators."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.context import Deployments
from activities.routing import FlipDnsInput, FlipRoutingInput, ReadRoutingInput, RoutingActivities, dns_region
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


def test_dns_flip_points_the_record_at_the_region_and_is_fenced(config: DeploymentConfig) -> None:
    probe = Deployments([config]).aws(config.name)
    zone = probe.client(dns_region(config), "route53").create_hosted_zone(
        Name="example.com", CallerReference=config.name
    )["HostedZone"]["Id"]
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
    d = Deployments([cfg])
    acts = RoutingActivities(d)
    first = run(acts.flip_dns, FlipDnsInput(cfg.name, 1, EAST))
    assert first.changed and first.status == "INSYNC" and first.record == "iot.example.com."
    second = run(acts.flip_dns, FlipDnsInput(cfg.name, 2, WEST))
    assert second.changed and second.target == "dev-ats.iot.us-west-2.amazonaws.com"
    r53 = d.aws(cfg.name).client(dns_region(cfg), "route53")
    sets = r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    cname = [s for s in sets if s["Type"] == "CNAME" and s["Name"] == "iot.example.com."]
    assert [r["Value"] for r in cname[0]["ResourceRecords"]] == [second.target]
    fence = [s for s in sets if s["Type"] == "TXT"]
    assert [r["Value"] for s in fence for r in s["ResourceRecords"]] == ['"epoch=2 region=us-west-2"']
    assert not run(acts.flip_dns, FlipDnsInput(cfg.name, 2, WEST)).changed  # a retry: nothing to do
    with pytest.raises(ApplicationError) as e:
        run(acts.flip_dns, FlipDnsInput(cfg.name, 1, EAST))
    assert e.value.type == "StaleEpoch" and e.value.non_retryable


def test_dns_flip_without_a_custom_domain_is_refused(config: DeploymentConfig) -> None:
    with pytest.raises(ApplicationError, match="does not use a custom domain") as e:
        run(RoutingActivities(Deployments([config])).flip_dns, FlipDnsInput(config.name, 1, EAST))
    assert e.value.non_retryable
