"""The simulated device against the real per-region emulators: boot, connect, publish, report, fail over.

Bootstrap answers come from a tiny HTTP server speaking the contract's JSON, so the device logic is
tested on its own; tests/test_simulator_e2e.py runs it against the real bootstrap service and Jobs.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import boto3
import pytest
import pytest_asyncio
from aiohttp import web

from core.config import ConfigError, DeploymentConfig
from rehearsal import faults
from rehearsal.processes import free_port
from simulator.config import FaultSettings, SimulatorConfig, load_simulator_config
from simulator.contract import ContractError, UnknownRegion, parse_assignment, parse_migrate_job
from simulator.device import DeviceSpec
from simulator.fleet import Fleet, assign_faults, read_status, status_path
from tests.conftest import make_config

EAST, WEST = "us-east-1", "us-west-2"
FAST = {
    "keep_alive_seconds": 0.1,
    "telemetry_interval_seconds": 0.1,
    "job_poll_seconds": 3600,  # jobs are tested in test_simulator_e2e.py
    "retry_timings_ms": [20, 40],
    "skew_range_ms": 10,
    "start_spread_seconds": 0,
    "status_interval_seconds": 0.1,
}


def answer(epoch: int, primary: str, retry: int = 3, thing: str = "d") -> dict:
    """A bootstrap answer in the contract's format, primary first."""
    regions = [primary, *[r for r in (EAST, WEST) if r != primary]]
    return {
        "epoch": epoch,
        "endpoints": [
            {
                "endpoint": f"local-ats.iot.{r}.amazonaws.com",
                "region": r,
                "CAs": [],
                "primary": r == primary,
                "retry": retry,
            }
            for r in regions
        ],
        "topics": {"configurations": f"cmd/test/config/{thing}/", "sensor": f"data/test/{thing}/"},
    }


class ContractServer:
    """One bootstrap URL: serves `answers[thing]`, 404 for unknown things, 503 while `down`."""

    def __init__(self) -> None:
        self.answers: dict[str, dict] = {}
        self.down = False
        self.hits = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.down:
            return web.json_response({"error": "region down"}, status=503)
        body = self.answers.get(request.match_info["thing"])
        return web.json_response(body) if body else web.json_response({"error": "unknown"}, status=404)


@pytest_asyncio.fixture
async def bootstrap_servers() -> AsyncIterator[list[ContractServer]]:
    servers, runners = [ContractServer(), ContractServer()], []
    for s in servers:
        app = web.Application()
        app.router.add_get("/v1/bootstrap/{thing}", s.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", s.port).start()
        runners.append(runner)
    yield servers
    for r in runners:
        await r.cleanup()


def create_things(emulators: dict[str, str], names: list[str], regions=(EAST, WEST)) -> None:
    for region in regions:
        iot = boto3.client(
            "iot",
            region_name=region,
            endpoint_url=emulators[region],
            aws_access_key_id="t",
            aws_secret_access_key="t",
        )
        for n in names:
            iot.create_thing(thingName=n)


def shadow(emulators: dict[str, str], region: str, thing: str) -> dict:
    data = boto3.client(
        "iot-data",
        region_name=region,
        endpoint_url=emulators[region],
        aws_access_key_id="t",
        aws_secret_access_key="t",
    )
    return json.loads(data.get_thing_shadow(thingName=thing)["payload"].read())


async def wait_for(pred: Callable[[], bool], within: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def make_fleet(config: DeploymentConfig, urls: list[str], things: list[str], tmp_path, **sim) -> Fleet:
    settings = SimulatorConfig(**{**FAST, "bootstrap_urls": urls, **sim})
    specs = [DeviceSpec(thing=t, sku="2563x01189") for t in things]
    return Fleet(config, settings, specs, status_file=tmp_path / "fleet" / "status.json")


# ---- pure logic ---------------------------------------------------------------------------------


def test_assignment_orders_primary_first_and_a_failed_region_last() -> None:
    a = parse_assignment(answer(3, WEST))
    assert [e.region for e in a.ordered()] == [WEST, EAST]
    assert [e.region for e in a.ordered(last=WEST)] == [EAST, WEST]
    assert a.epoch == 3 and a.topics["sensor"] == "data/test/d/"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"endpoints": [], "topics": {}}, "epoch"),
        ({"epoch": 1, "endpoints": [], "topics": {"sensor": "s"}}, "endpoints"),
        (
            {"epoch": 1, "endpoints": [{"endpoint": "x.example.com"}], "topics": {"sensor": "s"}},
            "names no region",
        ),
        ({**answer(1, EAST), "topics": {}}, "sensor"),
    ],
)
def test_bad_bootstrap_answers_are_refused_with_a_reason(raw: dict, why: str) -> None:
    with pytest.raises(ContractError, match=why):
        parse_assignment(raw)


def test_region_is_read_from_the_endpoint_host_when_missing() -> None:
    raw = answer(1, EAST)
    del raw["endpoints"][0]["region"]
    assert parse_assignment(raw).endpoints[0].region == EAST


def test_migrate_document_needs_an_endpoint_in_its_target_region() -> None:
    doc = {"operation": "migrate-region", "targetRegion": WEST, **answer(2, WEST)}
    assert parse_migrate_job(doc).target().region == WEST
    with pytest.raises(ContractError, match="no endpoint for targetRegion"):
        parse_migrate_job({**doc, "targetRegion": "eu-west-1"})
    with pytest.raises(ContractError, match="not a migrate-region job"):
        parse_migrate_job({**doc, "operation": "reboot"})


def test_a_job_that_lists_only_regions_is_completed_from_the_known_endpoints() -> None:
    known = parse_assignment(answer(2, EAST, retry=4))
    doc = {"operation": "migrate-region", "epoch": 3, "targetRegion": WEST, "regions": [WEST, EAST]}
    job = parse_migrate_job(doc, known)
    assert job.epoch == 3 and job.target() == replace(known.endpoints[1], primary=True)
    assert [e.region for e in job.assignment.ordered()] == [WEST, EAST]
    assert job.assignment.topics == known.topics
    with pytest.raises(UnknownRegion):
        parse_migrate_job({**doc, "targetRegion": "eu-west-1"}, known)


def test_faulty_share_is_reproducible_and_deals_every_kind() -> None:
    specs = [DeviceSpec(thing=f"d{i}") for i in range(100)]
    settings = FaultSettings(share=0.3, kinds=["never-migrate", "slow", "flaky"], seed=1)
    a, b = assign_faults(specs, settings), assign_faults(specs, settings)
    assert a == b
    kinds = [s.fault for s in a if s.fault]
    assert len(kinds) == 30 and set(kinds) == {"never-migrate", "slow", "flaky"}


def test_simulator_config_reports_unknown_settings_and_topic_fields(
    tmp_path, config: DeploymentConfig
) -> None:
    path = tmp_path / "simulator.toml"
    path.write_text('[simulator]\nkeep_alive = 3\npublish_topics = ["{nope}"]\n')
    with pytest.raises(ConfigError) as e:
        load_simulator_config(path, config)
    text = e.value.render()
    assert "simulator.keep_alive: unknown setting" in text
    assert "unknown field 'nope'" in text
    with pytest.raises(ConfigError, match="no bootstrap URL"):
        SimulatorConfig().bootstrap_list(config)  # the test deployment names no bootstrap_url


# ---- against the emulators ----------------------------------------------------------------------


async def test_device_boots_connects_publishes_and_reports(
    emulators: dict[str, str], config: DeploymentConfig, bootstrap_servers, tmp_path
) -> None:
    things = ["dev-a", "dev-b"]
    create_things(emulators, things, regions=(EAST,))
    east = bootstrap_servers[0]
    east.answers = {t: answer(4, EAST, thing=t) for t in things}
    fleet = make_fleet(config, [east.url], things, tmp_path)
    await fleet.start()
    try:
        await wait_for(lambda: all(d.state == "connected" for d in fleet.devices), what="devices connected")
        await wait_for(lambda: fleet.stats.totals["telemetry_published"] >= 6, what="telemetry")
        first = shadow(emulators, EAST, "dev-a")
        conn = first["state"]["reported"]["connectivity"]
        assert conn["region"] == EAST and conn["epoch"] == 4
        assert conn["endpoint"] == f"local-ats.iot.{EAST}.amazonaws.com"
        assert first["state"]["reported"]["device"]["sku"] == "2563x01189"
        # the heartbeat keeps reporting every keep-alive
        await wait_for(
            lambda: shadow(emulators, EAST, "dev-a")["version"] > first["version"], what="heartbeat"
        )
        snap = fleet.write_status()
        assert snap["by_region"] == {EAST: {"connected": 2}}
        assert fleet.stats.totals["errors"] == 0
    finally:
        await fleet.stop()
    assert json.loads((tmp_path / "fleet" / "status.json").read_text())["by_region"] == {EAST: {"stopped": 2}}


async def test_an_older_bootstrap_answer_is_ignored(
    emulators: dict[str, str], config: DeploymentConfig, bootstrap_servers, tmp_path
) -> None:
    create_things(emulators, ["dev-s"])
    east = bootstrap_servers[0]
    east.answers = {"dev-s": answer(7, EAST, thing="dev-s")}
    fleet = make_fleet(config, [east.url], ["dev-s"], tmp_path)
    await fleet.start()
    try:
        device = fleet.devices[0]
        await wait_for(lambda: device.state == "connected", what="connected")
        east.answers = {"dev-s": answer(6, WEST, thing="dev-s")}  # older epoch, pointing elsewhere
        await device._bootstrap()
        assert device.epoch == 7 and device.assignment is not None
        assert device.assignment.ordered()[0].region == EAST
        assert device.event_kinds()[-1] == "bootstrap-stale"
    finally:
        await fleet.stop()


async def test_devices_fail_over_on_their_own_within_the_retry_budget(
    emulators: dict[str, str], config: DeploymentConfig, bootstrap_servers, tmp_path
) -> None:
    things = [f"dev-f{i}" for i in range(5)]
    create_things(emulators, things)
    east, west = bootstrap_servers
    for s in (east, west):
        s.answers = {t: answer(2, EAST, retry=3, thing=t) for t in things}
    fleet = make_fleet(config, [east.url, west.url], things, tmp_path)
    await fleet.start()
    try:
        await wait_for(lambda: all(d.region == EAST and d.state == "connected" for d in fleet.devices))
        hits_before = west.hits
        faults.set_fault(emulators[EAST], "outage")
        east.down = True  # the bootstrap service of a region that is down answers 503
        t0 = time.monotonic()
        await wait_for(
            lambda: all(d.region == WEST and d.state == "connected" for d in fleet.devices), what="failover"
        )
        took = time.monotonic() - t0
    finally:
        await fleet.stop()
    # budget: one keep-alive to notice, the retry timings (+skew) between the 3 attempts, and the calls
    # themselves (generous: the shared test machine is slow)
    budget = FAST["keep_alive_seconds"] + (20 + 40 + 2 * 10) / 1000 + 6 * 1.0
    assert took < budget, f"failover took {took:.2f}s, budget {budget:.2f}s"
    assert west.hits > hits_before  # re-bootstrapped from the next bootstrap URL
    for d in fleet.devices:
        kinds = d.event_kinds()
        lost = kinds.index("link-error")
        exhausted = kinds.index("retries-exhausted")
        # exactly `retry` (3) consecutive failures in the primary: the lost link and 2 reconnects
        assert kinds[lost:exhausted] == ["link-error", "connect-failed", "connect-failed"], kinds
        assert kinds[exhausted + 1] == "bootstrap", kinds  # re-bootstrap first...
        assert kinds[exhausted + 2 : exhausted + 4] == ["connected", "failover"], (
            kinds
        )  # ...then the next one
    assert fleet.stats.totals["failovers"] == len(things)
    conn = shadow(emulators, WEST, "dev-f0")["state"]["reported"]["connectivity"]
    assert conn["region"] == WEST and conn["epoch"] == 2


async def test_slow_and_flaky_devices_get_there_late_or_with_errors(
    emulators: dict[str, str], config: DeploymentConfig, bootstrap_servers, tmp_path
) -> None:
    create_things(emulators, ["dev-slow", "dev-flaky", "dev-ok"], regions=(EAST,))
    east = bootstrap_servers[0]
    east.answers = {t: answer(1, EAST, retry=50, thing=t) for t in ("dev-slow", "dev-flaky", "dev-ok")}
    settings = SimulatorConfig(
        **{**FAST, "bootstrap_urls": [east.url]},
        faults=FaultSettings(share=0, slow_ms=1000, flaky_error_rate=0.5),
    )
    specs = [
        DeviceSpec("dev-slow", fault="slow"),
        DeviceSpec("dev-flaky", fault="flaky"),
        DeviceSpec("dev-ok"),
    ]
    fleet = Fleet(config, settings, specs)
    started = time.monotonic()
    await fleet.start()
    try:
        slow, flaky, ok = fleet.devices
        await wait_for(lambda: ok.state == "connected", what="the healthy device")
        assert slow.state != "connected"  # bootstrap and connect each wait slow_ms first
        await wait_for(
            lambda: slow.state == "connected" and flaky.state == "connected", what="the faulty ones"
        )
        assert time.monotonic() - started >= 2.0
        await wait_for(
            lambda: flaky.event_kinds().count("link-error") + flaky.event_kinds().count("connect-failed") > 0
        )
    finally:
        await fleet.stop()
    assert all(k not in ok.event_kinds() for k in ("link-error", "connect-failed"))


def test_status_file_is_read_back_with_liveness(emulator_urls: dict[str, str], local_ca, tmp_path) -> None:
    (tmp_path / "ca.pem").write_text(local_ca.cert_pem)
    cfg = make_config(emulator_urls, tmp_path / "ca.pem", local={"state_dir": str(tmp_path)})
    assert read_status(cfg) is None
    path = status_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": 999_999_999, "devices": 1, "by_region": {}}))
    assert read_status(cfg)["running"] is False
    path.write_text(json.dumps({"pid": os.getpid(), "devices": 1, "by_region": {}}))
    assert read_status(cfg)["running"] is True
