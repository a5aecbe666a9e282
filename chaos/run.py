"""One run: a fresh deployment, a seeded schedule of faults, a settle phase, then the checker.

The settle phase plays a cooperative operator (it resumes paused cutovers and approves the gates
that wait), since a cutover left paused is a person's choice, not a controller bug; each of its
waits is bounded, and what it found when a bound ran out is what the checker judges.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus

from chaos import checker, schedule
from chaos.nemesis import Nemesis
from chaos.sampler import Sampler
from chaos.stack import Infra, RunStack
from core.models import CutoverProgress, CutoverRequest


@dataclass
class RunOptions:
    seed: int
    fault_seconds: float = 60.0
    settle_seconds: float = 180.0  # each settle wait's bound, counted from when the faults stop
    devices: int = 12
    faulty: int = 1  # devices that never migrate: stragglers, not failures
    emergency: bool = True  # False: the operator asks only for planned cutovers (see schedule.draw)


async def run_once(infra: Infra, opts: RunOptions, folder: Path) -> dict[str, Any]:
    steps = schedule.draw(opts.seed, opts.fault_seconds, emergency=opts.emergency)
    infra.reset()
    stack = RunStack(infra, folder, opts.devices, opts.faulty)
    begun = time.monotonic()
    rec = checker.RunRecord()
    nemesis = None
    try:
        await stack.start()
        sampler = Sampler(stack, [d.thing for d in stack.fleet.devices] if stack.fleet else [])
        nemesis = Nemesis(stack, sampler.now)
        sampler.start()
        await nemesis.play(steps, opts.fault_seconds, bound=60)
        await nemesis.clear_all()
        sampler.phase = "settle"
        settle_until = time.monotonic() + opts.settle_seconds
        await _settle(stack, settle_until)
        rec.valid_cutover = await _valid_cutover(stack, settle_until, nemesis.started)
        await _settle(stack, settle_until)
        await _wait_served(stack, sampler, settle_until)
        await sampler.stop()
        rec.samples = [*sampler.ordered(), (await sampler.sample()).as_dict()]
        sampler.close()
        rec.bursts = nemesis.bursts
        await _gather_end(stack, rec, nemesis.started)
    finally:
        await stack.stop()
    violations = checker.check(rec)
    report = {
        "seed": opts.seed,
        "deployment": stack.cfg.name,
        "verdict": "held" if not violations else "violated",
        "first_violation": violations[0].as_dict() if violations else None,
        "violations": [v.as_dict() for v in violations[:20]],
        "seconds": round(time.monotonic() - begun, 1),
        "options": asdict(opts),
        "schedule": [s.text() for s in steps],
        "played": nemesis.log if nemesis else [],
        "cutovers": rec.cutovers,
        "samples": len(rec.samples),
    }
    (folder / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (folder / "record.json").write_text(json.dumps(asdict(rec), default=str))
    return report


async def _settle(stack: RunStack, until: float) -> None:
    """Until no cutover is in flight: resume what is paused and approve what waits for approval."""
    while time.monotonic() < until:
        try:
            s = await stack.state()
        except Exception:  # the worker is catching up
            await asyncio.sleep(1)
            continue
        if s is not None and s.in_flight is None:
            return
        if s is not None and s.in_flight is not None:
            cid = s.in_flight.cutover_id
            try:
                p = await stack.client.get_workflow_handle(cid).query("progress", result_type=CutoverProgress)
                if p.paused:
                    await stack.signal_cutover(cid, "resume")
                if (p.waiting_for or "").startswith("approval"):
                    await stack.signal_cutover(cid, "approve")
            except Exception:  # the cutover just ended, or its first task has not run yet
                pass
        await asyncio.sleep(1)


async def _valid_cutover(stack: RunStack, until: float, started: list[str]) -> dict[str, Any]:
    """Ask for a planned cutover to the other (Healthy) region until one starts or the bound ends."""
    tries: list[str] = []
    while time.monotonic() < until:
        try:
            s = await stack.state()
            assert s is not None
            target = next(r for r in stack.cfg.regions if r != s.active_region)
            out = await stack.request(CutoverRequest(target, reason="chaos: settle", requested_by="chaos"))
        except Exception as e:
            tries.append(f"{type(e).__name__}: {e}"[:200])
            await asyncio.sleep(2)
            continue
        if out.started:
            started.append(out.started.cutover_id)
            return {"started": out.started.cutover_id, "target": target, "tries": tries}
        tries.append(out.refused)
        await asyncio.sleep(2)
    return {"started": None, "tries": tries}


async def _wait_served(stack: RunStack, sampler: Sampler, until: float) -> None:
    """Until every device is connected to a Healthy region and the regions agree (or the bound)."""
    while time.monotonic() < until:
        try:
            s = await stack.state()
        except Exception:
            s = None
        places = stack.device_places()
        last = next((s for s in reversed(sampler.samples) if not s["asked_state"]), None)
        agree = last is not None and all(
            len({tuple(t[th]) for t in last["tables"].values() if t is not None and th in t}) <= 1
            for th in places
        )
        healthy = s is not None and all(
            st == "connected" and s.health.get(r) is not None and s.health[r].state == "Healthy"
            for st, r in places.values()
        )
        if agree and healthy:
            return
        await asyncio.sleep(1)


async def _gather_end(stack: RunStack, rec: checker.RunRecord, started: list[str]) -> None:
    s = await stack.state()
    ids = set(started)
    if s is not None:
        ids |= {h.cutover_id for h in s.history}
        if s.in_flight:
            ids.add(s.in_flight.cutover_id)
        rec.health = {r: v.state for r, v in s.health.items()}
    for cid in sorted(ids):
        handle = stack.client.get_workflow_handle(cid, result_type=CutoverProgress)
        desc = await handle.describe()
        status = desc.status.name if desc.status else "UNKNOWN"
        result = None
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            result = (await handle.result()).result
        rec.cutovers[cid] = {"status": status, "result": result}
    async for wf in stack.client.list_workflows(f"TaskQueue = '{stack.task_queue}'"):
        rec.workflows.append(await _soundness(stack, wf.id, wf.run_id, wf.status))
    rec.devices = {t: list(p) for t, p in stack.device_places().items()}


async def _soundness(stack: RunStack, wid: str, run_id: str | None, status: Any) -> dict[str, Any]:
    """A workflow's status, how it failed, and how many of its workflow tasks failed."""
    history = await stack.client.get_workflow_handle(wid, run_id=run_id).fetch_history()
    out: dict[str, Any] = {"id": wid, "run_id": run_id, "status": status.name if status else "UNKNOWN"}
    out["task_failures"] = 0
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            out["task_failures"] += 1
            out["task_failure_message"] = e.workflow_task_failed_event_attributes.failure.message[:300]
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            failure = e.workflow_execution_failed_event_attributes.failure
            out["failure"] = (
                "ApplicationError"
                if failure.HasField("application_failure_info")
                else (failure.WhichOneof("failure_info") or "unknown")
            )
            out["message"] = failure.message[:300]
    return out
