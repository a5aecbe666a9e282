"""Shadows synced per second through ShadowSyncWorkflow, divided by a plain concurrent boto3 loop.

Both sides run in one process against the same two emulators, with the same number of shadows in
flight, each copying the classic and named shadows of its own equal-sized set of things into an
empty target. The plain loop is the floor of what any sync can cost here: boto3 clients, a thread
pool, the same merge, no Temporal, no rate limiter, no heartbeats. Target ratio: >= 0.8.

python -m bench shadow   (or: python -m bench.shadow_bench --things 150 --rounds 2 --concurrency 16)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from activities.context import Deployments
from activities.shadow_merge import merge_shadow
from core.config import DeploymentConfig, parse_config
from core.temporal import DATA_CONVERTER, SEARCH_ATTRIBUTES
from rehearsal.processes import free_port, spawn_emulator, tool_path, wait_http
from workflows.shadow_sync import ShadowSyncInput, ShadowSyncWorkflow

SOURCE, TARGET = "us-east-1", "us-west-2"
NAMED = ("config", "telemetry")


def _config(urls: dict[str, str], ca: Path) -> DeploymentConfig:
    return parse_config(
        {
            "deployment": {"name": "shadow-bench", "mode": "active-passive", "ca_certificate": str(ca)},
            "regions": {
                SOURCE: {"role": "primary", "endpoint_url": urls[SOURCE]},
                TARGET: {"role": "standby", "endpoint_url": urls[TARGET]},
            },
            "fleet": {"thing_group": "bench"},
            # quotas out of the way: this measures orchestration cost, not the limiter
            "quotas": {"default_rps": 100000, "per_api": {"ShadowPerThing": 100000}},
        },
        need_ca=False,
    )


def _client(service: str, region: str, url: str):
    return boto3.client(
        service, region_name=region, endpoint_url=url, aws_access_key_id="t", aws_secret_access_key="t"
    )


def _seed(urls: dict[str, str], things: list[str], concurrency: int) -> None:
    iot = {r: _client("iot", r, urls[r]) for r in (SOURCE, TARGET)}
    data = _client("iot-data", SOURCE, urls[SOURCE])

    def one(thing: str) -> None:
        for region in (SOURCE, TARGET):
            iot[region].create_thing(thingName=thing)
        for name in (None, *NAMED):
            state = {"reported": {"temp": 20, "name": name or "classic"}, "desired": {"mode": "eco"}}
            kwargs = {"shadowName": name} if name else {}
            data.update_thing_shadow(thingName=thing, payload=json.dumps({"state": state}).encode(), **kwargs)

    one(things[0])  # a fresh emulator initialises each backend on its first request: warm them one by one
    _client("iot-data", TARGET, urls[TARGET]).list_named_shadows_for_thing(thingName=things[0])
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, things[1:]))


def plain_loop(urls: dict[str, str], things: list[str], concurrency: int) -> int:
    """The baseline: the same reads, merge and writes from a thread pool, nothing else."""
    src, tgt = _client("iot-data", SOURCE, urls[SOURCE]), _client("iot-data", TARGET, urls[TARGET])

    def get(client, thing: str, name: str | None) -> dict | None:
        try:
            kwargs = {"shadowName": name} if name else {}
            return json.loads(client.get_thing_shadow(thingName=thing, **kwargs)["payload"].read())
        except client.exceptions.ResourceNotFoundException:
            return None

    def one(thing: str) -> int:
        copied = 0
        for name in [None, *src.list_named_shadows_for_thing(thingName=thing)["results"]]:
            target = get(tgt, thing, name)
            merge = merge_shadow(get(src, thing, name), target)
            if merge.payload is not None:
                if target:
                    merge.payload["version"] = target["version"]
                kwargs = {"shadowName": name} if name else {}
                tgt.update_thing_shadow(thingName=thing, payload=json.dumps(merge.payload).encode(), **kwargs)
                copied += 1
        return copied

    with ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(one, things))


async def compare(
    urls: dict[str, str], cfg: DeploymentConfig, args: argparse.Namespace
) -> tuple[float, float]:
    """Alternate plain loop and workflow rounds (each on fresh things); total shadows/s of each."""
    from temporalio.testing import WorkflowEnvironment

    from worker import build_worker

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=tool_path("temporal"),
        data_converter=DATA_CONVERTER,
        search_attributes=SEARCH_ATTRIBUTES,
    )
    seconds = {"plain": 0.0, "flow": 0.0}
    shadows = args.things * (1 + len(NAMED))
    try:
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        deployments = Deployments([cfg], max_pool_connections=args.concurrency)
        async with build_worker(env.client, queue, deployments, max_activity_threads=8):
            for n in range(args.rounds):
                things = [f"plain-{n}-{i:05d}" for i in range(args.things)]
                started = time.perf_counter()
                copied = await asyncio.to_thread(plain_loop, urls, things, args.concurrency)
                seconds["plain"] += time.perf_counter() - started
                assert copied == shadows, f"the plain loop copied {copied} of {shadows} shadows"

                # the same shadows in flight: pages_in_flight x concurrency; small pages keep the
                # last pages of a run from leaving threads idle
                inp = ShadowSyncInput(
                    cfg.name,
                    SOURCE,
                    TARGET,
                    things=[f"flow-{n}-{i:05d}" for i in range(args.things)],
                    page_size=25,
                    concurrency=args.concurrency // 4,
                    pages_in_flight=4,
                )
                started = time.perf_counter()
                result = await env.client.execute_workflow(
                    ShadowSyncWorkflow.run, inp, id=f"bench-{uuid.uuid4().hex[:6]}", task_queue=queue
                )
                seconds["flow"] += time.perf_counter() - started
                assert result.shadows_copied == shadows, f"the workflow copied {result.shadows_copied}"
    finally:
        await env.shutdown()
    total = shadows * args.rounds
    return total / seconds["flow"], total / seconds["plain"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--things", type=int, default=150, help="things per round and side")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each side")
    parser.add_argument("--concurrency", type=int, default=16, help="shadows in flight on both sides")
    args = parser.parse_args(argv or [])
    work = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    urls, procs = {}, []
    for region in (SOURCE, TARGET):
        port = free_port()
        procs.append(spawn_emulator(region, port, work / f"{region}.log"))
        urls[region] = f"http://127.0.0.1:{port}"
    try:
        for url, proc in zip(urls.values(), procs, strict=True):
            wait_http(f"{url}/_emulator/health", timeout=60, proc=proc)
        everything = [
            f"{side}-{n}-{i:05d}"
            for n in range(args.rounds)
            for side in ("plain", "flow")
            for i in range(args.things)
        ]
        _seed(urls, everything, args.concurrency)
        flow_rate, plain_rate = asyncio.run(compare(urls, _config(urls, work / "ca.pem"), args))
        print(
            f"shadow sync, {args.rounds} x {args.things} things (3 shadows each) per side, "
            f"{args.concurrency} in flight:\n"
            f"  ShadowSyncWorkflow  {flow_rate:8.1f} shadows/s\n"
            f"  plain boto3 loop    {plain_rate:8.1f} shadows/s\n"
            f"  ratio workflow/plain = {flow_rate / plain_rate:.2f}  (target >= 0.8)"
        )
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)


if __name__ == "__main__":
    main(sys.argv[1:])
