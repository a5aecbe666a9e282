"""A region failing in the middle of a planned cutover, end to end on the e2e stack (issue 13, item 0).

The source fails after the flip: the cutover continues as an emergency one without it and the
devices that failed over on their own are confirmed. The target fails: the cutover rolls back to
the source and the devices come home on their own. Either way the deployment ends up agreeing with
the bootstrap answer, and the region that missed the flips is caught up once it answers again.
The health monitors' reports are sent as they would send them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from core.models import RegionHealthChange
from rehearsal import faults
from tests.e2e_stack import DEVICES, EAST, WEST, Stack, until

pytestmark = pytest.mark.e2e


async def _report(stack: Stack, region: str, state: str) -> None:
    await stack.handle.signal("region_health", RegionHealthChange(region, state, at=datetime.now(UTC)))


async def _fail_mid_waves(stack: Stack, region: str) -> str:
    """Start a planned cutover and take `region` down once its canary has moved."""
    started = await stack.cutover(target=WEST, reason=f"{region} fails mid-cutover")
    await until(
        lambda: stack.progress(started.cutover_id),
        lambda p: p and p.waves and p.waves[0].confirmed > 0,
        what="the canary confirmed in us-west-2",
    )
    faults.set_fault(stack.cfg.regions[region].endpoint_url, "outage")
    await _report(stack, region, "Unhealthy")
    return started.cutover_id


async def test_a_source_lost_after_the_flip_turns_the_cutover_into_an_emergency_one(stack: Stack) -> None:
    cutover_id = await _fail_mid_waves(stack, EAST)
    try:
        s = await until(stack.state, lambda s: s.in_flight is None or s.in_flight.note, what="the note")
        assert s.in_flight is None or "continues as an emergency cutover" in s.in_flight.note
        p = await until(lambda: stack.progress(cutover_id), lambda p: p.result, what="the takeover")
        assert p.result.startswith("succeeded") and p.mode == "emergency", p
        assert "us-east-1 became Unhealthy" in p.takeover
        assert p.devices_total == DEVICES and p.confirmed == DEVICES  # faulty ones failed over alone
        assert "takeover-flip" in p.phase_seconds and EAST in p.unreachable_regions
        s = await until(stack.state, lambda s: s.history, what="the deployment's record")
        assert s.active_region == WEST and EAST in s.catch_up
        assert "continued as an emergency cutover" in s.history[-1].note
        assert stack.regions_of_devices() == {WEST: DEVICES}
    finally:
        faults.set_fault(stack.cfg.regions[EAST].endpoint_url, "clear")
    await _report(stack, EAST, "Healthy")
    await until(stack.state, lambda s: EAST not in s.catch_up, what="us-east-1 caught up")
    answer = await until(
        lambda: asyncio.to_thread(stack.try_bootstrap_answer, EAST, stack.fleet.devices[0].thing),
        bool,
        within=30,
        what="us-east-1's bootstrap service answering again",
    )
    assert answer["endpoints"][0]["region"] == WEST  # the recovered region no longer claims the fleet


async def test_a_target_lost_mid_cutover_rolls_back_to_the_healthy_source(stack: Stack) -> None:
    cutover_id = await _fail_mid_waves(stack, WEST)
    try:
        p = await until(lambda: stack.progress(cutover_id), lambda p: p.result, what="the rollback")
        assert p.result == "aborted" and "us-west-2 became Unhealthy" in (p.error or ""), p
        assert (p.primary_after, p.epoch_after) == (EAST, p.epoch + 1)
        s = await until(stack.state, lambda s: s.history, what="the deployment's record")
        assert s.active_region == EAST and s.bootstrap["default"].epoch == p.epoch + 1
        answer = stack.bootstrap_answer(EAST, stack.fleet.devices[0].thing)
        assert answer["endpoints"][0]["region"] == EAST and answer["epoch"] == p.epoch + 1
        await until(
            lambda: asyncio.sleep(0, stack.regions_of_devices()),
            lambda c: c.get(EAST) == DEVICES,
            what="every device back in us-east-1 on its own",
        )
    finally:
        faults.set_fault(stack.cfg.regions[WEST].endpoint_url, "clear")
    await _report(stack, WEST, "Healthy")
    s = await until(stack.state, lambda s: WEST not in s.catch_up, what="us-west-2 caught up")
    assert stack.bootstrap_answer(WEST, stack.fleet.devices[0].thing)["endpoints"][0]["region"] == EAST
