"""The end-to-end stack for cutover and drill tests: the real worker, the real bootstrap services,
the emulators, registry replicated to the standby, and a simulated fleet connected in the primary:
each device over MQTT with its own certificate, as on AWS IoT Core."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest_asyncio
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.context import Deployments
from activities.registry import ReadyInput, RegistryActivities, ReplicateScopeInput
from core.aws import AwsClients
from core.config import DeploymentConfig, load_config
from core.models import CutoverProgress, CutoverRequest, CutoverStarted, RegionHealthChange
from rehearsal.processes import free_port, spawn_python, wait_http
from simulator.config import FaultSettings, SimulatorConfig
from simulator.fleet import Fleet, load_manifest
from simulator.provision import Provisioner
from tests.toml_files import e2e_regions, write_toml
from worker import build_worker
from workflows.deployment import DeploymentInput, DeploymentState

EAST, WEST = "us-east-1", "us-west-2"
DEVICES = 24
FAULTY = 2  # never migrate: they must show up as stragglers, not be counted as moved


def _config(emulators: dict[str, str], ca: Path, tmp: Path, ports: dict[str, int]) -> Path:
    regions = e2e_regions(emulators, ports)
    return write_toml(
        tmp / "deployment.toml",
        {
            "deployment": {
                "name": f"e2e-{uuid.uuid4().hex[:6]}",
                "mode": "active-passive",
                "ca_certificate": ca,
            },
            "regions": regions,
            "fleet": {"thing_group": "e2e-fleet", "policy_name": "e2e-policy", "application": "e2e"},
            "cutover": {
                "canary_size": 4,
                "wave_growth": 3,
                "verify_timeout_seconds": 20,
                "verify_poll_seconds": 1,
                "in_progress_timeout_minutes": 1,
                "cooldown_minutes": 0,
                "wave_success_percent": 50,
            },
            "local": {"state_dir": tmp / "state"},
        },
    )


class Stack:
    def __init__(self, cfg: DeploymentConfig, client: Client, task_queue: str, fleet: Fleet):
        self.cfg, self.client, self.task_queue, self.fleet = cfg, client, task_queue, fleet
        self.aws = AwsClients(cfg)
        self.handle: WorkflowHandle | None = None

    def start_worker(self) -> None:
        self._worker = build_worker(self.client, self.task_queue, Deployments([self.cfg], client=self.client))
        self._worker_run = asyncio.create_task(self._worker.run())

    async def stop_worker(self) -> None:
        """Like a killed worker process: in-flight activities are cancelled, nothing finishes them."""
        await self._worker.shutdown()
        await self._worker_run

    async def start_deployment(self) -> None:
        self.handle = await self.client.start_workflow(
            "DeploymentWorkflow",
            DeploymentInput(self.cfg),
            id=f"deployment-{self.cfg.name}",
            task_queue=self.task_queue,
        )
        for region in self.cfg.regions:  # what the region health monitors report
            await self.handle.signal(
                "region_health", RegionHealthChange(region, "Healthy", at=datetime.now(UTC))
            )
        await until(lambda: self.state(), lambda s: s and s.initialized and s.health[WEST].state == "Healthy")

    async def state(self) -> DeploymentState:
        return await self.handle.query("state", result_type=DeploymentState)

    async def cutover(self, **kw) -> CutoverStarted:
        return await self.handle.execute_update(
            "request_cutover", CutoverRequest(**kw), result_type=CutoverStarted
        )

    async def progress(self, cutover_id: str) -> CutoverProgress:
        return await self.client.get_workflow_handle(cutover_id).query(
            "progress", result_type=CutoverProgress
        )

    def regions_of_devices(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.fleet.devices:
            out[d.region] = out.get(d.region, 0) + 1
        return out

    def try_bootstrap_answer(self, region: str, thing: str) -> dict | None:
        try:
            return self.bootstrap_answer(region, thing)
        except urllib.error.HTTPError:
            return None

    def bootstrap_answer(self, region: str, thing: str) -> dict:
        with urllib.request.urlopen(f"{self.cfg.regions[region].bootstrap_url}/v1/bootstrap/{thing}") as r:
            return json.loads(r.read())


async def bounded(step, what: str, within: float = 60) -> None:
    """A teardown step that hangs fails the test with every task's stack instead of the whole run."""
    task = asyncio.ensure_future(step)
    await asyncio.wait([task], timeout=within)
    if not task.done():
        for t in asyncio.all_tasks():  # before cancelling, while the stuck tasks still show where
            t.print_stack(file=sys.stderr)
        task.cancel()
        await asyncio.wait([task])
        raise AssertionError(f"{what} hung for {within:g}s (task stacks on stderr)")
    task.result()


async def until(get, pred, within: float = 240, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await get()
        if pred(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value}")
        await asyncio.sleep(0.5)


@pytest_asyncio.fixture(loop_scope="session")
async def stack(
    emulators: dict[str, str],
    tmp_path: Path,
    temporal_env: WorkflowEnvironment,
    task_queue: str,
) -> AsyncIterator[Stack]:
    ports = {EAST: free_port(), WEST: free_port()}
    path = _config(emulators, tmp_path / "ca" / "ca.pem", tmp_path, ports)
    cfg = load_config(path, need_ca=False)  # `fleet provision` makes the local CA
    await asyncio.to_thread(Provisioner(cfg).run, DEVICES, lambda _: None)
    # the standby holds the registry before it is needed, as RegistryReplicationWorkflow keeps it
    registry = RegistryActivities(Deployments([cfg]))
    env = ActivityEnvironment()  # sync activities: run them off the event loop
    await asyncio.to_thread(env.run, registry.ensure_replication_ready, ReadyInput(cfg.name))
    await asyncio.to_thread(
        env.run, registry.replicate_scope, ReplicateScopeInput(cfg.name, EAST, WEST, cfg.fleet.thing_group)
    )
    procs = [
        spawn_python(
            "bootstrap.server",
            ["--config", str(path), "--region", r, "--port", str(ports[r]), "--cache-ttl", "0"],
            tmp_path / f"bootstrap-{r}.log",
        )
        for r in (EAST, WEST)
    ]
    fleet = None
    try:
        for r, p in zip((EAST, WEST), procs, strict=True):
            wait_http(f"http://127.0.0.1:{ports[r]}/healthz", timeout=60, proc=p)
        sim = SimulatorConfig(
            protocol="mqtt",
            keep_alive_seconds=1,
            telemetry_interval_seconds=5,
            job_poll_seconds=0.5,
            retry_timings_ms=[100, 200],
            skew_range_ms=50,
            start_spread_seconds=0,
            status_interval_seconds=1,
            faults=FaultSettings(share=FAULTY / DEVICES, kinds=["never-migrate"]),
        )
        fleet = Fleet(cfg, sim, load_manifest(sim.manifest_path(cfg)), status_file=tmp_path / "status.json")
        stack = Stack(cfg, temporal_env.client, task_queue, fleet)
        stack.start_worker()
        try:
            await stack.start_deployment()  # writes the first bootstrap answer the devices boot with
            await fleet.start()
            await until(
                lambda: asyncio.sleep(0, stack.regions_of_devices()),
                lambda c: c.get(EAST) == DEVICES,
                what="the fleet to connect in us-east-1",
            )
            yield stack
        finally:
            await bounded(stack.stop_worker(), "stopping the worker")
    finally:
        if fleet is not None:
            await bounded(fleet.stop(), "stopping the fleet", within=90)
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
