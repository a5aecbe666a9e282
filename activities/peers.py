"""What the deployment entity reads of its companion workflows, with the worker's Temporal client.

A workflow cannot query another workflow; these activities can. The entity uses them when its own
memory is not enough: after a restart (its health views start Unknown while the monitors only
signal changes), and when it inherited a cutover in flight without the handle that would tell it
the outcome.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.context import Deployments
from core import logs
from core.models import SETTLED_STATES, CutoverProgress, RegionHealthChange

log = logs.get("activities.peers")


@dataclass
class ReadHealthInput:
    deployment: str
    monitors: dict[str, str]  # region -> the workflow ID of its RegionHealthWorkflow


@dataclass
class HealthReadings:
    changes: list[RegionHealthChange] = field(default_factory=list)  # regions with a settled state
    missing: dict[str, str] = field(default_factory=dict)  # region -> why it has none (yet)


@dataclass
class AwaitCutoverInput:
    deployment: str
    cutover_id: str
    poll_seconds: float = 2


class PeerActivities:
    def __init__(self, deployments: Deployments):
        self.deployments = deployments

    def _client(self) -> Client:
        if self.deployments.client is None:
            raise ApplicationError("this worker has no Temporal client", non_retryable=True)
        return self.deployments.client

    @activity.defn
    async def read_region_health(self, inp: ReadHealthInput) -> HealthReadings:
        """Each monitor's reported state, as its `state` query answers (monitors signal changes only)."""
        out = HealthReadings()
        for region, workflow_id in inp.monitors.items():
            try:
                view = await self._client().get_workflow_handle(workflow_id).query("state")
            except RPCError as e:
                out.missing[region] = f"{workflow_id}: {e.message}"[:200]
                continue
            state = (view or {}).get("state")
            if state not in SETTLED_STATES:
                out.missing[region] = f"{workflow_id} reports {state or 'nothing'} yet"
                continue
            last = view.get("last") or {}
            since = view.get("since")
            out.changes.append(
                RegionHealthChange(
                    region,
                    state,
                    float(last.get("score", 1.0)),
                    list(last.get("reasons", [])),
                    datetime.fromisoformat(since) if since else None,
                    int(view.get("consecutive", 0)),
                )
            )
        log.info("region health read", deployment=inp.deployment, read=len(out.changes), missing=out.missing)
        return out

    @activity.defn
    async def await_cutover(self, inp: AwaitCutoverInput) -> CutoverProgress:
        """The outcome of a cutover this entity started in an earlier run, once it has one."""
        handle = self._client().get_workflow_handle(inp.cutover_id)
        while True:
            try:
                progress = await handle.query("progress", result_type=CutoverProgress)
                desc = await handle.describe()
            except RPCError as e:
                if e.status == RPCStatusCode.NOT_FOUND:
                    raise ApplicationError(
                        f"cutover {inp.cutover_id} does not exist", type="NoCutover", non_retryable=True
                    ) from None
                raise
            activity.heartbeat(progress.phase if progress else "starting")
            if progress and progress.result:
                return progress
            if desc.status != WorkflowExecutionStatus.RUNNING:  # terminated or timed out mid-way
                progress = progress or CutoverProgress(
                    inp.cutover_id, inp.deployment, "planned", "", "", "", 0
                )
                progress.result, progress.error = (
                    "failed",
                    f"the cutover workflow ended {desc.status.name if desc.status else 'UNKNOWN'}",
                )
                return progress
            await asyncio.sleep(inp.poll_seconds)


def activities(deployments: Deployments) -> list:
    a = PeerActivities(deployments)
    return [a.read_region_health, a.await_cutover]
