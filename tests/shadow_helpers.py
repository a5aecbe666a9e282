"""Test helpers for shadow sync: a fleet with classic and named shadows in the emulators."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.aws import AwsClients
from core.config import DeploymentConfig
from tests.conftest import make_config

SOURCE, TARGET = "us-east-1", "us-west-2"
NAMED = ("config", "telemetry")
FAST_QUOTAS = {
    "default_rps": 5000,
    "per_api": {"GetThingShadow": 5000, "UpdateThingShadow": 5000, "ShadowPerThing": 1000},
}


def fast_config(emulators: dict[str, str], ca_pem: str, tmp_path: Path) -> DeploymentConfig:
    """A deployment whose quotas do not slow tests down (the limiter itself is tested in core)."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca_pem)
    return make_config(emulators, ca_file, quotas=FAST_QUOTAS)


def names(n: int, prefix: str = "dev") -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(n)]


def create_things(aws: AwsClients, region: str, things: list[str], group: str | None = None) -> None:
    iot = aws.iot(region)
    if group:
        iot.create_thing_group(thingGroupName=group)

    def one(thing: str) -> None:
        iot.create_thing(thingName=thing)
        if group:
            iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)

    if things:  # a reset emulator initialises its backends on the first request: not 16 at once
        one(things[0])
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, things[1:]))


def write(aws: AwsClients, region: str, thing: str, state: dict, name: str | None = None) -> dict:
    kwargs = {"shadowName": name} if name else {}
    resp = aws.iot_data(region).update_thing_shadow(
        thingName=thing, payload=json.dumps({"state": state}).encode(), **kwargs
    )
    return json.loads(resp["payload"].read())


def read(aws: AwsClients, region: str, thing: str, name: str | None = None) -> dict:
    kwargs = {"shadowName": name} if name else {}
    return json.loads(aws.iot_data(region).get_thing_shadow(thingName=thing, **kwargs)["payload"].read())


def source_state(thing: str, name: str | None) -> dict:
    if name is None:
        return {
            "desired": {"mode": "eco", "led": {"on": True}},
            "reported": {"temp": 20, "tags": [thing, "x"]},
        }
    return {"reported": {"shadow": name, "owner": thing}}


def seed_shadows(aws: AwsClients, region: str, things: list[str], named: tuple[str, ...] = NAMED) -> None:
    """Classic and named shadows for every thing (3 shadows a thing with the default names)."""

    def one(thing: str) -> None:
        for name in (None, *named):
            write(aws, region, thing, source_state(thing, name), name)

    if things:
        one(things[0])
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, things[1:]))


def fleet(aws: AwsClients, n: int, group: str | None = None, prefix: str = "dev") -> list[str]:
    """`n` things registered in both regions (in `group`), with shadows in the source only."""
    things = names(n, prefix)
    for region in (SOURCE, TARGET):
        create_things(aws, region, things, group)
    seed_shadows(aws, SOURCE, things)
    aws.iot_data(TARGET).list_named_shadows_for_thing(thingName=things[0])  # warm the target's backend
    return things


def target_versions(aws: AwsClients, things: list[str], named: tuple[str, ...] = NAMED) -> list[int]:
    def one(thing: str) -> list[int]:
        return [read(aws, TARGET, thing, name)["version"] for name in (None, *named)]

    with ThreadPoolExecutor(16) as pool:
        return [v for vs in pool.map(one, things) for v in vs]
