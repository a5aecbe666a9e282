"""The worker: runs every workflow and activity of the failover controller for one or more deployments.

Runs against the local dev server, a self-hosted cluster (mTLS) or Temporal Cloud (API key):
    python worker.py --config deploy/local/deployment.toml [--address HOST:PORT] [--namespace NS]
TLS and API key come from TEMPORAL_TLS_CERT / TEMPORAL_TLS_KEY / TEMPORAL_TLS_CA / TEMPORAL_API_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from temporalio.worker import Worker

from activities import all_activities
from activities.context import Deployments
from core import logs, metrics
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


async def run(
    configs: list[DeploymentConfig], conn: TemporalConnection, metrics_port: int, threads: int
) -> None:
    runtime = runtime_with_metrics(metrics_port + 1 if metrics_port else None)
    metrics.serve(metrics_port)
    client = await connect(conn, runtime)
    task_queue = configs[0].temporal.task_queue
    deployments = Deployments(configs, max_pool_connections=threads, client=client)
    worker = build_worker(client, task_queue, deployments, threads)
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
        sdk_metrics=f"http://127.0.0.1:{metrics_port + 1}/metrics" if metrics_port else None,
    )
    async with worker:
        await stop.wait()
        log.info("worker stopping: finishing in-flight activity attempts")


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
        help="Prometheus port for the app's metrics; the SDK's are on the next port (0: off)",
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
