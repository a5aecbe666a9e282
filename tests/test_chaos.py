"""The fault campaign (chaos/): the schedule replays from its seed, each invariant of the checker
fires on a record that breaks it (and only then), and one short run on the local stack holds."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest

from chaos import checker, schedule
from chaos.__main__ import line
from chaos.checker import Bounds, RunRecord
from chaos.run import RunOptions, run_once
from chaos.stack import Infra
from tests.e2e_stack import EAST, WEST, Stack, until

E, W = "us-east-1", "us-west-2"


def sample(t: float, east: dict | None, west: dict | None, **kw) -> dict:
    """A sampler record: each region's answers as {thing: [epoch, primary]} (None: unreadable)."""
    base = {
        "t": t,
        "phase": "faults",
        "worker_up": True,
        "tables": {E: east, W: west},
        "errors": {},
        "state": {"epoch": 1, "active": E, "in_flight": None},
        "state_error": "",
    }
    return base | kw


def clean() -> RunRecord:
    """A run where everything held: a cutover to the west, agreed everywhere, devices there."""
    before, after = {"d1": [1, E]}, {"d1": [3, W]}
    return RunRecord(
        samples=[
            sample(0, before, before),
            sample(1, after, before),  # the flip on its way: east written, west next
            sample(2, after, after, state={"epoch": 3, "active": W, "in_flight": None}),
            sample(3, after, after, phase="settle", state={"epoch": 5, "active": W, "in_flight": None}),
        ],
        bursts=[{"at": 1, "started": ["cutover-x-3"], "refused": ["CutoverRefused: running"]}],
        valid_cutover={"started": "cutover-x-5", "tries": []},
        cutovers={"cutover-x-3": {"status": "COMPLETED", "result": "succeeded"}},
        workflows=[{"id": "deployment-x", "status": "RUNNING", "task_failures": 0}],
        devices={"d1": ["connected", W]},
        health={E: "Healthy", W: "Healthy"},
    )


def fired(rec: RunRecord, bounds: Bounds | None = None) -> list[str]:
    return [v.invariant for v in checker.check(rec, bounds)]


def test_a_clean_run_holds() -> None:
    assert checker.check(clean()) == []


def test_the_same_seed_draws_the_same_schedule_and_every_fault_ends_in_time() -> None:
    a, b = schedule.draw(42, 60), schedule.draw(42, 60)
    assert a == b and a != schedule.draw(43, 60)
    for seed in range(30):
        steps = schedule.draw(seed, 30)
        assert all(0 < s.at < 30 for s in steps)
        on: dict[str, str] = {}
        for s in steps:  # one fault per region at a time, each one recovered
            region = s.args.get("region")
            if s.action in ("outage", "latency", "throttle"):
                assert region not in on, (seed, s)
                on[region] = s.action
            elif s.action == "recover":
                assert on.pop(region) == s.args["was"]
        assert not on, (seed, on)


def test_planned_only_changes_the_requests_modes_and_nothing_else() -> None:
    for seed in range(20):
        a, b = schedule.draw(seed, 60), schedule.draw(seed, 60, emergency=False)
        assert [(s.at, s.action) for s in a] == [(s.at, s.action) for s in b]
        asked = [
            r for s in b if s.action in ("cutover", "concurrent") for r in s.args.get("requests", [s.args])
        ]
        assert asked and all(r["mode"] == "planned" for r in asked)


def test_two_regions_primary_at_the_same_epoch_fires_at_once() -> None:
    rec = clean()
    rec.samples[1]["tables"][W] = {"d1": [3, E]}  # east says west at 3, west says east at 3
    v = checker.check(rec)
    assert [x.invariant for x in v] == ["single_primary"] and v[0].at == 1 and "same epoch 3" in v[0].evidence


def test_regions_that_disagree_too_long_fire() -> None:
    rec = clean()
    stale = {"d1": [1, E]}
    rec.samples[2]["tables"][W] = stale
    assert fired(rec, Bounds(disagree_seconds=30)) == []  # a flip two samples long is on its way
    assert fired(rec, Bounds(disagree_seconds=0.5)) == ["single_primary"]


def test_two_regions_each_naming_themselves_primary_fire_past_a_flip_and_an_outage_does_not_reset_it() -> (
    None
):
    """Seed 3's finding: an emergency cutover leaves the source's answer (old epoch, itself)."""
    old, new = {"d1": [1, E]}, {"d1": [2, W]}
    samples = [sample(t, old, new) for t in range(0, 6)]
    samples += [sample(t, None, new) for t in range(6, 9)]  # east down a while: no answer to compare
    samples += [sample(t, old, new) for t in range(9, 12)]
    rec = clean()
    rec.samples = samples + rec.samples[3:]
    assert fired(rec, Bounds(split_seconds=12)) == []
    v = checker.check(rec, Bounds(split_seconds=10))
    assert [x.invariant for x in v] == ["single_primary"], v
    assert v[0].at == 11 and "each name themselves primary" in v[0].evidence and "since t=0" in v[0].evidence


def test_disagreement_left_after_settling_fires() -> None:
    rec = clean()
    rec.samples[3]["tables"][E] = {"d1": [5, E]}
    v = checker.check(rec)
    assert [x.invariant for x in v] == ["single_primary"] and "after settling" in v[0].evidence


def test_an_unreadable_region_is_not_a_second_primary() -> None:
    rec = clean()
    rec.samples[2]["tables"][E] = None  # down: devices cannot read it either
    assert fired(rec) == []


def test_an_epoch_going_back_fires_for_a_region_and_for_the_entity() -> None:
    rec = clean()
    rec.samples[2]["tables"][W] = {"d1": [0, E]}
    rec.samples[1]["tables"][W] = {"d1": [1, E]}
    assert "epochs_grow" in fired(rec)
    rec = clean()
    rec.samples[3]["state"]["epoch"] = 2
    assert fired(rec) == ["epochs_grow"]


def test_state_unanswered_fires_only_while_a_worker_runs_and_past_the_grace() -> None:
    rec = clean()
    rec.samples[1] |= {"state": None, "state_error": "TimeoutError", "worker_up": False}
    assert fired(rec) == []  # no worker: a query cannot be answered
    rec.samples[2] |= {"state": None, "state_error": "TimeoutError"}
    assert fired(rec, Bounds(state_grace_seconds=5)) == []  # the worker just came back
    assert fired(rec, Bounds(state_grace_seconds=0)) == ["state_answers"]


def test_two_cutovers_started_by_one_burst_fire() -> None:
    rec = clean()
    rec.bursts[0]["started"].append("cutover-x-5")
    assert fired(rec) == ["one_cutover_at_a_time"]


def test_no_valid_cutover_accepted_after_the_faults_fires() -> None:
    rec = clean()
    rec.valid_cutover = {"started": None, "tries": ["CutoverRefused: cutover-x-3 is running"]}
    assert fired(rec) == ["valid_cutover_accepted"]


@pytest.mark.parametrize(
    "end",
    [
        {"status": "RUNNING", "result": None},
        {"status": "COMPLETED", "result": None},
        {"status": "TERMINATED"},
    ],
)
def test_a_cutover_that_did_not_end_fires(end: dict) -> None:
    rec = clean()
    rec.cutovers["cutover-x-5"] = end
    assert fired(rec) == ["cutovers_end"]


def test_a_workflow_failed_by_a_non_application_error_or_failing_its_tasks_fires() -> None:
    rec = clean()
    rec.workflows.append(
        {"id": "cutover-x-3", "status": "FAILED", "failure": "ApplicationError", "task_failures": 0}
    )
    assert fired(rec) == []  # an application error is the workflow's own verdict
    broken = copy.deepcopy(rec)
    broken.workflows[-1]["failure"] = "timeout_failure_info"
    assert fired(broken) == ["workflows_sound"]
    wedged = copy.deepcopy(rec)
    wedged.workflows[0] |= {"task_failures": 3, "task_failure_message": "KeyError"}
    assert fired(wedged) == ["workflows_sound"]


def test_a_device_not_served_by_a_healthy_region_fires() -> None:
    rec = clean()
    rec.devices["d2"] = ["connecting", E]
    assert fired(rec) == ["devices_served"]
    rec = clean()
    rec.health[W] = "Degraded"
    assert fired(rec) == ["devices_served"]


def test_the_report_line_names_the_first_violation() -> None:
    report = {"seed": 7, "verdict": "violated", "seconds": 80.0}
    report["first_violation"] = {
        "invariant": "epochs_grow",
        "evidence": "us-west-2 answers d1 epoch 0 after 1",
    }
    assert line(report) == "seed 7: violated in 80.0s — epochs_grow: us-west-2 answers d1 epoch 0 after 1"


@pytest.mark.e2e
async def test_a_short_campaign_run_holds(tmp_path: Path) -> None:
    """On the campaign's own emulators and Temporal, as `python -m chaos` runs: what a run leaves
    (workflows, pollers, faults) cannot reach the tests that share this session's."""
    infra = Infra(tmp_path)
    await infra.start()
    try:
        report = await run_once(infra, RunOptions(seed=1, fault_seconds=15, settle_seconds=90), tmp_path)
    finally:
        await infra.stop()
    assert report["samples"] > 10 and report["played"], report
    assert report["verdict"] == "held", (report["first_violation"], report["schedule"], report["played"])
    assert report["cutovers"] and all(c["status"] == "COMPLETED" for c in report["cutovers"].values())


def _primaries(stack: Stack, thing: str) -> dict[str, str]:
    """Which region each region's bootstrap service names primary for `thing`."""
    return {
        r: next(e["region"] for e in stack.bootstrap_answer(r, thing)["endpoints"] if e["primary"])
        for r in (EAST, WEST)
    }


@pytest.mark.e2e
async def test_an_emergency_cutover_with_the_source_up_leaves_no_region_naming_itself_primary(
    stack: Stack,
) -> None:
    """Campaign seeds 3 and 13: an emergency cutover always skipped the source's bootstrap table, so
    while the source still answered both regions named themselves primary until the cutover ended
    (fixed behind EMERGENCY_FLIPS_A_LIVE_SOURCE)."""
    thing = stack.fleet.devices[0].thing
    started = await stack.cutover(target=WEST, mode="emergency", reason="chaos seed 3")
    try:
        await until(
            lambda: asyncio.to_thread(stack.try_bootstrap_answer, WEST, thing),
            lambda a: a and a["epoch"] == started.epoch,
            within=60,
            what="the flip in us-west-2",
        )
        await asyncio.sleep(5)  # far longer than a flip's second write takes
        primaries = await asyncio.to_thread(_primaries, stack, thing)
        assert primaries != {EAST: EAST, WEST: WEST}, f"both regions name themselves primary: {primaries}"
    finally:
        await until(lambda: stack.progress(started.cutover_id), lambda p: p and p.result, what="the cutover")
