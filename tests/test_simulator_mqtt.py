"""The simulated fleet over MQTT: each device with its own certificate, the real bootstrap services,
jobs that arrive by notify-next (the job poll is an hour: nothing else could deliver them in time),
and devices that fail over on their own when the primary's broker drops them and refuses them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from activities.context import Deployments
from activities.registry import ReadyInput, RegistryActivities, ReplicateScopeInput
from core.config import DeploymentConfig
from rehearsal import faults, pki
from simulator.config import SimulatorConfig
from simulator.fleet import Fleet, load_manifest
from simulator.provision import Provisioner, fleet_dir
from tests.test_simulator import EAST, FAST, WEST, wait_for
from tests.test_simulator_e2e import _client, deployment, execution, flip  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio(loop_scope="session")


def provisioned_fleet(cfg: DeploymentConfig, ca: pki.LocalCA, tmp_path: Path, devices: int) -> Fleet:
    """`fleet provision` in the primary, the registry replicated to the standby, an MQTT fleet."""
    (cfg.ca_certificate.parent / "ca.key").write_bytes(pki._pem(ca.key))
    Provisioner(cfg).run(devices, echo=lambda _: None)
    registry = RegistryActivities(Deployments([cfg]))
    registry.ensure_replication_ready(ReadyInput(cfg.name))
    registry.replicate_scope(ReplicateScopeInput(cfg.name, EAST, WEST, cfg.fleet.thing_group))
    sim = SimulatorConfig(
        **{**FAST, "protocol": "mqtt", "keep_alive_seconds": 1, "telemetry_interval_seconds": 1}
    )
    specs = load_manifest(fleet_dir(cfg) / "manifest.json")
    return Fleet(cfg, sim, specs, status_file=tmp_path / "status.json")


async def test_mqtt_devices_migrate_by_notify_next_then_fail_over_on_their_own(
    emulators: dict[str, str],
    deployment: DeploymentConfig,  # noqa: F811
    local_ca: pki.LocalCA,
    tmp_path: Path,
) -> None:
    fleet = await asyncio.to_thread(provisioned_fleet, deployment, local_ca, tmp_path, 3)
    flip(emulators, deployment, 1, EAST)
    await fleet.start()
    try:
        await wait_for(lambda: all(d.region == EAST and d.state == "connected" for d in fleet.devices), 20)
        mover, *others = fleet.devices
        flip(emulators, deployment, 2, WEST)  # the cutover flips bootstrap before its job waves
        iot = _client("iot", emulators, EAST)
        arn = iot.describe_thing(thingName=mover.thing)["thingArn"]
        doc = {"operation": "migrate-region", "epoch": 2, "targetRegion": WEST, "regions": [WEST, EAST]}
        iot.create_job(jobId="move-1", targets=[arn], document=json.dumps(doc))
        await wait_for(lambda: mover.region == WEST and mover.state == "connected", 10, "migration")
        assert execution(emulators, "move-1", mover.thing)["status"] == "SUCCEEDED"
        assert all(d.region == EAST for d in others)

        faults.set_fault(emulators[EAST], "outage")  # sessions dropped, connects refused
        await wait_for(
            lambda: all(d.region == WEST and d.state == "connected" for d in others), 20, "failover"
        )
    finally:
        await fleet.stop()
    for d in others:
        assert "failover" in d.event_kinds(), d.event_kinds()
        shadow = json.loads(
            _client("iot-data", emulators, WEST).get_thing_shadow(thingName=d.thing)["payload"].read()
        )
        assert shadow["state"]["reported"]["connectivity"]["region"] == WEST
    assert fleet.stats.totals["failovers"] == len(others)
