"""What N simulated devices cost in one process: CPU (cores) and memory of the simulator alone.

python bench/simulator_bench.py --devices 1000 --window 60

Starts two region emulators and the bootstrap services on free ports, registers N things in both
regions, runs `python -m simulator` as its own process with the demo's timings (simulator.toml),
waits until every device is connected, then samples the simulator's CPU time and RSS from /proc
over the window, next to the rates it achieved (so a starved simulator shows as missed
heartbeats, not as a low CPU figure). It also measures, side by side in the same run, the client
CPU per data-plane call of the two transports considered: boto3 on a thread pool (chosen) and
aiohttp with botocore SigV4 signing. Results go to bench/results/simulator.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

from core.config import load_config  # noqa: E402
from rehearsal import pki  # noqa: E402
from rehearsal.processes import free_port, spawn_emulator, spawn_python, wait_http  # noqa: E402
from simulator.contract import Endpoint  # noqa: E402
from simulator.transport import LocalTransport  # noqa: E402

REGIONS = ("us-east-1", "us-west-2")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_deployment(tmp: Path, urls: dict[str, str], boot: dict[str, str], ca: pki.LocalCA) -> Path:
    (tmp / "ca.pem").write_text(ca.cert_pem)
    lines = ['[deployment]\nname = "bench"\nmode = "active-passive"', f'ca_certificate = "{tmp / "ca.pem"}"']
    for region, role in zip(REGIONS, ("primary", "standby"), strict=True):
        lines += [
            f'[regions.{region}]\nrole = "{role}"\nendpoint_url = "{urls[region]}"',
            f'bootstrap_url = "{boot[region]}"\niot_endpoint = "bench-ats.iot.{region}.amazonaws.com"',
        ]
    lines += ['[fleet]\nthing_group = "bench-fleet"\napplication = "bench"']
    lines += [f'[local]\nstate_dir = "{tmp / "state"}"\nsimulator_metrics_port = {free_port()}']
    path = tmp / "deployment.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def register_things(cfg_path: Path, names: list[str]) -> None:
    """The things in both regions, as registry replication leaves them."""
    from core.aws import AwsClients

    aws = AwsClients(load_config(cfg_path), max_pool_connections=16)
    attributes = {"attributes": {"application": "bench"}}
    with ThreadPoolExecutor(16) as pool:
        for region in REGIONS:
            create = partial(aws.iot(region).create_thing, attributePayload=attributes)
            list(pool.map(lambda n, create=create: create(thingName=n), names))


def status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def connected(snap: dict) -> int:
    return sum(s.get("connected", 0) for s in snap.get("by_region", {}).values())


async def transport_cost(cfg_path: Path, thing: str, calls: int) -> dict[str, float]:
    """Client CPU per UpdateThingShadow: boto3 in a thread pool vs aiohttp + SigV4, same run."""
    import aiohttp

    cfg = load_config(cfg_path)
    region = REGIONS[0]
    body = json.dumps({"state": {"reported": {"bench": 1}}}).encode()

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    transport = LocalTransport(cfg, 16)
    conn = await transport.connect(thing, Endpoint("x", region), [])
    await conn.report({"bench": 0})  # clients created before measuring
    c0 = cpu()
    await asyncio.gather(*(conn.report({"bench": i}) for i in range(calls)))
    boto = (cpu() - c0) / calls * 1000
    await transport.close()

    creds, url = Credentials("testing", "testing"), cfg.regions[region].endpoint_url
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:

        async def one() -> None:
            req = AWSRequest("POST", f"{url}/things/{thing}/shadow", data=body)
            SigV4Auth(creds, "iotdata", region).add_auth(req)
            async with sem, session.post(req.url, data=body, headers=dict(req.headers)) as r:
                await r.read()
                assert r.status == 200, r.status

        c0 = cpu()
        await asyncio.gather(*(one() for _ in range(calls)))
        aio = (cpu() - c0) / calls * 1000
    return {"boto3_threads_cpu_ms_per_call": round(boto, 3), "aiohttp_sigv4_cpu_ms_per_call": round(aio, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--window", type=float, default=60, help="seconds measured once all are connected")
    parser.add_argument("--keep-alive", type=float, default=30)
    parser.add_argument("--telemetry", type=float, default=15)
    parser.add_argument("--job-poll", type=float, default=10)
    parser.add_argument("--spread", type=float, default=10, help="seconds over which devices boot")
    parser.add_argument("--transport-calls", type=int, default=300)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="simbench-"))
    procs: list[subprocess.Popen] = []
    try:
        urls = {r: f"http://127.0.0.1:{free_port()}" for r in REGIONS}
        emus = {
            r: spawn_emulator(r, int(urls[r].rsplit(":", 1)[1]), tmp / f"emulator-{r}.log") for r in REGIONS
        }
        procs += emus.values()
        for r in REGIONS:
            wait_http(f"{urls[r]}/_emulator/health", 60, emus[r])
        boot = {r: f"http://127.0.0.1:{free_port()}" for r in REGIONS}
        cfg_path = write_deployment(tmp, urls, boot, pki.create_ca())
        names = [f"bench-{i:05d}" for i in range(args.devices)]
        register_things(cfg_path, names)
        for r in REGIONS:
            port = boot[r].rsplit(":", 1)[1]
            p = spawn_python(
                "bootstrap.server",
                ["--config", str(cfg_path), "--region", r, "--port", port],
                tmp / f"bootstrap-{r}.log",
            )
            procs.append(p)
            wait_http(f"{boot[r]}/healthz", 60, p)
        manifest = tmp / "manifest.json"
        manifest.write_text(json.dumps({"devices": [{"id": n} for n in names]}))
        (tmp / "simulator.toml").write_text(
            f'[simulator]\nmanifest = "{manifest}"\nkeep_alive_seconds = {args.keep_alive}\n'
            f"telemetry_interval_seconds = {args.telemetry}\njob_poll_seconds = {args.job_poll}\n"
            f"start_spread_seconds = {args.spread}\n"
        )
        sim = spawn_python("simulator", ["--config", str(cfg_path)], tmp / "simulator.log")
        procs.append(sim)
        status_file = tmp / "state" / "fleet" / "status.json"
        t0 = time.monotonic()
        while connected(status(status_file)) < args.devices:
            if sim.poll() is not None or time.monotonic() - t0 > 180 + args.devices / 20:
                raise RuntimeError(f"simulator did not connect every device; see {tmp / 'simulator.log'}")
            time.sleep(0.5)
        ramp = time.monotonic() - t0
        before, cpu0, emu0, w0 = (
            status(status_file),
            cpu_seconds(sim.pid),
            {r: cpu_seconds(p.pid) for r, p in emus.items()},
            time.monotonic(),
        )
        time.sleep(args.window)
        after, cpu1, wall = status(status_file), cpu_seconds(sim.pid), time.monotonic() - w0
        tb, ta = before.get("totals", {}), after.get("totals", {})
        expected = args.devices * (1 / args.keep_alive + 1 / args.telemetry + 1 / args.job_poll)
        result = {
            "devices": args.devices,
            "cores_available": os.cpu_count(),
            "load_average": os.getloadavg(),
            "ramp_seconds": round(ramp, 1),
            "window_seconds": round(wall, 1),
            "simulator_cpu_cores": round((cpu1 - cpu0) / wall, 3),
            "simulator_rss_mb": round(rss_mb(sim.pid), 1),
            "simulator_peak_rss_mb": round(rss_mb(sim.pid, "VmHWM"), 1),
            "emulator_cpu_cores": {
                r: round((cpu_seconds(p.pid) - emu0[r]) / wall, 3) for r, p in emus.items()
            },
            "expected_calls_per_second": round(expected, 1),
            "telemetry_per_second": round(
                (ta.get("telemetry_published", 0) - tb.get("telemetry_published", 0)) / wall, 1
            ),
            "errors_in_window": ta.get("errors", 0) - tb.get("errors", 0),
            "still_connected": connected(after),
            "failovers": ta.get("failovers", 0),
            "transport": asyncio.run(transport_cost(cfg_path, names[0], args.transport_calls)),
        }
        out = ROOT / "bench" / "results" / "simulator.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return 0
    finally:
        for p in reversed(procs):  # the simulator first, so it never sees its regions vanish
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
