"""The stack a run plays against, assembled in process as tests/e2e_stack.py does: one emulator per
region and a Temporal dev server shared by the runs of a campaign; per run a fresh deployment, its
bootstrap services, the real worker and a simulated MQTT fleet connected in the primary."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.context import Deployments
from activities.registry import ReadyInput, RegistryActivities, ReplicateScopeInput
from chaos.schedule import EAST, REGIONS, WEST
from core import workflow_ids
from core.config import DeploymentConfig, load_config
from core.models import CutoverRequest, CutoverStarted, HealthState, RegionHealthChange
from core.temporal import DATA_CONVERTER, SEARCH_ATTRIBUTES
from rehearsal import faults
from rehearsal.processes import free_port, spawn_emulator, spawn_python, tool_path, wait_http
from simulator.config import SimulatorConfig
from simulator.fleet import Fleet, load_manifest
from simulator.provision import Provisioner
from worker import build_worker
from workflows.deployment import DeploymentInput, DeploymentState

QUERY_SECONDS = 10.0  # a `state` query slower than this counts as not answered


class Infra:
    """The emulators and the Temporal dev server, started once per campaign."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.urls: dict[str, str] = {}
        self._procs: list[subprocess.Popen] = []
        self.env: WorkflowEnvironment | None = None
        self._owned = True

    @classmethod
    def existing(cls, folder: Path, urls: dict[str, str], env: WorkflowEnvironment) -> Infra:
        """Emulators and a dev server someone else runs (the test suite's session fixtures)."""
        infra = cls(folder)
        infra.urls, infra.env, infra._owned = dict(urls), env, False
        return infra

    async def start(self) -> None:
        for region in REGIONS:
            port = free_port()
            self._procs.append(spawn_emulator(region, port, self.folder / f"emulator-{region}.log"))
            self.urls[region] = f"http://127.0.0.1:{port}"
        for url, proc in zip(self.urls.values(), self._procs, strict=True):
            await asyncio.to_thread(wait_http, f"{url}/_emulator/health", 60, proc)
        self.env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=tool_path("temporal"),
            search_attributes=SEARCH_ATTRIBUTES,
            data_converter=DATA_CONVERTER,
            dev_server_startup_timeout=timedelta(seconds=60),
        )

    def reset(self) -> None:
        """Between runs: every resource forgotten, every fault cleared."""
        for url in self.urls.values():
            faults.reset_emulator(url)
            faults.set_fault(url, "clear")

    async def stop(self) -> None:
        if self.env is not None and self._owned:
            await self.env.shutdown()
        _kill(self._procs)


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """Nested dicts as TOML tables, values as JSON (which TOML reads the same)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    out = [f"[{prefix}]"] if prefix and scalars else []
    out += [f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in scalars.items()]
    out += [_toml(v, f"{prefix}.{k}" if prefix else k) for k, v in data.items() if isinstance(v, dict)]
    return "\n".join(out) + "\n"


def write_config(urls: dict[str, str], folder: Path, ports: dict[str, int]) -> Path:
    """A two-region deployment with the e2e stack's short cutover timings."""
    regions = {
        region: {
            "role": role,
            "endpoint_url": urls[region],
            "bootstrap_url": f"http://127.0.0.1:{ports[region]}",
            "iot_endpoint": f"chaos-ats.iot.{region}.amazonaws.com",
        }
        for region, role in ((EAST, "primary"), (WEST, "standby"))
    }
    data = {
        "deployment": {
            "name": f"chaos-{uuid.uuid4().hex[:6]}",
            "mode": "active-passive",
            "ca_certificate": folder / "ca" / "ca.pem",
        },
        "regions": regions,
        "fleet": {"thing_group": "chaos-fleet", "policy_name": "chaos-policy", "application": "chaos"},
        "cutover": {
            "canary_size": 3,
            "wave_growth": 3,
            "verify_timeout_seconds": 15,
            "verify_poll_seconds": 1,
            "in_progress_timeout_minutes": 1,
            "cooldown_minutes": 0,
            "wave_success_percent": 50,
        },
        "local": {"state_dir": folder / "state"},
    }
    path = folder / "deployment.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_toml(data))
    return path


@dataclass
class Outcome:
    """What a request to the deployment got: the cutover it started, or why not."""

    started: CutoverStarted | None = None
    refused: str = ""


class RunStack:
    """One run's deployment, bootstrap services, worker and fleet."""

    def __init__(self, infra: Infra, folder: Path, devices: int, faulty: int):
        self.infra, self.folder, self.devices, self.faulty = infra, folder, devices, faulty
        self.task_queue = f"chaos-{uuid.uuid4().hex[:8]}"
        self.procs: list[subprocess.Popen] = []
        self.fleet: Fleet | None = None
        self.worker_up = False
        self._switch = ThreadPoolExecutor(max_workers=2, thread_name_prefix="chaos-fault-switch")
        self.worker_changes = 0  # stops and starts so far: a sample spanning one saw no steady worker
        self.handle: WorkflowHandle | None = None

    @property
    def client(self) -> Client:
        assert self.infra.env is not None
        return self.infra.env.client

    async def start(self) -> None:
        ports = {r: free_port() for r in REGIONS}
        path = write_config(self.infra.urls, self.folder, ports)
        self.cfg: DeploymentConfig = load_config(path, need_ca=False)
        await asyncio.to_thread(Provisioner(self.cfg).run, self.devices, lambda _: None)
        registry, env = RegistryActivities(Deployments([self.cfg])), ActivityEnvironment()
        await asyncio.to_thread(env.run, registry.ensure_replication_ready, ReadyInput(self.cfg.name))
        scope = ReplicateScopeInput(self.cfg.name, EAST, WEST, self.cfg.fleet.thing_group)
        await asyncio.to_thread(env.run, registry.replicate_scope, scope)
        for r in REGIONS:
            args = ["--config", str(path), "--region", r, "--port", str(ports[r]), "--cache-ttl", "0"]
            self.procs.append(spawn_python("bootstrap.server", args, self.folder / f"bootstrap-{r}.log"))
        for r, p in zip(REGIONS, self.procs, strict=True):
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{ports[r]}/healthz", 60, p)
        self.start_worker()
        await self.start_deployment()
        sim = SimulatorConfig.model_validate(  # the e2e stack's fast device timings
            {
                "protocol": "mqtt",
                "keep_alive_seconds": 1,
                "telemetry_interval_seconds": 5,
                "job_poll_seconds": 0.5,
                "retry_timings_ms": [100, 200],
                "skew_range_ms": 50,
                "start_spread_seconds": 0,
                "status_interval_seconds": 1,
                "faults": {"share": self.faulty / self.devices, "kinds": ["never-migrate"]},
            }
        )
        manifest = load_manifest(sim.manifest_path(self.cfg))
        self.fleet = Fleet(self.cfg, sim, manifest, status_file=self.folder / "status.json")
        await self.fleet.start()
        await until(lambda: self.regions_of_devices().get(EAST) == self.devices, 120, "the fleet to connect")

    def start_worker(self) -> None:
        deployments = Deployments([self.cfg], client=self.client)
        self._worker = build_worker(self.client, self.task_queue, deployments, max_activity_threads=16)
        self._worker_run = asyncio.create_task(self._worker.run())
        self.worker_up, self.worker_changes = True, self.worker_changes + 1

    async def stop_worker(self) -> None:
        """Like a killed worker process: in-flight activities are cancelled, nothing finishes them."""
        self.worker_up, self.worker_changes = False, self.worker_changes + 1
        await asyncio.wait_for(self._worker.shutdown(), 60)
        await self._worker_run

    async def start_deployment(self) -> None:
        self.handle = await self.client.start_workflow(
            "DeploymentWorkflow",
            DeploymentInput(self.cfg),
            id=workflow_ids.deployment_id(self.cfg.name),
            task_queue=self.task_queue,
        )
        for region in REGIONS:  # what the region health monitors report
            await self.tell_health(region, "Healthy")

        async def ready() -> bool:
            s = await self.state()
            return bool(s and s.initialized and s.health[WEST].state == "Healthy")

        await until(ready, 60, "the deployment to initialize")

    async def tell_health(self, region: str, state: HealthState) -> None:
        assert self.handle is not None
        await self.handle.signal("region_health", RegionHealthChange(region, state, at=datetime.now(UTC)))

    async def state(self) -> DeploymentState | None:
        assert self.handle is not None
        query = self.handle.query("state", result_type=DeploymentState)
        return await asyncio.wait_for(query, QUERY_SECONDS)

    async def request(self, req: CutoverRequest) -> Outcome:
        assert self.handle is not None
        try:
            update = self.handle.execute_update("request_cutover", req, result_type=CutoverStarted)
            return Outcome(started=await asyncio.wait_for(update, 30))
        except Exception as e:  # refused by the validator or the handler, or no answer in time
            cause = getattr(e, "cause", None) or e  # an update's refusal is its cause
            return Outcome(refused=f"{type(cause).__name__}: {getattr(cause, 'message', '') or cause}"[:300])

    async def signal_cutover(self, cutover_id: str, name: str) -> str:
        handle = self.client.get_workflow_handle(cutover_id)
        arg = {"by": "chaos", "reason": "chaos"}
        try:
            await handle.signal(name, arg)
            return "sent"
        except Exception as e:  # e.g. the cutover has finished
            return f"not sent: {type(e).__name__}"

    async def set_fault(self, region: str, mode: str, latency_ms: int = 0, rate: float = 1.0) -> None:
        """On threads of its own: a busy default pool must not hold a fault past its end."""
        url = self.infra.urls[region]
        call = functools.partial(faults.set_fault, url, mode, latency_ms=latency_ms, rate=rate)
        await asyncio.get_running_loop().run_in_executor(self._switch, call)

    def regions_of_devices(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.fleet.devices if self.fleet else []:
            out[d.region] = out.get(d.region, 0) + 1
        return out

    def device_places(self) -> dict[str, tuple[str, str]]:
        """thing -> (state, region) as the simulated devices know it."""
        return {d.thing: (d.state, d.region) for d in self.fleet.devices} if self.fleet else {}

    async def stop(self) -> None:
        if self.worker_up:
            await self.stop_worker()
        if self.fleet is not None:
            await asyncio.wait_for(self.fleet.stop(), 90)
        _kill(self.procs)
        self._switch.shutdown(wait=False)


async def until(pred, within: float, what: str) -> None:
    """Poll a sync or async predicate every half second; TimeoutError naming `what`."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(0.5)
