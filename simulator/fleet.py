"""A fleet of simulated devices in one process: start them, watch them, write the status snapshot.

The snapshot (`<state>/fleet/status.json`, rewritten every few seconds) is what
`starter.py fleet status` prints; the same counts feed the `iotfailover_sim_devices` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import aiohttp

from core import logs
from core.config import DeploymentConfig
from simulator.bootstrap_client import BootstrapClient
from simulator.config import FaultSettings, SimulatorConfig
from simulator.device import Device, DeviceSpec
from simulator.metrics import Stats
from simulator.transport import LocalTransport, Transport

STOP_GRACE_SECONDS = 15  # a stopped device closes its link within this (the MQTT close waits up to 10 s)


def status_path(cfg: DeploymentConfig) -> Path:
    return cfg.state_dir / "fleet" / "status.json"


def load_manifest(path: Path, limit: int = 0) -> list[DeviceSpec]:
    """The devices `fleet provision` wrote: ids, SKUs and their certificate and key files."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no fleet manifest at {path} (hint: run `python starter.py fleet provision --devices N`)"
        ) from None
    here = path.parent

    def file(d: dict, key: str) -> str:
        return str(here / d[key]) if d.get(key) else ""

    specs = [
        DeviceSpec(
            thing=d["id"], sku=d.get("sku", ""), certificate=file(d, "certificate"), key=file(d, "key")
        )
        for d in raw["devices"]
    ]
    return specs[:limit] if limit else specs


def assign_faults(specs: list[DeviceSpec], faults: FaultSettings) -> list[DeviceSpec]:
    """Make a reproducible share of the fleet faulty, the kinds dealt in turn."""
    count = round(len(specs) * faults.share)
    if not count or not faults.kinds:
        return specs
    chosen = sorted(random.Random(faults.seed).sample(range(len(specs)), count))
    out = list(specs)
    for n, i in enumerate(chosen):
        out[i] = replace(specs[i], fault=faults.kinds[n % len(faults.kinds)])
    return out


class Fleet:
    def __init__(
        self,
        cfg: DeploymentConfig,
        sim: SimulatorConfig,
        specs: list[DeviceSpec],
        transport: Transport | None = None,
        status_file: Path | None = None,
    ):
        self.cfg = cfg
        self.sim = sim
        self.specs = assign_faults(specs, sim.faults)
        self.transport = transport
        self.status_file = status_file
        self.stats = Stats()
        self.devices: list[Device] = []
        self.started = 0.0
        self.stopped = False
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None
        self._gauge_keys: set[tuple[str, str]] = set()
        self._rng = random.Random()  # one for all: devices share the event loop's thread
        self.log = logs.get("simulator.fleet", deployment=cfg.name)  # after logs.configure()

    async def start(self) -> None:
        """Create every device and start them spread over `start_spread_seconds`."""
        self.started = time.time()
        self.transport = self.transport or self._transport()
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.sim.max_in_flight))
        bootstrap = BootstrapClient(self.sim.bootstrap_list(self.cfg), self._session)
        app = self.cfg.fleet.application
        for spec in self.specs:
            self.devices.append(Device(spec, self.sim, app, self.transport, bootstrap, self.stats, self._rng))
        spread = self.sim.start_spread_seconds
        for i, d in enumerate(self.devices):
            delay = spread * i / len(self.devices) if spread else 0.0
            self._tasks.append(asyncio.create_task(self._run_device(d, delay), name=d.thing))
        self._tasks.append(asyncio.create_task(self._write_status_forever(), name="status"))
        self.log.info("fleet started", devices=len(self.devices), bootstrap=bootstrap.urls)

    def _transport(self) -> Transport:
        if self.sim.protocol == "mqtt":
            from simulator.mqtt_transport import MqttTransport

            creds = {s.thing: (Path(s.certificate), Path(s.key)) for s in self.specs if s.certificate}
            return MqttTransport(self.cfg, self.sim, creds)
        return LocalTransport(self.cfg, self.sim.max_in_flight)

    async def _run_device(self, device: Device, delay: float) -> None:
        await asyncio.sleep(delay)
        while True:
            try:
                await device.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one device must not stop the fleet; it reboots
                self.log.exception("device crashed, rebooting", thing=device.thing)
                device.state = "booting"
                await asyncio.sleep(1)

    async def _write_status_forever(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(self.sim.status_interval_seconds)

    async def stop(self) -> None:
        """Stop every device. A device whose stop was swallowed on its way out is cancelled again, and
        named: Python 3.11's `asyncio.wait_for` lost such stops inside the MQTT client (seen once in a
        few hundred; the transport no longer uses it), and a library could still do the same."""
        pending, attempt = set(self._tasks), 0
        while pending and attempt < 4:
            attempt += 1
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=STOP_GRACE_SECONDS)
            if pending:
                self.log.warning(
                    "devices still running after a stop",
                    attempt=attempt,
                    things=sorted(t.get_name() for t in pending),
                )
        self._tasks.clear()
        for d in self.devices:
            d.state = "stopped"
        self.stopped = True
        self.write_status()
        if self._session is not None:
            await self._session.close()
        if self.transport is not None:
            await self.transport.close()

    def snapshot(self) -> dict:
        counts = Counter((d.region, d.state) for d in self.devices)
        self._gauge_keys = Stats.publish_states(dict(counts), self._gauge_keys)
        by_region: dict[str, dict[str, int]] = {}
        for (region, state), n in sorted(counts.items()):
            by_region.setdefault(region, {})[state] = n
        return {
            "deployment": self.cfg.name,
            "pid": os.getpid(),
            "updated": time.time(),
            "started": self.started,
            "stopped": self.stopped,
            "devices": len(self.devices),
            "faulty": dict(Counter(d.spec.fault for d in self.devices if d.spec.fault)),
            "by_region": by_region,
            "totals": dict(self.stats.totals),
        }

    def write_status(self) -> dict:
        snap = self.snapshot()
        if self.status_file is not None:
            self.status_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(snap, indent=1))
            tmp.replace(self.status_file)
        return snap


def read_status(cfg: DeploymentConfig) -> dict | None:
    """The last snapshot a running (or stopped) simulator wrote, with `running` checked by pid."""
    path = status_path(cfg)
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        snap = json.loads(path.read_text())
        try:
            os.kill(int(snap["pid"]), 0)
            snap["running"] = not snap.get("stopped", False)
        except (ProcessLookupError, PermissionError, ValueError, KeyError):
            snap["running"] = False
        return snap
    return None
