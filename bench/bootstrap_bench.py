"""Bootstrap boot storm: requests per second of the local service vs a plain DynamoDB get per request.

1,000 distinct devices ask the service of one region. Measured side by side in one run, against one
emulator, with the same client concurrency: the service with its cache off (every answer reads the
registry and the table), with its cache on (cold: each device's first request; warm: a repeat, as
when devices retry), and the baseline of one boto3 DynamoDB get_item per request. Printed as ratios
to the baseline, with p99 latencies.

python -m bench bootstrap
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import boto3
from botocore.config import Config

from activities.bootstrap import BootstrapActivities, FlipBootstrapInput
from activities.context import Deployments
from core.aws import LOCAL_CREDENTIALS
from core.bootstrap_records import to_item
from core.config import load_config
from rehearsal import pki
from rehearsal.processes import free_port, spawn_emulator, spawn_python, wait_http

DEVICES = 1000
CONCURRENCY = 16
REGIONS = ("us-east-1", "us-west-2")


def _config(folder: Path, emulator: str) -> Path:
    """Both regions on one emulator: the service only reads its own region; endpoints are fixed."""
    (folder / "ca.pem").write_text(pki.create_ca().cert_pem)
    lines = ['[deployment]\nname = "bench"\nmode = "active-passive"\nca_certificate = "ca.pem"']
    for i, r in enumerate(REGIONS):
        role = "primary" if i == 0 else "standby"
        lines.append(
            f'[regions.{r}]\nrole = "{role}"\nendpoint_url = "{emulator}"\n'
            f'iot_endpoint = "bench-ats.iot.{r}.amazonaws.com"'
        )
    lines.append('[fleet]\nthing_group = "bench-fleet"\napplication = "bench"')
    path = folder / "deployment.toml"
    path.write_text("\n\n".join(lines) + "\n")
    return path


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _http_storm(url: str, things: list[str]) -> tuple[float, float]:
    """(requests per second, p99 seconds) of GETs for `things` with CONCURRENCY clients."""
    latencies: list[float] = []
    queue = list(reversed(things))
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while queue:
                thing = queue.pop()
                t0 = time.perf_counter()
                async with session.get(f"{url}/v1/bootstrap/{thing}") as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{thing}: HTTP {resp.status}")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - t0
    return len(things) / elapsed, _p99(latencies)


def _thread_storm(call: Callable[[int], object], n: int) -> tuple[float, float]:
    latencies: list[float] = []

    def one(i: int) -> None:
        t0 = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - t0), _p99(latencies)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bootstrap-bench-"))
    procs = []
    try:
        port = free_port()
        emulator = f"http://127.0.0.1:{port}"
        procs.append(spawn_emulator(REGIONS[0], port, folder / "emulator.log"))
        wait_http(f"{emulator}/_emulator/health", timeout=60, proc=procs[0])
        config_path = _config(folder, emulator)
        cfg = load_config(config_path)
        deployments = Deployments([cfg])
        things = [f"bench-{i:04d}" for i in range(DEVICES)]
        plain = boto3.Session(region_name=REGIONS[0], **LOCAL_CREDENTIALS)  # no rate limiter: the baseline
        pool = Config(max_pool_connections=CONCURRENCY)
        iot = plain.client("iot", endpoint_url=emulator, config=pool)
        _thread_storm(lambda i: iot.create_thing(thingName=things[i]), DEVICES)
        BootstrapActivities(deployments).flip_bootstrap(
            FlipBootstrapInput(cfg.name, 1, REGIONS[0], list(REGIONS), reason="bench")
        )
        urls = {}
        for label, ttl in (("uncached", "0"), ("cached", "300")):
            p = free_port()
            urls[label] = f"http://127.0.0.1:{p}"
            args = [
                "--config",
                str(config_path),
                "--region",
                REGIONS[0],
                "--port",
                str(p),
                "--cache-ttl",
                ttl,
            ]
            procs.append(spawn_python("bootstrap.server", args, folder / f"bootstrap-{label}.log"))
            wait_http(f"{urls[label]}/healthz", timeout=60, proc=procs[-1])

        ddb = plain.client("dynamodb", endpoint_url=emulator, config=pool)
        key = to_item({"scope": "default"})
        results = {
            "dynamodb get_item": _thread_storm(
                lambda _: ddb.get_item(TableName=cfg.bootstrap_table, Key=key), DEVICES
            ),
            "service, cache off": asyncio.run(_http_storm(urls["uncached"], things)),
            "service, cache cold": asyncio.run(_http_storm(urls["cached"], things)),
            "service, cache warm": asyncio.run(_http_storm(urls["cached"], things)),
        }
        base = results["dynamodb get_item"][0]
        print(f"{DEVICES} distinct devices, {CONCURRENCY} concurrent clients, one emulator (moto) process")
        print(f"  {'':<22} {'req/s':>8} {'vs get_item':>12} {'p99 ms':>8}")
        for label, (rps, p99) in results.items():
            print(f"  {label:<22} {rps:>8.0f} {rps / base:>11.2f}x {p99 * 1000:>8.1f}")
        cached, uncached = results["service, cache warm"][0], results["service, cache off"][0]
        print(f"  cache warm vs cache off: {cached / uncached:.1f}x")
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=15)


if __name__ == "__main__":
    main()
