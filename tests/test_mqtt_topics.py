"""The topics a device uses over MQTT, backed by the state boto3 sees: shadows, jobs with notify-next,
telemetry, presence and fleet-indexing connectivity; the fault switch's latency and throttle."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities.context import Deployments
from activities.jobs import JobActivities
from activities.verification import VerifyInput
from rehearsal import faults, pki
from simulator.mqtt_transport import _Client
from simulator.transport import TransportError
from tests.mqtt_support import EAST, build_world, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def world(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path):
    return build_world(emulators, local_ca, tmp_path)


async def test_shadow_over_mqtt_is_the_shadow_boto3_reads_and_http_updates_reach_the_device(world):
    thing = world.things[0]
    data = world.aws.iot_data(EAST)
    delta = f"$aws/things/{thing}/shadow/update/delta"
    conn = await world.connect(thing, subscribe=[delta])
    await conn.report({"connectivity": {"region": EAST}})
    shadow = json.loads(data.get_thing_shadow(thingName=thing)["payload"].read())
    assert shadow["state"]["reported"]["connectivity"] == {"region": EAST}
    # a desired change made over HTTP (as the controller's shadow sync does) is published as a delta
    data.update_thing_shadow(
        thingName=thing, payload=json.dumps({"state": {"desired": {"rate": 5}}}).encode()
    )
    got = await eventually(lambda: [b for t, b in conn.received if t == delta], what="the delta")
    assert got[0]["state"] == {"rate": 5}
    # oversize documents are refused as IoT Core refuses them (8 KB of state)
    with pytest.raises(TransportError, match="413"):
        await (await world.connect(thing)).report({"blob": "x" * 9000})


async def test_jobs_arrive_by_notify_next_and_their_outcome_is_what_the_control_plane_sees(world):
    thing = world.things[0]
    iot = world.aws.iot(EAST)
    conn = await world.connect(thing)
    assert await conn.pending_jobs() == []
    conn.notified.clear()
    thing_arn = iot.describe_thing(thingName=thing)["thingArn"]
    doc = {"operation": "migrate-region", "epoch": 3}
    iot.create_job(jobId="job-1", targets=[thing_arn], document=json.dumps(doc))
    await asyncio.wait_for(conn.notified.wait(), 10)  # notify-next, no polling
    assert await conn.pending_jobs() == ["job-1"]
    execution = await conn.job("job-1")
    assert (execution.status, execution.document) == ("QUEUED", doc)
    await conn.update_job("job-1", "IN_PROGRESS", {"step": "connecting"})
    await conn.update_job("job-1", "SUCCEEDED", {"region": EAST})
    described = iot.describe_job_execution(jobId="job-1", thingName=thing)["execution"]
    assert described["status"] == "SUCCEEDED"
    assert described["statusDetails"]["detailsMap"] == {"region": EAST}
    with pytest.raises(TransportError, match="InvalidStateTransition") as refused:
        await conn.update_job("job-1", "FAILED", {})
    assert not refused.value.retryable
    await conn.close()


async def test_telemetry_presence_and_fleet_indexing_connectivity(world):
    thing = world.things[0]
    iot = world.aws.iot(EAST)

    def connected(flag: bool) -> list[str]:
        return [
            t["thingName"] for t in iot.search_index(queryString=f"connectivity.connected:{flag}")["things"]
        ]

    assert thing in connected(False)  # never connected
    conn = await world.connect(thing)
    await eventually(lambda: thing in connected(True), what=f"{thing} indexed as connected")
    await conn.publish(f"data/test/{thing}/t", {"seq": 1})
    await conn.close()
    await eventually(lambda: thing in connected(False), what=f"{thing} indexed as disconnected")
    found = iot.search_index(queryString=f"thingName:{thing}")["things"][0]["connectivity"]
    assert found["connected"] is False and found["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"


async def test_publishing_outside_the_policy_closes_the_connection(world):
    conn = await world.connect(world.things[0])
    await conn.publish(f"data/test/{world.things[1]}/t", {"not": "mine"})  # QoS 1: no PUBACK comes back
    await asyncio.sleep(0.5)
    assert conn.lost is not None


async def test_latency_delays_packets_and_throttle_refuses(world, emulators):
    thing = world.things[0]
    conn = await world.connect(thing)
    start = time.monotonic()
    await conn.report({"n": 1})
    quick = time.monotonic() - start
    faults.set_fault(emulators[EAST], "latency", latency_ms=400)
    start = time.monotonic()
    await conn.report({"n": 2})
    assert time.monotonic() - start >= 0.4 > quick
    faults.set_fault(emulators[EAST], "throttle")
    with pytest.raises(TransportError):
        await conn.report({"n": 3})
    assert (await world.refused(thing)).retryable


async def test_verification_with_presence_confirms_only_devices_connected_in_the_target(world):
    """`cutover.verify_connected`: a device that reported its arrival and was then dropped is not
    confirmed; without the setting its report alone confirms it."""
    stays, dropped = world.things
    for thing in (stays, dropped):
        conn = await world.connect(thing)
        await conn.report({"connectivity": {"region": EAST, "epoch": 7, "since": 1}})
        if thing == dropped:
            await conn.close()
        else:
            kept = conn
    on = world.cfg.model_copy(
        update={"cutover": world.cfg.cutover.model_copy(update={"verify_connected": True})}
    )
    inp = VerifyInput(on.name, EAST, on.fleet.thing_group, EAST, epoch=7, timeout_seconds=3, poll_seconds=0.2)
    env = ActivityEnvironment()
    with_presence = await asyncio.to_thread(env.run, JobActivities(Deployments([on])).verify_devices, inp)
    by_report = await asyncio.to_thread(env.run, JobActivities(Deployments([world.cfg])).verify_devices, inp)
    await kept.close()
    assert (with_presence.confirmed, with_presence.pending_sample) == (1, [dropped])
    assert by_report.confirmed == 2


async def test_a_stop_arriving_with_the_awaited_answer_is_not_lost() -> None:
    """Python 3.11's `asyncio.wait_for` drops a cancel that lands as the awaited future completes
    (CPython gh-86296), and aiomqtt waits for every CONNACK and PUBACK with it: a device stopped as its
    PUBACK came in ran on, and the fleet's stop waited for it. The transport's client waits without it."""
    client = _Client("127.0.0.1", 1883)
    answer = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(client._wait_for(answer, 5))
    await asyncio.sleep(0)  # waiting for the answer
    answer.set_result("PUBACK")
    waiting.cancel()  # the stop, in the same turn of the loop
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_device_stopped_while_it_closes_its_link_stops(world):
    """A stop (the fleet cancelling a device) that lands while the device closes a link must not be
    swallowed with the link reader's own cancellation: the device would run on, and `fleet stop` hang."""
    conn = await world.connect(world.things[0])
    closing = asyncio.create_task(conn.close())
    await asyncio.sleep(0)  # close() now waits for its reader to end
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await conn.close()
