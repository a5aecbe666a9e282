"""`starter.py deployment start` and `starter.py status`: the deployment entity and what it knows."""

from __future__ import annotations

import argparse

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from cli import CliError, replicate
from cli.common import client_for, config_of, run_async, ui_link
from core.config import DeploymentConfig
from core.models import CutoverProgress
from core.workflow_ids import deployment_id, health_id
from workflows.cutover import CutoverWorkflow
from workflows.deployment import DeploymentInput, DeploymentState, DeploymentWorkflow
from workflows.health import RegionHealthWorkflow
from workflows.health_types import RegionHealthInput


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deployment", help="the deployment entity workflow")
    d = p.add_subparsers(dest="deployment_command", required=True, metavar="action")
    d.add_parser(
        "start", help="start the deployment, its health monitors and replication (idempotent)"
    ).set_defaults(handler=run_async(cmd_start))
    sub.add_parser(
        "status", help="active region, epoch, health, the cutover in flight, decisions"
    ).set_defaults(handler=run_async(cmd_status))


async def start_deployment(client: Client, cfg: DeploymentConfig) -> WorkflowHandle:
    """Start DeploymentWorkflow, or hand the running one the current config."""
    handle = await client.start_workflow(
        DeploymentWorkflow.run,
        DeploymentInput(config=cfg),
        id=deployment_id(cfg.name),
        task_queue=cfg.temporal.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"deployment {cfg.name}: {cfg.mode}, regions {', '.join(cfg.regions)}",
    )
    await handle.execute_update(DeploymentWorkflow.reload_config, cfg)
    for extra in _companions(cfg):
        await extra(client, cfg)
    return handle


def _companions(cfg: DeploymentConfig) -> list:
    """The long-running workflows that serve a deployment besides its entity (health, replication)."""
    return [start_health_monitors, replicate.start]


async def start_health_monitors(client: Client, cfg: DeploymentConfig) -> None:
    for region in cfg.regions:
        await client.start_workflow(
            RegionHealthWorkflow.run,
            RegionHealthInput(
                deployment=cfg.name,
                region=region,
                policy=cfg.health,
                deployment_workflow_id=deployment_id(cfg.name),
            ),
            id=health_id(cfg.name, region),
            task_queue=cfg.temporal.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"health of {region} for deployment {cfg.name}",
        )


async def cmd_start(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    client = await client_for(cfg)
    handle = await start_deployment(client, cfg)
    print(f"deployment {cfg.name} running as {handle.id}")
    print(f"  {ui_link(cfg, handle.id)}")
    return 0


async def deployment_state(client: Client, cfg: DeploymentConfig) -> DeploymentState:
    try:
        state = await client.get_workflow_handle(deployment_id(cfg.name)).query(DeploymentWorkflow.state)
    except RPCError as e:
        raise CliError(
            f"deployment {cfg.name} is not running ({e.message}); "
            "start it with `python starter.py deployment start`"
        ) from None
    if state is None:
        raise CliError(f"deployment {cfg.name} is still starting; try again")
    return state


def bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / total) if total else 0
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def print_progress(p: CutoverProgress) -> None:
    print(f"  {p.cutover_id}: {p.mode} {p.source} → {p.target} (scope {p.scope}, epoch {p.epoch})")
    print(f"    phase {p.phase}{' (paused)' if p.paused else ''}" + (f": {p.result}" if p.result else ""))
    if p.takeover:
        print(f"    takeover: {p.takeover}")
    if p.waiting_for:
        print(f"    waiting for: {p.waiting_for}")
    if p.devices_total:
        print(f"    devices {bar(p.confirmed, p.devices_total)} confirmed, {p.failed} failed")
    for w in p.waves:
        name = {"stragglers": "stragglers", "rollback": "move back"}.get(w.kind) or (
            "canary" if w.index == 0 else f"wave {w.index}"
        )
        print(f"    {name:<10} {bar(w.confirmed, w.size)} job {w.job_status or 'running'}")
    for s in p.stragglers[:10]:
        print(f"    straggler {s}")


async def cmd_status(args: argparse.Namespace) -> int:
    cfg = config_of(args, need_ca=False)
    client = await client_for(cfg)
    s = await deployment_state(client, cfg)
    print(f"deployment {cfg.name} ({cfg.mode}): active region {s.active_region}, epoch {s.epoch}")
    print(f"  {ui_link(cfg, deployment_id(cfg.name))}")
    print("health:")
    for region, v in s.health.items():
        reasons = f" ({'; '.join(v.reasons)})" if v.reasons else ""
        print(f"  {region:<12} {v.state:<10}{reasons}")
    for scope, home in s.homes.items():
        print(f"scope {scope} is served from {home}")
    for v in s.replicas.values():
        state = "complete" if v.complete else f"INCOMPLETE: {v.reason}"
        print(f"registry copy {v.source} → {v.target}: {state} ({v.fleet_devices} fleet devices)")
    if s.in_flight:
        print("cutover in flight:" + (f" {s.in_flight.note}" if s.in_flight.note else ""))
        p = await client.get_workflow_handle(s.in_flight.cutover_id).query(CutoverWorkflow.progress)
        if p:
            print_progress(p)
        print(f"  {ui_link(cfg, s.in_flight.cutover_id)}")
    if s.failback_offer:
        print(f"offer: {s.failback_offer}")
    for region, missed in s.catch_up.items():
        if missed:
            retry = s.catch_up_after.get(region)
            when = f", next try {retry:%H:%M:%S} UTC" if retry else ""
            print(f"{region} disagrees (missed {', '.join(missed)}): caught up when it answers{when}")
    if s.history:
        print("recent cutovers:")
        for h in s.history[-5:]:
            print(
                f"  {h.cutover_id}: {h.mode} {h.source} → {h.target}: {h.result} "
                f"({h.confirmed}/{h.devices} confirmed, {h.stragglers} stragglers)"
                + (f"; {h.note}" if h.note else "")
            )
    if s.decisions:
        print("recent decisions:")
        for d in s.decisions[-8:]:
            print(f"  {d.at:%Y-%m-%d %H:%M:%S} {d.kind}: {d.reason}")
    return 0
