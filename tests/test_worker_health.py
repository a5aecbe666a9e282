"""The worker's /healthz, which the Kubernetes probes and the image's HEALTHCHECK ask: 200 only while
the real Worker polls the dev server and its event loop runs; /metrics keeps answering either way."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from activities.context import Deployments
from core.config import load_config
from rehearsal import pki
from rehearsal.processes import free_port
from worker import HEALTH_PATH, WorkerHealth, build_worker, serve_metrics

ROOT = Path(__file__).resolve().parent.parent


def get(url: str) -> tuple[int, str]:
    """Status and body; 0 while nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (local only)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError) as e:
        return 0, str(e)


async def until(
    url: str, status: int, within: float = 30, proc: asyncio.subprocess.Process | None = None
) -> str:
    deadline = time.monotonic() + within
    while True:
        got, body = await asyncio.to_thread(get, url)
        if got == status:
            return body
        assert proc is None or proc.returncode is None, f"the worker exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{url} answered {got} {body!r}, not {status}"
        await asyncio.sleep(0.1)


async def test_healthz_follows_the_worker_and_its_event_loop(temporal_env: WorkflowEnvironment) -> None:
    health = WorkerHealth(beat_every=0.05, stale_after=0.5)
    server = serve_metrics(0, health, addr="127.0.0.1")
    base = f"http://127.0.0.1:{server.server_port}"
    beating = asyncio.create_task(health.keep_beating())
    try:
        assert "not running" in await until(base + HEALTH_PATH, 503)
        cfg = load_config(ROOT / "deploy" / "examples" / "active-active.toml", need_ca=False)
        task_queue = f"tq-{uuid.uuid4().hex[:10]}"
        worker = health.worker = build_worker(temporal_env.client, task_queue, Deployments([cfg]), 4)
        async with worker:
            assert task_queue in await until(base + HEALTH_PATH, 200)
            assert "iotfailover_aws_calls_total" in (await asyncio.to_thread(get, base + "/metrics"))[1]

            # A sync call that holds the loop (boto3 called from async code, a deadlock): /metrics
            # still answers from its thread, /healthz says the loop is stuck.
            during: dict[str, tuple[int, str]] = {}

            def probe_while_blocked() -> None:
                time.sleep(0.8)
                during["health"], during["metrics"] = get(base + HEALTH_PATH), get(base + "/metrics")

            prober = threading.Thread(target=probe_while_blocked)
            prober.start()
            time.sleep(2.0)  # noqa: ASYNC251 - blocking the event loop is the point
            prober.join()
            assert during["health"][0] == 503 and "event loop" in during["health"][1], during["health"]
            assert during["metrics"][0] == 200

            await until(base + HEALTH_PATH, 200, within=5)  # the loop runs again
        assert "not running" in await until(base + HEALTH_PATH, 503)
    finally:
        beating.cancel()
        server.shutdown()
        server.server_close()


def _two_free_ports() -> int:
    """A free port whose next one is free too: the worker puts the SDK's metrics on port + 1."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port + 1))
            except OSError:
                continue
        return port


async def test_worker_process_serves_healthz_on_its_metrics_port(
    temporal_env: WorkflowEnvironment, local_ca: pki.LocalCA, tmp_path: Path
) -> None:
    """`python worker.py` itself, as the image runs it: healthy once it polls, and still stops cleanly."""
    config = tmp_path / "deployment.toml"
    shutil.copy(ROOT / "deploy" / "examples" / "active-active.toml", config)
    (tmp_path / "customer-ca.pem").write_text(local_ca.cert_pem)  # the example's ca_certificate
    port = _two_free_ports()
    target = temporal_env.client.service_client.config.target_host
    env = {
        **os.environ,
        "IOTFAILOVER_METRICS_PORT": str(port),
        "TEMPORAL_NAMESPACE": temporal_env.client.namespace,
    }
    args = ["worker.py", "--config", str(config), "--address", target]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        body = await until(f"http://127.0.0.1:{port}{HEALTH_PATH}", 200, within=60, proc=proc)
        assert "ok: polling" in body
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(60):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()[-2000:]
