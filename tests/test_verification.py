"""verify_devices against the emulators: a device confirmed once is not read again, and a retried
attempt starts from what the last one confirmed (issue 17: verification must grow with the devices
still to confirm, not with devices x rounds)."""

from __future__ import annotations

import dataclasses
import json

from prometheus_client import REGISTRY
from temporalio.testing import ActivityEnvironment

from activities.context import Deployments
from activities.jobs import JobActivities
from activities.verification import VerifyInput
from core.aws import AwsClients
from core.config import DeploymentConfig

EAST, WEST = "us-east-1", "us-west-2"
EPOCH = 3


def _fleet(cfg: DeploymentConfig, arrived: list[str], missing: list[str]) -> None:
    aws = AwsClients(cfg)
    iot = aws.iot(EAST)
    iot.create_thing_group(thingGroupName="wave")
    for thing in arrived + missing:
        iot.create_thing(thingName=thing)
        iot.add_thing_to_thing_group(thingGroupName="wave", thingName=thing)
    for thing in arrived + missing:  # replicated: the target knows every device
        aws.iot(WEST).create_thing(thingName=thing)
    for thing in arrived:
        report = {"state": {"reported": {"connectivity": {"region": WEST, "epoch": EPOCH, "since": 1}}}}
        aws.iot_data(WEST).update_thing_shadow(thingName=thing, payload=json.dumps(report))


def _shadow_reads() -> float:
    """GetThingShadow calls to the target, answered or not (core.aws counts every call)."""
    return sum(
        REGISTRY.get_sample_value(
            "iotfailover_aws_calls_total", {"region": WEST, "api": "GetThingShadow", "outcome": outcome}
        )
        or 0
        for outcome in ("ok", "http_4xx")
    )


def _verify(cfg: DeploymentConfig, env: ActivityEnvironment, timeout: float) -> object:
    inp = VerifyInput(
        deployment=cfg.name,
        list_region=EAST,
        list_group="wave",
        target=WEST,
        epoch=EPOCH,
        timeout_seconds=timeout,
        poll_seconds=0.5,
    )
    return env.run(JobActivities(Deployments([cfg])).verify_devices, inp)


def test_a_confirmed_device_is_read_once_however_many_rounds_the_others_take(
    config: DeploymentConfig,
) -> None:
    arrived, missing = [f"ok-{i}" for i in range(6)], ["late-1", "late-2"]
    _fleet(config, arrived, missing)
    env, beats = ActivityEnvironment(), []
    env.on_heartbeat = lambda *d: beats.append(d[0])
    before = _shadow_reads()
    out = _verify(config, env, timeout=2.0)
    reads = _shadow_reads() - before
    rounds = sum(1 for b in beats if b["checked"] == len(arrived) + len(missing))
    assert (out.total, out.confirmed, out.pending) == (8, 6, 2)
    assert rounds >= 3, beats
    assert reads == len(arrived) + len(missing) * rounds, (reads, rounds)  # not 8 per round
    assert sorted(beats[-1]["confirmed"]) == arrived


def test_a_retried_attempt_starts_from_what_the_last_one_confirmed(config: DeploymentConfig) -> None:
    arrived, missing = ["ok-1", "ok-2", "ok-3"], ["late-1"]
    _fleet(config, arrived, missing)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_details=[{"confirmed": arrived}])
    before = _shadow_reads()
    out = _verify(config, env, timeout=0)
    assert (out.confirmed, out.pending) == (3, 1)
    assert _shadow_reads() - before == 1  # only the one not confirmed before
