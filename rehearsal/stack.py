"""The local rehearsal stack: Temporal dev server, one emulator per region, bootstrap services, worker.

Each process is recorded with its pid under the state folder, so `down` stops exactly what `up`
started, `up` is idempotent (a healthy process is left alone), and `status` says what runs.

One consistent world: the emulators keep their state in memory, so `down` also drops what would
outlive it and contradict it (Temporal's database, where the deployment believes regions hold
tables and registries; the fleet manifest, naming devices no registry knows): after `down` and
`up` the world is new, and `fleet provision` makes the fleet again. The customer CA, device keys and
the local root CA of the MQTT endpoints stay. `reset` wipes the whole state folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from core.aws import AwsClients
from core.config import DeploymentConfig
from core.prerequisites import REGISTRY_EVENT_TYPES
from core.temporal import SEARCH_ATTRIBUTES
from rehearsal import pki
from rehearsal.processes import port_open, tool_path, wait_http


@dataclass
class Component:
    """One process of the stack."""

    name: str
    argv: list[str]
    port: int
    health_url: str
    urls: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 60
    region: str = ""  # an AWS emulator: set up as deploy/aws/region.yaml sets up an AWS region


def _port(url: str) -> int:
    return urlparse(url).port or 80


def mqtt_port(http_port: int) -> int:
    """A region's MQTT port beside its HTTP one: 4566 -> 8883, 4567 -> 8884 (the emulator takes any
    free port if that one is busy; `/_emulator/mqtt` and the simulator always know the real one)."""
    return http_port + 4317 if http_port + 4317 <= 65535 else 0


def components(cfg: DeploymentConfig, config_path: str) -> list[Component]:
    """Everything `local up` starts, in start order."""
    state = cfg.state_dir
    py = os.environ.get("IOTFAILOVER_PYTHON") or str(Path(tool_path("python")))
    lp = cfg.local
    out = [
        Component(
            name="temporal",
            argv=[
                tool_path("temporal"),
                "server",
                "start-dev",
                "--db-filename",
                str(state / "temporal.db"),
                "--port",
                str(lp.temporal_port),
                "--ui-port",
                str(lp.temporal_ui_port),
                "--ip",
                "127.0.0.1",
                "--log-level",
                "warn",
                "--ui-disable-news-fetch",
                *[a for sa in SEARCH_ATTRIBUTES for a in ("--search-attribute", f"{sa.name}=Keyword")],
            ],
            port=lp.temporal_ui_port,
            health_url=f"http://127.0.0.1:{lp.temporal_ui_port}/",
            urls={"Temporal UI": cfg.temporal.ui_url, "Temporal frontend": cfg.temporal.address},
        )
    ]
    for name, region in cfg.regions.items():
        url = region.endpoint_url
        if not url:
            continue
        mqtt = mqtt_port(_port(url))
        out.append(
            Component(
                name=f"emulator-{name}",
                argv=[
                    *[py, "-m", "rehearsal.emulator", "--region", name, "--port", str(_port(url))],
                    *["--mqtt-port", str(mqtt), "--pki-dir", str(state / "pki")],
                ],
                port=_port(url),
                health_url=f"{url}/_emulator/health",
                urls={f"AWS emulator {name}": url, f"MQTT (mTLS) {name}": f"mqtts://127.0.0.1:{mqtt}"},
                region=name,
            )
        )
    for name, region in cfg.regions.items():
        if region.bootstrap_url and (Path(__file__).parent.parent / "bootstrap" / "server.py").exists():
            out.append(
                Component(
                    name=f"bootstrap-{name}",
                    argv=[
                        py,
                        "-m",
                        "bootstrap.server",
                        "--config",
                        config_path,
                        "--region",
                        name,
                        "--port",
                        str(_port(region.bootstrap_url)),
                    ],
                    port=_port(region.bootstrap_url),
                    health_url=f"{region.bootstrap_url}/healthz",
                    urls={f"Bootstrap {name}": f"{region.bootstrap_url}/v1/bootstrap/<thing>"},
                )
            )
    out.append(
        Component(
            name="worker",
            argv=[py, "worker.py", "--config", config_path, "--metrics-port", str(lp.worker_metrics_port)],
            port=lp.worker_metrics_port,
            health_url=f"http://127.0.0.1:{lp.worker_metrics_port}/metrics",
            urls={
                "Worker metrics": f"http://127.0.0.1:{lp.worker_metrics_port}/metrics",
                "Temporal SDK metrics": f"http://127.0.0.1:{lp.worker_metrics_port + 1}/metrics",
            },
            env={"IOTFAILOVER_LOG_FORMAT": "json"},
        )
    )
    if (state / "fleet" / "manifest.json").exists():  # the simulated fleet, once `fleet provision` ran
        out.append(
            Component(
                name="fleet",
                argv=[py, "-m", "simulator", "--config", config_path],
                port=lp.simulator_metrics_port,
                health_url=f"http://127.0.0.1:{lp.simulator_metrics_port}/metrics",
                urls={"Fleet metrics": f"http://127.0.0.1:{lp.simulator_metrics_port}/metrics"},
                env={"IOTFAILOVER_LOG_FORMAT": "json"},
            )
        )
    return out


def enable_registry_events(cfg: DeploymentConfig, region: str) -> None:
    """What the region stack's custom resource does in AWS: a fresh emulator, like a new account,
    publishes no registry events until their types are enabled."""
    AwsClients(cfg).iot(region).update_event_configurations(
        eventConfigurations={t: {"Enabled": True} for t in REGISTRY_EVENT_TYPES}
    )


class Stack:
    def __init__(self, cfg: DeploymentConfig, config_path: str):
        self.cfg = cfg
        self.config_path = config_path
        self.state = cfg.state_dir
        self.run_dir = self.state / "run"
        self.log_dir = self.state / "logs"
        self.root = Path(__file__).resolve().parent.parent

    def _pid_file(self, c: Component) -> Path:
        return self.run_dir / f"{c.name}.json"

    def _recorded_pid(self, c: Component) -> int | None:
        f = self._pid_file(c)
        if not f.exists():
            return None
        pid = json.loads(f.read_text())["pid"]
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
            return None
        return pid

    def _healthy(self, c: Component) -> bool:
        try:
            wait_http(c.health_url, timeout=1)
            return True
        except (TimeoutError, RuntimeError):
            return False

    def up(self, only: list[str] | None = None, echo=print) -> None:
        if not self.cfg.ca_certificate.exists():
            # The local customer CA; its key stays in the state folder, only ca.pem is ever sent to AWS.
            pki.load_or_create_ca(self.cfg.ca_certificate.parent)
            echo(f"  created the local customer CA in {self.cfg.ca_certificate.parent}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for c in components(self.cfg, self.config_path):
            if only and c.name not in only:
                continue
            pid = self._recorded_pid(c)
            if pid and self._healthy(c):
                echo(f"  {c.name:<22} already running (pid {pid})")
                continue
            if pid is None and port_open(c.port):
                raise RuntimeError(
                    f"port {c.port} for {c.name} is taken by a process this stack did not start; "
                    "stop it or change the port in the deployment config"
                )
            log = open(self.log_dir / f"{c.name}.log", "ab")  # noqa: SIM115 (handed to the child)
            proc = subprocess.Popen(
                c.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                env={**os.environ, "PYTHONPATH": str(self.root), "PYTHONUNBUFFERED": "1", **c.env},
                start_new_session=True,
            )
            self._pid_file(c).write_text(
                json.dumps({"pid": proc.pid, "argv": c.argv, "started": time.time()})
            )
            try:
                wait_http(c.health_url, timeout=c.startup_timeout, proc=proc)
            except (TimeoutError, RuntimeError) as e:
                raise RuntimeError(
                    f"{c.name} did not start: {e}; see {self.log_dir / (c.name + '.log')}"
                ) from None
            if c.region:
                enable_registry_events(self.cfg, c.region)
            echo(f"  {c.name:<22} started (pid {proc.pid})")

    def down(self, only: list[str] | None = None, echo=print) -> None:
        for c in reversed(components(self.cfg, self.config_path)):
            if only and c.name not in only:
                continue
            pid = self._recorded_pid(c)
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)
            self._pid_file(c).unlink(missing_ok=True)
            echo(f"  {c.name:<22} stopped")
        if not only:
            self.forget(echo)

    def running(self, name: str) -> bool:
        """Whether the component `name` was started by this stack and is still alive."""
        return any(c.name == name and self._recorded_pid(c) for c in components(self.cfg, self.config_path))

    def forget(self, echo=print) -> None:
        """Drop what must not outlive the emulators' state: Temporal's database and the fleet manifest."""
        gone = [self.state / n for n in ("temporal.db", "temporal.db-shm", "temporal.db-wal")]
        gone += [self.state / "fleet" / n for n in ("manifest.json", "status.json")]
        dropped = [p.name for p in gone if p.exists()]
        for p in gone:
            p.unlink(missing_ok=True)
        if dropped:
            echo(
                f"  forgot {', '.join(dropped)} with the emulators' state (run `fleet provision` after `up`)"
            )

    def reset(self, echo=print) -> None:
        """Stop everything and wipe the state folder: CA, keys, databases, logs."""
        self.down(echo=echo)
        if self.state.exists():
            shutil.rmtree(self.state)
        echo(f"  wiped {self.state}")

    def status(self) -> list[dict]:
        rows = []
        for c in components(self.cfg, self.config_path):
            pid = self._recorded_pid(c)
            rows.append(
                {
                    "name": c.name,
                    "pid": pid,
                    "running": pid is not None,
                    "healthy": pid is not None and self._healthy(c),
                    "urls": c.urls,
                }
            )
        return rows

    def urls(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for c in components(self.cfg, self.config_path):
            out.update(c.urls)
        return out
