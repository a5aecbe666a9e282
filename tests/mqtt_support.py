"""Devices on the rehearsal regions' MQTT endpoints, for the MQTT tests: a provisioned deployment and
the simulator's own MQTT transport (the code that also talks to AWS IoT Core)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from activities.context import Deployments
from activities.registry import ReadyInput, RegistryActivities, ReplicateScopeInput
from core.aws import AwsClients
from core.config import DeploymentConfig
from rehearsal import pki
from simulator.config import SimulatorConfig
from simulator.contract import Endpoint
from simulator.fleet import load_manifest
from simulator.mqtt_transport import MqttConnection, MqttTransport
from simulator.provision import Provisioner, fleet_dir
from simulator.transport import TransportError
from tests.conftest import make_config

EAST, WEST = "us-east-1", "us-west-2"


def endpoint(region: str) -> Endpoint:
    return Endpoint(f"test-ats.iot.{region}.amazonaws.com", region, primary=region == EAST)


@dataclass
class MqttWorld:
    cfg: DeploymentConfig
    aws: AwsClients
    transport: MqttTransport
    things: list[str]

    async def connect(
        self, thing: str, region: str = EAST, subscribe: list[str] | None = None
    ) -> MqttConnection:
        return await self.transport.connect(thing, endpoint(region), subscribe or [])

    async def refused(self, thing: str, region: str = EAST) -> TransportError:
        try:
            conn = await self.connect(thing, region)
        except TransportError as e:
            return e
        await conn.close()
        raise AssertionError(f"{thing} connected to {region}")

    def replicate(self) -> None:
        """What RegistryReplicationWorkflow does before a failover: the registry, east to west."""
        registry = RegistryActivities(Deployments([self.cfg]))
        registry.ensure_replication_ready(ReadyInput(self.cfg.name))
        registry.replicate_scope(ReplicateScopeInput(self.cfg.name, EAST, WEST, self.cfg.fleet.thing_group))

    def cert_id(self, thing: str) -> str:
        principal = self.aws.iot(EAST).list_thing_principals(thingName=thing)["principals"][0]
        return principal.rsplit("/", 1)[-1]


def build_world(emulators: dict[str, str], ca: pki.LocalCA, tmp: Path, devices: int = 2, **sim) -> MqttWorld:
    ca_dir = tmp / "ca"
    ca_dir.mkdir(parents=True, exist_ok=True)
    (ca_dir / "ca.pem").write_text(ca.cert_pem)
    (ca_dir / "ca.key").write_bytes(pki._pem(ca.key))
    cfg = make_config(emulators, ca_dir / "ca.pem", local={"state_dir": str(tmp / "state")})
    Provisioner(cfg).run(devices, echo=lambda _: None)
    specs = load_manifest(fleet_dir(cfg) / "manifest.json")
    creds = {s.thing: (Path(s.certificate), Path(s.key)) for s in specs}
    settings = SimulatorConfig(protocol="mqtt", **sim)
    return MqttWorld(cfg, AwsClients(cfg), MqttTransport(cfg, settings, creds), [s.thing for s in specs])


def mqtt_info(emulator_url: str) -> dict:
    with urllib.request.urlopen(f"{emulator_url}/_emulator/mqtt", timeout=5) as r:  # noqa: S310
        return json.loads(r.read())


async def lost(conn: MqttConnection, within: float = 10) -> str:
    """Wait until the broker closed the connection; returns why the device saw it go."""
    deadline = asyncio.get_running_loop().time() + within
    while conn.lost is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{conn.thing}'s session in {conn.region} is still open")
        await asyncio.sleep(0.05)
    return conn.lost


async def eventually(check, within: float = 10, what: str = "condition"):  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
