"""The simulated fleet end to end: the real bootstrap service, the emulators' IoT Jobs, the fault switch.

A migrate job moves a device and shows SUCCEEDED in the source region's control plane; a stale one
is left alone; with the primary region down, devices re-bootstrap and fail over on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from core.bootstrap_records import BootstrapRecord
from core.config import DeploymentConfig, load_config
from rehearsal import faults, pki
from rehearsal.processes import free_port, spawn_python, wait_http
from simulator.config import SimulatorConfig
from simulator.device import DeviceSpec
from simulator.fleet import Fleet
from tests.test_simulator import EAST, FAST, WEST, wait_for
from tests.toml_files import e2e_regions, write_toml

APP = "e2e"


def _client(service: str, emulators: dict[str, str], region: str):
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=emulators[region],
        aws_access_key_id="t",
        aws_secret_access_key="t",
    )


@pytest.fixture
def deployment(
    emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path
) -> Iterator[DeploymentConfig]:
    """A two-region deployment on the emulators with one real bootstrap service per region."""
    (tmp_path / "ca.pem").write_text(local_ca.cert_pem)
    ports = {r: free_port() for r in (EAST, WEST)}
    regions = e2e_regions(emulators, ports)
    data = {
        "deployment": {
            "name": f"e2e-{os.getpid()}",
            "mode": "active-passive",
            "ca_certificate": tmp_path / "ca.pem",
        },
        "regions": regions,
        "fleet": {"thing_group": "e2e-fleet", "application": APP},
        "local": {"state_dir": tmp_path / "state"},
    }
    path = write_toml(tmp_path / "deployment.toml", data)
    cfg = load_config(path)
    procs = [
        spawn_python(
            "bootstrap.server",
            ["--config", str(path), "--region", r, "--port", str(ports[r]), "--cache-ttl", "0"],
            tmp_path / f"bootstrap-{r}.log",
        )
        for r in (EAST, WEST)
    ]
    try:
        for r, p in zip((EAST, WEST), procs, strict=True):
            wait_http(f"http://127.0.0.1:{ports[r]}/healthz", timeout=60, proc=p)
        yield cfg
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)


def register(emulators: dict[str, str], things: list[str]) -> dict[str, str]:
    """The things in both regions, as registry replication leaves them; returns their east ARNs."""
    arns = {}
    for region in (EAST, WEST):
        iot = _client("iot", emulators, region)
        for t in things:
            arn = iot.create_thing(thingName=t, attributePayload={"attributes": {"application": APP}})[
                "thingArn"
            ]
            if region == EAST:
                arns[t] = arn
    return arns


def flip(emulators: dict[str, str], cfg: DeploymentConfig, epoch: int, primary: str) -> None:
    """Write the default bootstrap record in every region's table, as flip_bootstrap does."""
    order = [primary, *[r for r in (EAST, WEST) if r != primary]]
    record = BootstrapRecord(scope="default", epoch=epoch, primary=primary, order=order, retry=3)
    for region in (EAST, WEST):
        ddb = _client("dynamodb", emulators, region)
        with contextlib.suppress(ddb.exceptions.ResourceInUseException):
            ddb.create_table(
                TableName=cfg.bootstrap_table,
                KeySchema=[{"AttributeName": "scope", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "scope", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        ddb.put_item(TableName=cfg.bootstrap_table, Item=record.item())


def fleet_of(cfg: DeploymentConfig, tmp_path: Path, specs: list[DeviceSpec]) -> Fleet:
    sim = SimulatorConfig(**{**FAST, "job_poll_seconds": 0.2})  # bootstrap URLs from the deployment
    return Fleet(cfg, sim, specs, status_file=tmp_path / "status.json")


def execution(emulators: dict[str, str], job_id: str, thing: str) -> dict:
    """The job execution as the source region's control plane sees it."""
    return _client("iot", emulators, EAST).describe_job_execution(jobId=job_id, thingName=thing)["execution"]


def endpoints_doc(epoch: int, target: str, thing: str) -> dict:
    order = [target, *[r for r in (EAST, WEST) if r != target]]
    return {
        "operation": "migrate-region",
        "epoch": epoch,
        "targetRegion": target,
        "endpoints": [
            {
                "endpoint": f"e2e-ats.iot.{r}.amazonaws.com",
                "region": r,
                "CAs": [],
                "primary": r == target,
                "retry": 3,
            }
            for r in order
        ],
        "topics": {"configurations": f"cmd/{APP}/config/{thing}/", "sensor": f"data/{APP}/{thing}/"},
    }


async def test_a_migrate_job_moves_the_device_and_succeeds_in_the_source_region(
    emulators: dict[str, str], deployment: DeploymentConfig, tmp_path: Path
) -> None:
    things = ["m-contract", "m-regions", "m-straggler"]
    arns = register(emulators, things)
    fleet = fleet_of(
        deployment,
        tmp_path,
        [DeviceSpec("m-contract"), DeviceSpec("m-regions"), DeviceSpec("m-straggler", fault="never-migrate")],
    )
    await fleet.start()
    try:
        await wait_for(lambda: all(d.region == EAST and d.state == "connected" for d in fleet.devices))
        assert all(d.epoch == 0 for d in fleet.devices)  # never flipped: the config's primary
        flip(emulators, deployment, 1, WEST)  # the cutover flips bootstrap before its job waves
        # the device contract's document, and the cutover's (region order; endpoints left to bootstrap)
        documents = {
            "m-contract": endpoints_doc(1, WEST, "m-contract"),
            "m-regions": {
                "operation": "migrate-region",
                "epoch": 1,
                "targetRegion": WEST,
                "regions": [WEST, EAST],
            },
            "m-straggler": endpoints_doc(1, WEST, "m-straggler"),
        }
        iot = _client("iot", emulators, EAST)
        for t in things:
            iot.create_job(jobId=f"job-{t}", targets=[arns[t]], document=json.dumps(documents[t]))
        moved = [d for d in fleet.devices if d.thing != "m-straggler"]
        await wait_for(
            lambda: all(d.region == WEST and d.state == "connected" for d in moved), what="migration"
        )
        await wait_for(lambda: fleet.stats.totals["migrations_refused"] == 1, what="the straggler's refusal")
    finally:
        await fleet.stop()
    for d in moved:
        ex = execution(emulators, f"job-{d.thing}", d.thing)
        assert ex["status"] == "SUCCEEDED", ex
        assert ex["statusDetails"]["detailsMap"] == {"region": WEST, "epoch": "1"}
        reported = json.loads(
            _client("iot-data", emulators, WEST).get_thing_shadow(thingName=d.thing)["payload"].read()
        )
        conn = reported["state"]["reported"]["connectivity"]
        assert (conn["region"], conn["epoch"], conn["endpoint"]) == (
            WEST,
            1,
            f"e2e-ats.iot.{WEST}.amazonaws.com",
        )
        assert d.epoch == 1
    straggler = fleet.devices[2]
    assert (
        straggler.region == EAST
        and execution(emulators, "job-m-straggler", "m-straggler")["status"] == "QUEUED"
    )
    assert fleet.stats.totals["migrations_succeeded"] == 2


async def test_a_job_for_the_region_the_device_is_in_succeeds_and_raises_its_epoch(
    emulators: dict[str, str], deployment: DeploymentConfig, tmp_path: Path
) -> None:
    """As for a device that failed over on its own before the controller's cutover caught up."""
    arns = register(emulators, ["h-1"])
    fleet = fleet_of(deployment, tmp_path, [DeviceSpec("h-1")])
    await fleet.start()
    try:
        device = fleet.devices[0]
        await wait_for(lambda: device.state == "connected", what="connected")
        doc = {"operation": "migrate-region", "epoch": 4, "targetRegion": EAST, "regions": [EAST, WEST]}
        _client("iot", emulators, EAST).create_job(
            jobId="job-here", targets=[arns["h-1"]], document=json.dumps(doc)
        )
        await wait_for(lambda: fleet.stats.totals["migrations_succeeded"] == 1, what="the job done")
        await wait_for(lambda: _reported_epoch(emulators, EAST, "h-1") == 4, what="the new epoch reported")
    finally:
        await fleet.stop()
    assert execution(emulators, "job-here", "h-1")["status"] == "SUCCEEDED"
    assert device.region == EAST and device.epoch == 4 and fleet.stats.totals["connections"] == 1


def _reported_epoch(emulators: dict[str, str], region: str, thing: str) -> int:
    payload = _client("iot-data", emulators, region).get_thing_shadow(thingName=thing)["payload"].read()
    return json.loads(payload)["state"]["reported"]["connectivity"]["epoch"]


async def test_a_job_older_than_the_device_epoch_is_ignored(
    emulators: dict[str, str], deployment: DeploymentConfig, tmp_path: Path
) -> None:
    arns = register(emulators, ["s-1"])
    flip(emulators, deployment, 3, EAST)
    fleet = fleet_of(deployment, tmp_path, [DeviceSpec("s-1")])
    await fleet.start()
    try:
        device = fleet.devices[0]
        await wait_for(lambda: device.state == "connected" and device.epoch == 3, what="boot at epoch 3")
        _client("iot", emulators, EAST).create_job(
            jobId="job-stale", targets=[arns["s-1"]], document=json.dumps(endpoints_doc(2, WEST, "s-1"))
        )
        await wait_for(lambda: fleet.stats.totals["migrations_stale"] == 1, what="the stale job seen")
        await asyncio.sleep(1)  # a few more job polls: the device keeps ignoring it
    finally:
        await fleet.stop()
    assert device.region == EAST and device.epoch == 3
    assert execution(emulators, "job-stale", "s-1")["status"] == "QUEUED"  # left untouched
    assert "migrating" not in device.event_kinds()


async def test_a_migration_that_cannot_connect_fails_with_a_reason_and_the_device_stays(
    emulators: dict[str, str], deployment: DeploymentConfig, tmp_path: Path
) -> None:
    arns = {}
    iot = _client("iot", emulators, EAST)
    for t in ("x-unreachable", "x-other-job"):  # registered in the primary only: west refuses them
        arns[t] = iot.create_thing(thingName=t, attributePayload={"attributes": {"application": APP}})[
            "thingArn"
        ]
    fleet = fleet_of(deployment, tmp_path, [DeviceSpec("x-unreachable"), DeviceSpec("x-other-job")])
    await fleet.start()
    try:
        await wait_for(lambda: all(d.state == "connected" for d in fleet.devices))
        iot.create_job(
            jobId="job-x", targets=[arns["x-unreachable"]], document=json.dumps(endpoints_doc(1, WEST, "x"))
        )
        iot.create_job(
            jobId="job-reboot", targets=[arns["x-other-job"]], document=json.dumps({"operation": "reboot"})
        )
        await wait_for(
            lambda: (
                fleet.stats.totals["migrations_failed"] == 1
                and fleet.stats.totals["migrations_rejected"] == 1
            ),
            what="both jobs answered",
        )
    finally:
        await fleet.stop()
    failed = execution(emulators, "job-x", "x-unreachable")
    assert failed["status"] == "FAILED"
    assert (
        "cannot connect to e2e-ats.iot.us-west-2.amazonaws.com"
        in failed["statusDetails"]["detailsMap"]["reason"]
    )
    device = fleet.devices[0]
    assert device.region == EAST and device.epoch == 0 and "migrated" not in device.event_kinds()
    assert execution(emulators, "job-reboot", "x-other-job")["status"] == "REJECTED"


async def test_devices_fail_over_on_their_own_through_the_real_bootstrap_service(
    emulators: dict[str, str], deployment: DeploymentConfig, tmp_path: Path
) -> None:
    things = [f"f-{i}" for i in range(4)]
    register(emulators, things)
    flip(emulators, deployment, 2, EAST)
    fleet = fleet_of(deployment, tmp_path, [DeviceSpec(t) for t in things])
    await fleet.start()
    try:
        await wait_for(lambda: all(d.region == EAST and d.state == "connected" for d in fleet.devices))
        faults.set_fault(emulators[EAST], "outage")
        await wait_for(
            lambda: all(d.region == WEST and d.state == "connected" for d in fleet.devices), 15, "failover"
        )
    finally:
        await fleet.stop()
    for d in fleet.devices:
        kinds = d.event_kinds()
        exhausted = kinds.index("retries-exhausted")
        assert kinds[exhausted + 1] == "bootstrap" and "failover" in kinds[exhausted:], kinds
        assert d.epoch == 2  # the west table's answer: same epoch, east still primary, so east went last
    assert fleet.stats.totals["failovers"] == len(things)
