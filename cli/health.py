"""`starter.py health [--region R]`: each region's latest health, from its RegionHealthWorkflow."""

from __future__ import annotations

import argparse
from datetime import timedelta

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from cli import CliError
from cli.common import client_for, config_of, run_async, ui_link
from core.config import DeploymentConfig
from core.workflow_ids import health_id
from workflows.health import RegionHealthWorkflow
from workflows.health_types import RegionHealthView


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="each region's latest health assessment and probes")
    p.add_argument("--region", help="only this region")
    p.set_defaults(handler=run_async(cmd_health))


async def cmd_health(args: argparse.Namespace) -> int:
    cfg = config_of(args, need_ca=False)
    if args.region and args.region not in cfg.regions:
        raise CliError(f"unknown region {args.region!r}; this deployment has {', '.join(cfg.regions)}")
    return await show(await client_for(cfg), cfg, [args.region] if args.region else cfg.region_names)


async def show(client: Client, cfg: DeploymentConfig, regions: list[str]) -> int:
    """Print each region's assessment; exit code 3 when a region is not monitored."""
    code = 0
    for region in regions:
        wf_id = health_id(cfg.name, region)
        try:
            view = await _query(client, wf_id)
        except _NotRunning as e:
            print(f"{region:<14} not monitored: RegionHealthWorkflow {wf_id} {e}")
            code = 3
            continue
        print(_render(view))
        print(f"{'':<14} {ui_link(cfg, wf_id)}")
    return code


class _NotRunning(Exception):
    pass


async def _query(client: Client, wf_id: str) -> RegionHealthView:
    handle = client.get_workflow_handle(wf_id)
    try:
        desc = await handle.describe()
        if desc.status != WorkflowExecutionStatus.RUNNING:
            raise _NotRunning(f"is {desc.status.name.lower() if desc.status else 'not running'}")
        return await handle.query(RegionHealthWorkflow.state, rpc_timeout=timedelta(seconds=10))
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise _NotRunning("is not running (the DeploymentWorkflow starts one per region)") from None
        if e.status == RPCStatusCode.DEADLINE_EXCEEDED:
            raise _NotRunning("does not answer: is a worker running (`python worker.py`)?") from None
        raise CliError(f"cannot query {wf_id}: {e}") from None


def _render(v: RegionHealthView) -> str:
    since = f" since {v.since:%Y-%m-%d %H:%M:%S} UTC" if v.since else ""
    lines = [f"{v.region:<14} {v.state}{since} ({v.consecutive} in a row, {v.checks} checks in all)"]
    if v.last:
        probes = " · ".join(p.brief() for p in v.last.probes)
        lines.append(
            f"{'':<14} last check {v.last.at:%H:%M:%S} UTC: {v.last.assessed}, score {v.last.score:.2f}"
        )
        lines.append(f"{'':<14} {probes}")
        lines += [f"{'':<14} - {r}" for r in v.last.reasons]
    if v.unsent:
        lines.append(f"{'':<14} ! not yet delivered to {v.deployment_workflow_id}: {v.signal_error}")
    return "\n".join(lines)
