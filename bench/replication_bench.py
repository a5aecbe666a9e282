"""Things replicated per second: RegistryReplicationWorkflow vs a plain concurrent boto3 loop.

Both replicate the same provisioned fleet from the primary emulator to an emptied standby emulator,
making the same AWS calls per device (read the source certificate and its policies, register it with
the CA, record it in the ledger, attach its policy; read the thing's principals, record the thing in
the ledger, create it, add it to its group, attach its certificate) with the same number of threads.
Quotas are set high so the emulators, not the rate limiter, set the pace: the ratio measures what
Temporal, paging, heartbeats and the replicator's bookkeeping cost.
Run: python -m bench replication [--things N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from botocore.exceptions import ClientError

from activities.certificates import marker_items
from activities.context import Deployments
from activities.ledger import LEDGER_KEYS, ensure_table
from activities.registry import ReadyInput, RegistryActivities, registry_parity
from core.aws import LOCAL_CREDENTIALS, all_items
from core.config import DeploymentConfig, parse_config
from core.temporal import DATA_CONVERTER, SEARCH_ATTRIBUTES
from rehearsal import faults, pki
from rehearsal.processes import free_port, spawn_emulator, tool_path, wait_http
from tests.replication_fleet import provision
from worker import build_worker
from workflows.replication import ReconcileNowInput, RegistryReplicationWorkflow, ReplicationInput

E, W = "us-east-1", "us-west-2"
THREADS = 16
KINDS = ("plain", "workflow")


def _config(urls: dict[str, str], ca_file: Path) -> DeploymentConfig:
    return parse_config(
        {
            "deployment": {"name": f"bench-{uuid.uuid4().hex[:6]}", "mode": "active-passive", "ca_certificate": str(ca_file)},
            "regions": {
                E: {"role": "primary", "endpoint_url": urls[E]},
                W: {"role": "standby", "endpoint_url": urls[W]},
            },
            "fleet": {"thing_group": "test-fleet", "policy_name": "test-policy"},
            "quotas": {"default_rps": 100000, "per_api": {}},
        }
    )  # fmt: skip


def _client(service: str, region: str, url: str):
    return boto3.client(service, region_name=region, endpoint_url=url, **LOCAL_CREDENTIALS)


def plain_loop(cfg: DeploymentConfig, ca_pem: str) -> None:
    """What a script would do: the same calls, concurrently, no orchestration, no bookkeeping."""
    src, dst = _client("iot", E, cfg.regions[E].endpoint_url), _client("iot", W, cfg.regions[W].endpoint_url)
    ddb = _client("dynamodb", W, cfg.regions[W].endpoint_url)
    ensure_table(ddb, cfg.replication.ledger_table, LEDGER_KEYS)
    for t in all_items(src, "list_thing_types", "thingTypes"):
        dst.create_thing_type(
            thingTypeName=t["thingTypeName"], thingTypeProperties=t.get("thingTypeProperties", {})
        )
    groups = {}
    for g in all_items(src, "list_thing_groups", "thingGroups"):
        groups[g["groupName"]] = src.describe_thing_group(thingGroupName=g["groupName"])
    for name in ("test-fleet", "east", "east-a"):  # parents first, as provisioned
        parent = groups[name]["thingGroupMetadata"].get("parentGroupName")
        dst.create_thing_group(thingGroupName=name, **({"parentGroupName": parent} if parent else {}))
    for p in src.list_policies()["policies"]:
        doc = src.get_policy(policyName=p["policyName"])["policyDocument"]
        dst.create_policy(policyName=p["policyName"], policyDocument=doc)

    def cert(c: dict) -> None:
        policies = src.list_attached_policies(target=c["certificateArn"])["policies"]
        with contextlib.suppress(ClientError):  # absent in the emptied standby
            dst.describe_certificate(certificateId=c["certificateId"])
        pem = src.describe_certificate(certificateId=c["certificateId"])["certificateDescription"][
            "certificatePem"
        ]
        ddb.put_item(
            TableName=cfg.replication.ledger_table,
            Item={"scope": {"S": "bench#certificate"}, "name": {"S": c["certificateId"]}},
        )
        got = dst.register_certificate(certificatePem=pem, caCertificatePem=ca_pem, status="ACTIVE")
        for p in policies:
            dst.attach_policy(policyName=p["policyName"], target=got["certificateArn"])

    members = {
        t: g for g in groups for t in all_items(src, "list_things_in_thing_group", "things", thingGroupName=g)
    }

    def thing(t: dict) -> None:
        principals = src.list_thing_principals(thingName=t["thingName"])["principals"]
        ddb.put_item(  # the ownership record the replicator keeps per thing, as for certificates
            TableName=cfg.replication.ledger_table,
            Item={"scope": {"S": "bench#thing"}, "name": {"S": t["thingName"]}},
        )
        dst.create_thing(
            thingName=t["thingName"],
            thingTypeName=t["thingTypeName"],
            attributePayload={"attributes": t["attributes"]},
        )
        dst.add_thing_to_thing_group(thingGroupName=members[t["thingName"]], thingName=t["thingName"])
        for p in principals:
            cid = p.rsplit("/", 1)[-1]
            arn = dst.describe_certificate(certificateId=cid)["certificateDescription"]["certificateArn"]
            dst.attach_thing_principal(thingName=t["thingName"], principal=arn)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(cert, list(marker_items(src, "list_certificates", "certificates", 250))))
        list(pool.map(thing, list(all_items(src, "list_things", "things"))))


async def workflow_run(cfg: DeploymentConfig, env, task_queue: str) -> float:
    """Seconds from asking the running workflow for a reconcile to its result (its setup excluded)."""
    async with build_worker(env.client, task_queue, Deployments([cfg]), THREADS + 8):
        handle = await env.client.start_workflow(
            RegistryReplicationWorkflow.run,
            ReplicationInput(cfg.name, reconcile_interval_seconds=3600, reconcile_on_start=False, concurrency=THREADS),
            id=f"replication-{cfg.name}-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
        )  # fmt: skip
        for _ in range(600):  # until its CA, queues and tables are in place, as in a running deployment
            if (await handle.query(RegistryReplicationWorkflow.status)).pairs:
                break
            await asyncio.sleep(0.1)
        t0 = time.perf_counter()
        await handle.execute_update(RegistryReplicationWorkflow.reconcile_now, ReconcileNowInput())
        seconds = time.perf_counter() - t0
        await handle.terminate("bench done")
        return seconds


def _reset_standby(cfg: DeploymentConfig) -> None:
    faults.reset_emulator(cfg.regions[W].endpoint_url)


async def run(n: int, rounds: int) -> dict:
    from temporalio.testing import WorkflowEnvironment

    tmp = Path(tempfile.mkdtemp(prefix="replication-bench-"))
    procs, urls = [], {}
    for region in (E, W):
        port = free_port()
        procs.append(spawn_emulator(region, port, tmp / f"{region}.log"))
        urls[region] = f"http://127.0.0.1:{port}"
    env = None
    try:
        for url, proc in zip(urls.values(), procs, strict=True):
            wait_http(f"{url}/_emulator/health", timeout=60, proc=proc)
        ca = pki.create_ca()
        (tmp / "ca.pem").write_text(ca.cert_pem)
        cfg = _config(urls, tmp / "ca.pem")
        acts = RegistryActivities(Deployments([cfg]))
        aws = acts.deployments.aws(cfg.name)
        provision(aws.iot(E), ca, n)
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=tool_path("temporal"),
            search_attributes=SEARCH_ATTRIBUTES,
            data_converter=DATA_CONVERTER,
        )
        timings: dict[str, list[float]] = {"workflow": [], "plain": []}
        for _ in range(rounds):
            for kind in KINDS:
                _reset_standby(cfg)
                acts.ensure_replication_ready(ReadyInput(cfg.name))  # queue, tables and CA, as deployed
                if kind == "plain":
                    t0 = time.perf_counter()
                    await asyncio.to_thread(plain_loop, cfg, ca.cert_pem)
                    timings[kind].append(time.perf_counter() - t0)
                else:
                    timings[kind].append(await workflow_run(cfg, env, f"bench-{uuid.uuid4().hex[:6]}"))
                report = registry_parity(aws, E, W)
                if report.kinds["thing"].missing or report.kinds["certificate"].missing:
                    raise RuntimeError(f"{kind} run left the standby incomplete:\n{report.render()}")
        best = {k: min(v) for k, v in timings.items()}
        return {
            "things": n,
            "workflow_things_per_s": round(n / best["workflow"], 1),
            "plain_things_per_s": round(n / best["plain"], 1),
            "ratio": round(best["plain"] / best["workflow"], 2),
            "rounds": rounds,
        }
    finally:
        if env is not None:
            await env.shutdown()
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--things", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args, _ = parser.parse_known_args(argv if argv is not None else [])
    result = asyncio.run(run(args.things, args.rounds))
    print(json.dumps(result))
    print(
        f"replication: workflow {result['workflow_things_per_s']} things/s vs plain boto3 "
        f"{result['plain_things_per_s']} things/s: ratio {result['ratio']} (target >= 0.8)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
