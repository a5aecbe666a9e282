"""N MQTT devices over mutual TLS against one rehearsal region: which client library, and what it costs.

python bench/mqtt_bench.py --devices 1000 [--clients aiomqtt gmqtt] [--updates 3]

Starts one region emulator (moto + its amqtt broker), registers N devices with their own
certificates, then for each client library in turn, in this one process: connects every device
(at most 64 handshakes at a time), has each device make `--updates` shadow updates over MQTT
(round trip: publish `$aws/things/<t>/shadow/update` to `/update/accepted`), and disconnects.
Reported per library: connect time p50/p95, the round trip p50/p95, the client process's CPU per
device connected and per update, and the broker process's CPU and RSS; meanwhile a thread times
DescribeThing over HTTP, next to the same call on the idle emulator (the ratio says whether the
HTTP APIs stay quick under MQTT load). Results go to bench/results/mqtt.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from bench.simulator_bench import cpu_seconds, rss_mb  # noqa: E402
from rehearsal import pki  # noqa: E402
from rehearsal.processes import free_port, spawn_emulator, wait_http  # noqa: E402
from simulator.provision import policy_document  # noqa: E402

REGION = "us-east-1"


def pct(values: list[float], p: float) -> float:
    return round(statistics.quantiles(values, n=100)[int(p) - 1] * 1000, 1) if len(values) > 1 else 0.0


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def provision(url: str, folder: Path, devices: int) -> list[str]:
    iot = boto3.client(
        "iot",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ca = pki.create_ca()
    verification, _ = pki.issue_device_cert(ca, "v", cn=iot.get_registration_code()["registrationCode"])
    iot.register_ca_certificate(
        caCertificate=ca.cert_pem, verificationCertificate=verification, setAsActive=True
    )
    iot.create_policy(policyName="bench", policyDocument=json.dumps(policy_document("bench")))
    names = [f"bench-{i:05d}" for i in range(devices)]

    def one(name: str) -> None:
        cert, key = pki.issue_device_cert(ca, name)
        (folder / f"{name}.pem").write_text(cert)
        (folder / f"{name}.key").write_text(key)
        arn = iot.register_certificate(certificatePem=cert, caCertificatePem=ca.cert_pem, status="ACTIVE")[
            "certificateArn"
        ]
        iot.create_thing(thingName=name)
        iot.attach_policy(policyName="bench", target=arn)
        iot.attach_thing_principal(thingName=name, principal=arn)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))
    return names


def tls(folder: Path, name: str, root: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=root)
    ctx.load_cert_chain(folder / f"{name}.pem", folder / f"{name}.key")
    return ctx


class AiomqttDevice:
    def __init__(self, name: str, host: str, port: int, ctx: ssl.SSLContext):
        import aiomqtt

        self.name = name
        self.client = aiomqtt.Client(
            host, port, identifier=name, tls_context=ctx, protocol=aiomqtt.ProtocolVersion.V311, keepalive=60
        )
        self.waiters: dict[str, asyncio.Future] = {}
        self.reader: asyncio.Task | None = None

    async def connect(self) -> None:
        await self.client.__aenter__()
        await self.client.subscribe(f"$aws/things/{self.name}/shadow/update/accepted", qos=1)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for m in self.client.messages:
            token = json.loads(m.payload).get("clientToken")
            if (f := self.waiters.pop(token, None)) is not None:
                f.set_result(None)

    async def update(self, token: str) -> None:
        f = asyncio.get_running_loop().create_future()
        self.waiters[token] = f
        body = json.dumps({"state": {"reported": {"n": token}}, "clientToken": token})
        await self.client.publish(f"$aws/things/{self.name}/shadow/update", body, qos=1)
        await asyncio.wait_for(f, 30)

    async def close(self) -> None:
        if self.reader:
            self.reader.cancel()
        await self.client.__aexit__(None, None, None)


class GmqttDevice:
    def __init__(self, name: str, host: str, port: int, ctx: ssl.SSLContext):
        from gmqtt import Client

        self.name, self.host, self.port, self.ctx = name, host, port, ctx
        self.client = Client(name)
        self.client.set_config({"reconnect_retries": 0})
        self.client.on_message = self._on_message
        self.waiters: dict[str, asyncio.Future] = {}

    def _on_message(self, client, topic, payload, qos, properties) -> int:  # noqa: ANN001
        token = json.loads(payload).get("clientToken")
        if (f := self.waiters.pop(token, None)) is not None:
            f.set_result(None)
        return 0

    async def connect(self) -> None:
        from gmqtt.mqtt.constants import MQTTv311

        await self.client.connect(self.host, self.port, ssl=self.ctx, version=MQTTv311, keepalive=60)
        self.client.subscribe(f"$aws/things/{self.name}/shadow/update/accepted", qos=1)
        await asyncio.sleep(0.05)

    async def update(self, token: str) -> None:
        f = asyncio.get_running_loop().create_future()
        self.waiters[token] = f
        body = json.dumps({"state": {"reported": {"n": token}}, "clientToken": token})
        self.client.publish(f"$aws/things/{self.name}/shadow/update", body, qos=1)
        await asyncio.wait_for(f, 30)

    async def close(self) -> None:
        await self.client.disconnect()


CLIENTS = {"aiomqtt": AiomqttDevice, "gmqtt": GmqttDevice}


def http_probe(url: str, stop: threading.Event, out: list[float]) -> None:
    iot = boto3.client(
        "iot",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    while not stop.is_set():
        t = time.perf_counter()
        iot.describe_thing(thingName="bench-00000")
        out.append(time.perf_counter() - t)
        time.sleep(0.05)


async def run_client(kind: str, names: list[str], folder: Path, info: dict, updates: int, pid: int) -> dict:
    devices = [CLIENTS[kind](n, info["host"], info["port"], tls(folder, n, info["root_ca"])) for n in names]
    slots = asyncio.Semaphore(64)
    connect_times: list[float] = []

    async def connect(d) -> None:  # noqa: ANN001
        async with slots:
            t = time.perf_counter()
            await d.connect()
            connect_times.append(time.perf_counter() - t)

    cpu0, broker0, t0 = own_cpu(), cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(connect(d) for d in devices))
    connect_wall = time.perf_counter() - t0
    cpu1, broker1 = own_cpu(), cpu_seconds(pid)
    broker_rss = rss_mb(pid)
    round_trips: list[float] = []

    async def work(d, i: int) -> None:  # noqa: ANN001
        for u in range(updates):
            await asyncio.sleep((i % 100) / 100)
            t = time.perf_counter()
            await d.update(f"{i}-{u}")
            round_trips.append(time.perf_counter() - t)

    t1 = time.perf_counter()
    await asyncio.gather(*(work(d, i) for i, d in enumerate(devices)))
    update_wall = time.perf_counter() - t1
    cpu2, broker2 = own_cpu(), cpu_seconds(pid)
    await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
    return {
        "client": kind,
        "devices": len(devices),
        "connect_wall_s": round(connect_wall, 1),
        "connect_p50_ms": pct(connect_times, 50),
        "connect_p95_ms": pct(connect_times, 95),
        "client_cpu_ms_per_connect": round((cpu1 - cpu0) * 1000 / len(devices), 2),
        "update_round_trip_p50_ms": pct(round_trips, 50),
        "update_round_trip_p95_ms": pct(round_trips, 95),
        "updates_per_s": round(len(round_trips) / update_wall, 1),
        "client_cpu_ms_per_update": round((cpu2 - cpu1) * 1000 / max(1, len(round_trips)), 2),
        "broker_cpu_ms_per_connect": round((broker1 - broker0) * 1000 / len(devices), 2),
        "broker_cpu_ms_per_update": round((broker2 - broker1) * 1000 / max(1, len(round_trips)), 2),
        "broker_rss_mb_connected": round(broker_rss, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--clients", nargs="*", default=list(CLIENTS), choices=list(CLIENTS))
    args = parser.parse_args(argv if argv is not None else [])
    tmp = Path(tempfile.mkdtemp(prefix="mqtt-bench-"))
    port = free_port()
    proc = spawn_emulator(REGION, port, tmp / "emulator.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_emulator/health", timeout=60, proc=proc)
        info = json.loads(urllib.request.urlopen(f"{url}/_emulator/mqtt").read())  # noqa: S310
        names = provision(url, tmp, args.devices)
        idle: list[float] = []
        stop = threading.Event()
        probe = threading.Thread(target=http_probe, args=(url, stop, idle))
        probe.start()
        time.sleep(3)
        stop.set()
        probe.join()
        results = []
        for kind in args.clients:
            busy: list[float] = []
            stop = threading.Event()
            probe = threading.Thread(target=http_probe, args=(url, stop, busy))
            probe.start()
            result = asyncio.run(run_client(kind, names, tmp, info, args.updates, proc.pid))
            stop.set()
            probe.join()
            result["http_describe_thing_p50_ms_idle"] = pct(idle, 50)
            result["http_describe_thing_p50_ms_under_mqtt"] = pct(busy, 50)
            result["http_describe_thing_p95_ms_under_mqtt"] = pct(busy, 95)
            results.append(result)
            print(json.dumps(result))
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "mqtt.json").write_text(json.dumps(results, indent=1))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main(sys.argv[1:])
