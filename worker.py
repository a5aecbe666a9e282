"""The worker: runs every workflow and activity of the failover controller for one or more deployments.

Runs against the local dev server, a self-hosted cluster (mTLS) or Temporal Cloud (API key):
    python worker.py --config deploy/local/deployment.toml [--address HOST:PORT] [--namespace NS]
Metrics and health: http://HOST:9464/metrics and /healthz (200 while it polls), SDK metrics on :9465.
The connection takes the Temporal CLI's profile and TEMPORAL_* variables (core/temporal.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from temporalio.worker import Worker

from activities import all_activities
from activities.context import Deployments
from core import logs
from core.config import ConfigError, DeploymentConfig, load_config
from core.temporal import TemporalConnection, connect, runtime_with_metrics
from workflows import all_workflows

log = logs.get("worker")


def build_worker(client, task_queue: str, deployments: Deployments, max_activity_threads: int = 32) -> Worker:
    """A Worker with every workflow and activity; sync boto3 activities run on a bounded pool."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=all_workflows(),
        activities=all_activities(deployments),
        activity_executor=ThreadPoolExecutor(max_workers=max_activity_threads, thread_name_prefix="activity"),
        max_concurrent_activities=max_activity_threads,
    )


HEALTH_PATH = "/healthz"


class WorkerHealth:
    """What /healthz answers: 200 while the Temporal Worker runs (started, its pollers up, not shut
    down) and the event loop keeps stamping `beat`; 503 otherwise. /metrics is served by a thread
    and answers even while the loop is stuck, so it cannot tell a hung worker from a working one."""

    def __init__(self, beat_every: float = 5.0, stale_after: float = 30.0) -> None:
        self.beat_every, self.stale_after = beat_every, stale_after
        self.beat: float | None = None  # time.monotonic() of the loop's last stamp
        self.worker: Worker | None = None

    async def keep_beating(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(self.beat_every)

    def check(self) -> tuple[bool, str]:
        if self.worker is None or not self.worker.is_running:
            return False, "the Temporal worker is not running"
        if self.beat is None:
            return False, "the event loop has not stamped yet"
        stalled = time.monotonic() - self.beat
        if stalled > self.stale_after:
            return False, f"the event loop has not run for {stalled:.0f}s"
        return True, f"ok: polling {self.worker.task_queue}"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes every few seconds would drown the worker's own log."""


def serve_metrics(port: int, health: WorkerHealth, addr: str = "0.0.0.0") -> WSGIServer:
    """The app's metrics on /metrics and the worker's health on /healthz, from one thread off the loop."""
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != HEALTH_PATH:
            return metrics_app(environ, start_response)
        ok, why = health.check()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [f"{why}\n".encode()]

    server = make_server(addr, port, app, _Server, _Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


async def run(
    configs: list[DeploymentConfig], conn: TemporalConnection, metrics_port: int, threads: int
) -> None:
    runtime = runtime_with_metrics(metrics_port + 1 if metrics_port else None)
    health = WorkerHealth()
    if metrics_port:
        serve_metrics(metrics_port, health)
    client = await connect(conn, runtime)
    task_queue = configs[0].temporal.task_queue
    deployments = Deployments(configs, max_pool_connections=threads, client=client)
    worker = health.worker = build_worker(client, task_queue, deployments, threads)
    beating = asyncio.create_task(health.keep_beating())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker started",
        address=conn.address,
        namespace=conn.namespace,
        task_queue=task_queue,
        deployments=deployments.names(),
        metrics=f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None,
        health=f"http://127.0.0.1:{metrics_port}{HEALTH_PATH}" if metrics_port else None,
        sdk_metrics=f"http://127.0.0.1:{metrics_port + 1}/metrics" if metrics_port else None,
    )
    async with worker:
        await stop.wait()
        log.info("worker stopping: finishing in-flight activity attempts")
    beating.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", action="append", help="deployment config (repeat for several deployments)"
    )
    parser.add_argument("--address", help="Temporal frontend host:port (env TEMPORAL_ADDRESS)")
    parser.add_argument("--namespace", help="Temporal namespace (env TEMPORAL_NAMESPACE)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("IOTFAILOVER_METRICS_PORT", 9464)),
        help="port of the app's metrics (/metrics) and health (/healthz); the SDK's metrics are on "
        "the next port (0: off)",
    )
    parser.add_argument(
        "--threads", type=int, default=32, help="activity threads and AWS connections per region"
    )
    args = parser.parse_args(argv)
    logs.configure()
    try:
        configs = [load_config(p) for p in (args.config or ["deploy/local/deployment.toml"])]
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 2
    first = configs[0].temporal
    conn = TemporalConnection.from_env(first.address, first.namespace)  # flags > environment > config
    conn.address, conn.namespace = args.address or conn.address, args.namespace or conn.namespace
    try:
        asyncio.run(run(configs, conn, args.metrics_port, args.threads))
    except RuntimeError as e:  # e.g. Temporal unreachable
        log.error("worker failed", error=str(e))
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # temporalio/sdk-python#300: avoid an abort at interpreter exit
