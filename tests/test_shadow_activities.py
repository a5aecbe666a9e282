"""Shadow page sync, listing and parity against the per-region emulators (no Temporal needed)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from prometheus_client import REGISTRY
from temporalio.exceptions import ApplicationError

from activities.context import Deployments
from activities.shadows import (
    RecoveryPointInput,
    ShadowActivities,
    ShadowPageInput,
    ShadowParityInput,
    ThingPageInput,
)
from core.config import DeploymentConfig
from rehearsal import faults, pki
from tests.shadow_helpers import (
    NAMED,
    SOURCE,
    TARGET,
    create_things,
    fast_config,
    fleet,
    read,
    source_state,
    write,
)


@pytest.fixture
def cfg(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path) -> DeploymentConfig:
    return fast_config(emulators, local_ca.cert_pem, tmp_path)


@pytest.fixture
def shadows(cfg: DeploymentConfig) -> ShadowActivities:
    return ShadowActivities(Deployments([cfg]))


def page(cfg: DeploymentConfig, things: list[str], concurrency: int = 4) -> ShadowPageInput:
    return ShadowPageInput(cfg.name, SOURCE, TARGET, things, concurrency)


def test_page_copies_classic_and_named_shadows(cfg: DeploymentConfig, shadows: ShadowActivities) -> None:
    aws = shadows.deployments.aws(cfg.name)
    things = fleet(aws, 12)
    time.sleep(1.1)  # the device's own write in the target is provably newer (timestamps are seconds)
    write(aws, TARGET, things[0], {"reported": {"temp": 30, "connectivity": {"region": TARGET}}})

    result = shadows.sync_shadow_page(page(cfg, things))

    assert (result.things_scanned, result.failed) == (12, 0)
    assert (result.shadows_copied, result.merged, result.unchanged) == (12 * 3 - 1, 1, 0)
    kept = read(aws, TARGET, things[0])["state"]
    assert kept["reported"] == {"temp": 30, "connectivity": {"region": TARGET}, "tags": [things[0], "x"]}
    assert kept["desired"] == source_state(things[0], None)["desired"]
    for name in NAMED:
        assert (
            read(aws, TARGET, things[5], name)["state"]["reported"]
            == source_state(things[5], name)["reported"]
        )
    # classic: 4 leaves (3 where the device wrote newer ones), each named shadow: 2
    assert result.stale_leaves == 11 * 4 + 3 + 12 * 2 * 2
    assert len(result.stale_sample) == 20
    assert {s.split(":")[1] for s in result.stale_sample} <= {
        "desired.mode",
        "desired.led.on",
        "reported.temp",
        "reported.tags",
        "reported.shadow",
        "reported.owner",
    }

    again = shadows.sync_shadow_page(page(cfg, things))
    assert (again.shadows_copied, again.merged, again.unchanged, again.stale_leaves) == (0, 0, 36, 0)
    labels = {"deployment": cfg.name, "source": SOURCE, "target": TARGET}
    synced = {
        o: REGISTRY.get_sample_value("iotfailover_shadows_synced_total", {**labels, "outcome": o})
        for o in ("copied", "merged", "unchanged")
    }
    assert synced == {"copied": 35, "merged": 1, "unchanged": 36}
    assert REGISTRY.get_sample_value("iotfailover_shadow_sync_lag_seconds_count", labels) == 95


def test_thing_missing_in_target_fails_alone_with_a_reason(
    cfg: DeploymentConfig, shadows: ShadowActivities
) -> None:
    aws = shadows.deployments.aws(cfg.name)
    things = fleet(aws, 3)
    create_things(aws, SOURCE, ["only-in-source"])
    write(aws, SOURCE, "only-in-source", {"reported": {"a": 1}})

    result = shadows.sync_shadow_page(page(cfg, [*things, "only-in-source"]))

    assert (result.things_scanned, result.shadows_copied, result.failed) == (4, 9, 1)
    assert result.failures == ["only-in-source: thing not found in the target (replicate the registry first)"]


def test_device_write_between_read_and_write_is_kept(
    cfg: DeploymentConfig, shadows: ShadowActivities
) -> None:
    """A device updates the target shadow just before the sync writes: the version check catches it."""
    aws = shadows.deployments.aws(cfg.name)
    things = fleet(aws, 2)
    for thing in things:
        write(aws, TARGET, thing, {"reported": {"boot": 1}})
    time.sleep(1.1)
    device = boto3.client(
        "iot-data",
        region_name=TARGET,
        endpoint_url=cfg.regions[TARGET].endpoint_url,
        aws_access_key_id="t",
        aws_secret_access_key="t",
    )
    interfered: list[str] = []

    def device_writes_first(params: dict, **_: object) -> None:
        thing = params["thingName"]
        if thing not in interfered and "shadowName" not in params:
            interfered.append(thing)
            device.update_thing_shadow(thingName=thing, payload=b'{"state": {"reported": {"temp": 99}}}')

    events = aws.iot_data(TARGET).meta.events
    events.register("provide-client-params.iot-data.UpdateThingShadow", device_writes_first)
    try:
        result = shadows.sync_shadow_page(page(cfg, things))
    finally:
        events.unregister("provide-client-params.iot-data.UpdateThingShadow", device_writes_first)

    assert sorted(interfered) == things
    assert result.conflicts == 2 and result.failed == 0
    for thing in things:
        state = read(aws, TARGET, thing)["state"]
        assert state["reported"]["temp"] == 99  # the device's write, newer than the source's 20
        assert state["reported"]["boot"] == 1
        assert state["desired"] == source_state(thing, None)["desired"]


def test_throttled_target_slows_down_and_finishes(cfg: DeploymentConfig, shadows: ShadowActivities) -> None:
    aws = shadows.deployments.aws(cfg.name)
    things = fleet(aws, 4)
    faults.set_fault(cfg.regions[TARGET].endpoint_url, "throttle", rate=0.3)
    try:
        result = shadows.sync_shadow_page(page(cfg, things))
    finally:
        faults.set_fault(cfg.regions[TARGET].endpoint_url, "clear")
    assert (result.things_scanned, result.shadows_copied, result.failed) == (4, 12, 0)
    # adaptive: the throttled API's rate was halved (24+ target calls at 30%: one is throttled)
    assert min(aws.limiter.rate(TARGET, api) for api in ("GetThingShadow", "UpdateThingShadow")) < 5000


def test_outage_fails_the_page_retryably(cfg: DeploymentConfig, shadows: ShadowActivities) -> None:
    aws = shadows.deployments.aws(cfg.name)
    things = fleet(aws, 3)
    faults.set_fault(cfg.regions[TARGET].endpoint_url, "outage")
    with pytest.raises(ApplicationError) as e:
        shadows.sync_shadow_page(page(cfg, things))
    assert not e.value.non_retryable
    assert "will retry" in str(e.value)


def test_listing_pages_a_group_or_the_fleet(cfg: DeploymentConfig, shadows: ShadowActivities) -> None:
    aws = shadows.deployments.aws(cfg.name)
    grouped = fleet(aws, 5, group="g1")
    create_things(aws, SOURCE, ["loose-1", "loose-2"])
    listed = shadows.list_shadow_things(ThingPageInput(cfg.name, SOURCE, "g1"))
    assert sorted(listed.things) == grouped and listed.next_token is None
    first = shadows.list_shadow_things(ThingPageInput(cfg.name, SOURCE, None, limit=3))
    assert first.next_token  # limit 3 with 7 things: more to come
    seen, token = list(first.things), first.next_token
    while token:
        nxt = shadows.list_shadow_things(ThingPageInput(cfg.name, SOURCE, None, token, limit=3))
        seen, token = seen + nxt.things, nxt.next_token
    assert sorted(seen) == sorted([*grouped, "loose-1", "loose-2"])


def test_parity_lists_things_whose_target_is_behind(cfg: DeploymentConfig, shadows: ShadowActivities) -> None:
    aws = shadows.deployments.aws(cfg.name)
    things = fleet(aws, 6, group="g2")
    check = ShadowParityInput(cfg.name, SOURCE, TARGET, "g2")

    before = shadows.check_shadow_parity(check)
    assert (before.things_checked, before.differing, before.ok) == (6, 6, False)
    assert any(s.startswith(f"{things[0]}#config: 2 stale leaves") for s in before.sample)

    shadows.sync_shadow_page(page(cfg, things))
    time.sleep(1.1)
    write(aws, SOURCE, things[2], {"reported": {"late": True}}, "telemetry")

    after = shadows.check_shadow_parity(check)
    assert (after.things_checked, after.differing, after.ok) == (6, 1, False)
    assert after.sample == [f"{things[2]}#telemetry: 1 stale leaves (reported.late ...)"]


def test_recovery_point_is_the_span_of_the_writes_the_standby_lacked(
    cfg: DeploymentConfig, shadows: ShadowActivities
) -> None:
    """20 devices of the scope; the standby holds a synced copy, then the source gets writes the
    standby never sees, at known times: 1 device from t_a, 3 from t_b (named shadow), 8 from t_c."""
    aws = shadows.deployments.aws(cfg.name)
    things = fleet(aws, 20, group="rp")
    shadows.sync_shadow_page(page(cfg, things))  # the standby is complete ...
    create_things(aws, SOURCE, ["loose"])  # ... and a thing outside the scope, lacking everything there
    write(aws, SOURCE, "loose", {"reported": {"x": 1}})

    def lost(group: list[str], leaf: str, name: str | None = None) -> float:
        time.sleep(1.1)  # strictly newer than what came before (timestamps are whole seconds)
        stamps = [
            write(aws, SOURCE, t, {"reported": {leaf: 1}}, name)["metadata"]["reported"][leaf]["timestamp"]
            for t in group
        ]
        assert len(set(stamps)) == 1, stamps  # one second for the whole group
        return stamps[0]

    t_a = lost(things[:1], "a")
    t_b = lost(things[1:4], "b", "telemetry")
    t_c = lost(things[4:12], "c")
    lost(things[:1], "later")  # the oldest lost write is what counts for a device
    time.sleep(1.1)
    write(aws, SOURCE, things[12], {"reported": {"d": 1}})
    write(aws, TARGET, things[12], {"reported": {"d": 2}})  # the standby's is newer: nothing lost

    point = shadows.measure_recovery_point(RecoveryPointInput(cfg.name, SOURCE, TARGET, "rp"))
    now = point.as_of.timestamp()
    assert (point.devices, point.devices_lost, point.unreadable) == (20, 12, 0)  # "loose" not counted
    assert point.leaves_lost == 1 + 3 + 8 + 1
    # nearest rank over 20 devices: 8 zeros, 8 at t_c, 3 at t_b, 1 at t_a
    assert point.p50_seconds == int(now - t_c)  # whole seconds, rounded down
    assert point.p95_seconds == int(now - t_b)
    assert point.max_seconds == pytest.approx(now - t_a, abs=0.01)
    assert any(s.startswith(f"{things[1]}#telemetry: 1 leaves lost (reported.b") for s in point.sample)

    # writes after the moment of the loss are not part of it
    cut = datetime.fromtimestamp(t_b + 0.5, UTC)
    earlier = shadows.measure_recovery_point(RecoveryPointInput(cfg.name, SOURCE, TARGET, "rp", as_of=cut))
    assert (earlier.devices, earlier.devices_lost) == (20, 4)
    assert (earlier.p50_seconds, earlier.max_seconds) == (0, pytest.approx(t_b + 0.5 - t_a))
    assert (
        REGISTRY.get_sample_value(
            "iotfailover_recovery_point_devices_lost",
            {"deployment": cfg.name, "source": SOURCE, "target": TARGET},
        )
        == 4
    )


def test_pacer_keeps_one_thing_under_its_rate_and_waits_out_throttles(cfg: DeploymentConfig) -> None:
    from botocore.exceptions import ClientError

    from activities.shadow_reads import ShadowPacer
    from core.aws import AwsClients

    slow = cfg.model_copy(
        update={"quotas": cfg.quotas.model_copy(update={"per_api": {"ShadowPerThing": 10}})}
    )
    pacer, calls = ShadowPacer(AwsClients(slow)), []
    started = time.monotonic()
    for _ in range(4):
        pacer.call(SOURCE, lambda: calls.append(time.monotonic()))
    assert time.monotonic() - started >= 0.3  # 4 calls at 10/s: 3 gaps of 0.1 s
    pacer.call(TARGET, lambda: calls.append(time.monotonic()))  # another region has its own pace
    assert calls[-1] - calls[-2] < 0.05

    throttle = ClientError({"Error": {"Code": "ThrottlingException"}}, "GetThingShadow")
    answers = iter([throttle, throttle, "ok"])

    def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert pacer.call(SOURCE, flaky) == "ok"
    answers = iter([ClientError({"Error": {"Code": "AccessDeniedException"}}, "GetThingShadow")])
    with pytest.raises(ClientError):  # not a throttle: no second try
        pacer.call(SOURCE, flaky)
