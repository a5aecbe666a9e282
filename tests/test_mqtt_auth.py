"""Who may connect to a rehearsal region's MQTT endpoint: real broker, real mutual TLS, the region's
own registry (changed through boto3, seen by the broker at once)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from activities.context import Deployments
from activities.registry import DrainInput, ReadyInput, RegistryActivities
from rehearsal import faults, pki
from tests.mqtt_support import EAST, WEST, build_world, eventually, lost

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def world(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path):
    return build_world(emulators, local_ca, tmp_path)


async def test_replication_is_what_lets_a_device_connect_to_the_standby(world):
    thing = world.things[0]
    conn = await world.connect(thing, EAST)
    await conn.report({"hello": EAST})
    await conn.close()
    refused = await world.refused(thing, WEST)  # neither its CA nor its certificate is in us-west-2
    assert refused.retryable
    await asyncio.to_thread(world.replicate)
    conn = await world.connect(thing, WEST)
    await conn.report({"hello": WEST})
    await conn.close()
    shadow = world.aws.iot_data(WEST).get_thing_shadow(thingName=thing)
    assert json.loads(shadow["payload"].read())["state"]["reported"]["hello"] == WEST


async def test_inactive_certificate_is_refused_and_deactivation_drops_the_live_session(world):
    thing = world.things[0]
    iot = world.aws.iot(EAST)
    conn = await world.connect(thing)
    await asyncio.to_thread(iot.update_certificate, certificateId=world.cert_id(thing), newStatus="INACTIVE")
    assert "link" in await lost(conn)
    with pytest.raises(Exception, match="ConnectionLost|link"):
        await conn.report({"after": "deactivation"})
    assert "Not authorized" in str(await world.refused(thing))
    await asyncio.to_thread(iot.update_certificate, certificateId=world.cert_id(thing), newStatus="ACTIVE")
    conn = await world.connect(thing)
    await conn.close()


async def test_client_id_must_be_the_thing_of_the_certificate(world):
    mine, other = world.things
    world.transport.credentials[other] = world.transport.credentials[mine]  # mine's certificate, other's id
    assert "Not authorized" in str(await world.refused(other))
    conn = await world.connect(mine)
    await conn.close()


async def test_detaching_the_thing_drops_its_session(world):
    thing = world.things[0]
    conn = await world.connect(thing)
    arn = world.aws.iot(EAST).list_thing_principals(thingName=thing)["principals"][0]
    await asyncio.to_thread(world.aws.iot(EAST).detach_thing_principal, thingName=thing, principal=arn)
    await lost(conn)
    assert "Not authorized" in str(await world.refused(thing))


async def test_a_second_connection_with_the_same_client_id_drops_the_first(world):
    thing = world.things[0]
    first = await world.connect(thing)
    second = await world.connect(thing)
    await lost(first)
    await second.report({"still": "here"})
    assert second.lost is None
    await second.close()


async def test_outage_drops_every_session_and_refuses_connects_until_cleared(world, emulators):
    conns = [await world.connect(t) for t in world.things]
    faults.set_fault(emulators[EAST], "outage")
    for c in conns:
        await lost(c)
    assert (await world.refused(world.things[0])).retryable
    faults.set_fault(emulators[EAST], "clear")
    conn = await world.connect(world.things[0])
    await conn.close()


async def test_just_in_time_registration_then_replication_connects_in_both_regions(world, local_ca):
    """Unknown certificate > refused, PENDING_ACTIVATION and the event on the queue > the controller
    onboards and replicates the device > it connects in both regions."""
    cfg, registry = world.cfg, RegistryActivities(Deployments([world.cfg]))
    await asyncio.to_thread(registry.ensure_replication_ready, ReadyInput(cfg.name))
    await asyncio.to_thread(world.replicate)
    cert, key = pki.issue_device_cert(local_ca, "jitr-device-1")
    folder = Path(cfg.state_dir) / "jitr"
    folder.mkdir(parents=True)
    (folder / "c.pem").write_text(cert)
    (folder / "c.key").write_text(key)
    world.transport.credentials["jitr-device-1"] = (folder / "c.pem", folder / "c.key")

    assert "Not authorized" in str(await world.refused("jitr-device-1", EAST))
    certs = world.aws.iot(EAST).list_certificates()["certificates"]
    pending = [c for c in certs if c["status"] == "PENDING_ACTIVATION"]
    assert len(pending) == 1
    drained = await eventually(
        lambda: registry.drain_registry_events(DrainInput(cfg.name, max_seconds=2)).jitr,
        what="the JITR event to reach the events queue and be applied",
    )
    assert drained == 1
    for region in (EAST, WEST):
        conn = await world.connect("jitr-device-1", region)
        await conn.close()


async def test_two_registered_cas_of_one_name_each_admit_their_own_devices(
    world, emulators: dict[str, str], tmp_path: Path
):
    """A CA rotation (or a new CA after a registry reset) leaves two CAs of one subject name in the
    region: each device's chain must be checked against the CA that signed it, not the first of
    that name (the second e2e test of a session once failed every connect on this)."""
    other = build_world(emulators, pki.create_ca(), tmp_path / "rotated")
    for w in (world, other):
        conn = await w.connect(w.things[0])
        await conn.report({"ca": "mine"})
        await conn.close()
