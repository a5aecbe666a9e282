"""`starter.py cutover` and `approve|pause|resume|abort <cutover-id>`: steer cutovers."""

from __future__ import annotations

import argparse
import asyncio
import getpass

from botocore.exceptions import BotoCoreError, ClientError
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from cli import CliError, Exit
from cli.common import client_for, config_of, run_async, ui_link
from cli.deployment import print_progress
from core.aws import AwsClients, group_member_pages
from core.config import DeploymentConfig
from core.models import CutoverRequest, OperatorAction
from core.workflow_ids import deployment_id
from workflows.cutover import CutoverWorkflow
from workflows.cutover_plan import plan
from workflows.deployment import DeploymentWorkflow


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cutover", help="move the fleet (or a thing group) to another region")
    c.add_argument("--to", required=True, dest="target", help="target region")
    c.add_argument("--scope", help="thing group to move (default: the whole fleet)")
    c.add_argument(
        "--mode",
        choices=["planned", "emergency"],
        default="planned",
        help="planned: waves with verification; emergency: flip the healthy regions now (default: %(default)s)",
    )
    c.add_argument("--reason", default="", help="why; shown in the UI and the history")
    c.add_argument("--by", default=getpass.getuser(), help="who asks (default: %(default)s)")
    c.add_argument("--force", action="store_true", help="override the health and cooldown rules (recorded)")
    c.add_argument(
        "--approval", choices=["none", "canary", "every-wave"], help="override the approval policy"
    )
    c.add_argument("--wait", action="store_true", help="follow progress until the cutover ends")
    c.add_argument(
        "--dry-run",
        action="store_true",
        help="count the scope and print the waves and their time at the configured quotas; start nothing",
    )
    c.set_defaults(handler=run_async(cmd_cutover))
    for action, text in [
        ("approve", "let a cutover waiting for approval go on"),
        ("pause", "hold a cutover before its next wave"),
        ("resume", "continue a paused cutover"),
        ("abort", "stop a cutover and roll it back"),
    ]:
        a = sub.add_parser(action, help=text)
        a.add_argument("cutover_id", help="e.g. cutover-demo-3 (see `starter.py status`)")
        a.add_argument("--by", default=getpass.getuser(), help="who asks, recorded (default: %(default)s)")
        a.add_argument("--reason", default="", help="why; shown in the cutover's events")
        a.set_defaults(handler=run_async(cmd_control), action=action)


async def cmd_cutover(args: argparse.Namespace) -> int:
    cfg = config_of(args, need_ca=False)  # the worker, not this command, reads the CA
    if args.target not in cfg.regions:
        raise CliError(
            f"unknown region {args.target!r}; this deployment has {', '.join(cfg.regions)}", Exit.USAGE
        )
    if args.dry_run:
        return print_plan(cfg, args.target, args.scope or cfg.fleet.thing_group)
    client = await client_for(cfg)
    req = CutoverRequest(
        target=args.target,
        scope=args.scope,
        mode=args.mode,
        reason=args.reason,
        requested_by=args.by,
        force=args.force,
        approval=args.approval,
    )
    try:
        started = await client.get_workflow_handle_for(
            DeploymentWorkflow.run, deployment_id(cfg.name)
        ).execute_update(DeploymentWorkflow.request_cutover, req)
    except WorkflowUpdateFailedError as e:
        raise CliError(f"cutover refused: {e.cause.message if e.cause else e}", code=Exit.REFUSED) from None
    except RPCError as e:
        raise CliError(
            f"deployment {cfg.name} is not running ({e.message}); "
            "start it with `python starter.py deployment start`",
            code=Exit.UNREACHABLE,
        ) from None
    print(
        f"{started.cutover_id}: {started.mode} cutover {started.source} → {started.target} (epoch {started.epoch})"
    )
    print(f"  {ui_link(cfg, started.cutover_id)}")
    if not args.wait:
        return 0
    return await follow(client, started.cutover_id)


async def follow(client, cutover_id: str, every: float = 3) -> int:
    """Print progress as it changes until the cutover ends; exit 0 only when it succeeded."""
    handle = client.get_workflow_handle_for(CutoverWorkflow.run, cutover_id)
    last = None
    while True:
        p = await handle.query(CutoverWorkflow.progress)
        line = p and (p.phase, p.confirmed, p.waiting_for, len(p.waves), p.result)
        if p and line != last:
            print_progress(p)
            last = line
        if p and p.result:
            return 0 if p.result.startswith("succeeded") else 1
        await asyncio.sleep(every)


def print_plan(cfg: DeploymentConfig, target: str, scope: str) -> int:
    """The plan the cutover will show before its first wave, from a count of the scope now."""
    source = next(r for r in cfg.region_names if r != target)
    try:
        devices = sum(len(page) for page in group_member_pages(AwsClients(cfg).iot(source), scope))
    except (ClientError, BotoCoreError) as e:
        raise CliError(f"cannot count {scope} in {source}: {e}", Exit.UNREACHABLE) from None
    p = plan(devices, cfg.cutover, cfg.quotas)
    print(f"cutover of {scope} to {target} (counted in {source}): {p.brief()}")
    for i, (size, seconds) in enumerate(zip(p.waves, p.wave_seconds, strict=True)):
        print(f"  {'canary' if i == 0 else f'wave {i}':<8} {size:>8,} devices  {seconds / 60:6.1f} min")
    print("  plus approvals and stragglers; nothing was started")
    return Exit.OK


async def cmd_control(args: argparse.Namespace) -> int:
    cfg = config_of(args, need_ca=False)
    client = await client_for(cfg)
    try:
        p = await client.get_workflow_handle_for(CutoverWorkflow.run, args.cutover_id).execute_update(
            CutoverWorkflow.control, args=[args.action, OperatorAction(by=args.by, reason=args.reason)]
        )
    except WorkflowUpdateFailedError as e:
        raise CliError(
            f"{args.action} refused: {e.cause.message if e.cause else e}", code=Exit.REFUSED
        ) from None
    except RPCError as e:
        raise CliError(f"no running cutover {args.cutover_id} ({e.message})", code=Exit.UNREACHABLE) from None
    print(f"{args.action} sent to {args.cutover_id}; phase {p.phase}")
    print(f"  {ui_link(cfg, args.cutover_id)}")
    return 0
