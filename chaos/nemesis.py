"""Plays a schedule against a run's stack: each step at its time, in its own task, so a slow step
(a worker shutdown, an update waiting on a busy entity) never delays the faults after it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from chaos.schedule import Step
from chaos.stack import RunStack
from core.models import CutoverMode, CutoverRequest


class Nemesis:
    def __init__(self, stack: RunStack, now):
        self.stack, self.now = stack, now
        self.log: list[dict[str, Any]] = []  # what each step did, for the report
        self.bursts: list[dict[str, Any]] = []
        self.started: list[str] = []  # every cutover a request started
        self._worker_lock = asyncio.Lock()
        self._told_unhealthy: set[str] = set()

    async def play(self, steps: list[Step], seconds: float, bound: float) -> None:
        """Every step at its time, then the rest of the `seconds` of the fault phase; the steps
        still running are waited for up to `bound` more, then cancelled: a step left running would
        set its fault again after the run (on emulators the next test shares)."""
        t0, tasks = time.monotonic(), []
        for step in steps:
            await asyncio.sleep(max(0.0, step.at - (time.monotonic() - t0)))
            tasks.append(asyncio.create_task(self._run(step)))
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        if tasks:
            _, running = await asyncio.wait(tasks, timeout=bound)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _run(self, step: Step) -> None:
        try:
            did = await getattr(self, f"_{step.action}")(**step.args)
        except Exception as e:  # recorded: a fault that could not be applied is part of the story
            did = f"error {type(e).__name__}: {e}"[:300]
        self.log.append({"at": self.now(), "step": step.text(), "did": did})

    async def _active(self) -> tuple[str, str | None]:
        s = await self.stack.state()
        assert s is not None
        return s.active_region, s.in_flight.cutover_id if s.in_flight else None

    async def _request(
        self, target: str, mode: CutoverMode, approval: Literal["none", "canary", "every-wave"]
    ) -> tuple[str | None, str]:
        if target == "other":
            active, _ = await self._active()
            target = next(r for r in self.stack.cfg.regions if r != active)
        req = CutoverRequest(target, mode=mode, approval=approval, reason="chaos", requested_by="chaos")
        out = await self.stack.request(req)
        if out.started:
            self.started.append(out.started.cutover_id)
            return out.started.cutover_id, f"started {out.started.cutover_id} → {target}"
        return None, f"refused ({target}): {out.refused}"

    async def _cutover(self, **args: Any) -> str:
        return (await self._request(**args))[1]

    async def _concurrent(self, requests: list[dict[str, Any]]) -> str:
        at = self.now()
        got = await asyncio.gather(*(self._request(**r) for r in requests))
        started = [cid for cid, _ in got if cid]
        self.bursts.append({"at": at, "started": started, "refused": [w for cid, w in got if not cid]})
        return f"{len(started)} of {len(requests)} started: {started}"

    async def _control(self, name: str) -> str:
        _, cutover = await self._active()
        if cutover is None:
            return "no cutover in flight"
        return f"{cutover}: {await self.stack.signal_cutover(cutover, name)}"

    async def _approve(self) -> str:
        return await self._control("approve")

    async def _pause(self) -> str:
        return await self._control("pause")

    async def _resume(self) -> str:
        return await self._control("resume")

    async def _abort(self) -> str:
        return await self._control("abort")

    async def _outage(self, region: str, tell_health: bool) -> str:
        await self.stack.set_fault(region, "outage")
        if tell_health:  # what the region's health monitor would report after its checks
            self._told_unhealthy.add(region)
            await self.stack.tell_health(region, "Unhealthy")
        return "outage" + (", told Unhealthy" if tell_health else ", monitors silent")

    async def _latency(self, region: str, ms: int) -> str:
        await self.stack.set_fault(region, "latency", ms)
        return f"latency {ms} ms"

    async def _throttle(self, region: str, rate: float) -> str:
        await self.stack.set_fault(region, "throttle", 0, rate)
        return f"throttle {rate:.0%}"

    async def _recover(self, region: str, was: str) -> str:
        await self.stack.set_fault(region, "clear")
        if region in self._told_unhealthy:
            self._told_unhealthy.discard(region)
            await self.stack.tell_health(region, "Healthy")
            return "cleared, told Healthy"
        return "cleared"

    async def _stop_worker(self) -> str:
        async with self._worker_lock:
            if not self.stack.worker_up:
                return "already stopped"
            await self.stack.stop_worker()
            return "stopped"

    async def _start_worker(self) -> str:
        async with self._worker_lock:
            if self.stack.worker_up:
                return "already running"
            self.stack.start_worker()
            return "started"

    async def clear_all(self) -> None:
        """The end of the fault phase: every switch cleared, every region Healthy, a worker running."""
        for region in self.stack.cfg.regions:
            await self.stack.set_fault(region, "clear")
            await self.stack.tell_health(region, "Healthy")
        self._told_unhealthy.clear()
        await self._start_worker()
