"""`starter.py shadows sync|parity`: carry device shadows between regions, and check they match."""

from __future__ import annotations

import argparse

from temporalio.client import WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from activities.context import Deployments
from activities.shadows import ShadowActivities, ShadowParityInput, ShadowSyncResult
from cli import CliError
from cli.common import client_for, config_of, run_async, ui_link
from core.config import DeploymentConfig
from core.temporal import SA_DEPLOYMENT, SA_MODE, SA_PHASE, SA_SOURCE, SA_TARGET
from core.workflow_ids import shadow_sync_id
from workflows.shadow_sync import ShadowSyncInput, ShadowSyncWorkflow

DIFFER_EXIT = 3  # parity: shadows differ (1 is an error)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shadows", help="sync device shadows between regions, or check they match")
    shadows = p.add_subparsers(dest="shadows_command", required=True, metavar="action")

    s = shadows.add_parser("sync", help="start a ShadowSyncWorkflow (newest leaf wins, nothing clobbered)")
    _scope_args(s)
    s.add_argument("--periodic", action="store_true", help="keep syncing every --interval seconds")
    s.add_argument("--interval", type=float, default=300, help="seconds between periodic rounds")
    s.add_argument("--wait", action="store_true", help="wait for a one-shot sync and print its result")
    s.set_defaults(handler=run_async(cmd_sync))

    q = shadows.add_parser("parity", help="list things whose target shadows are behind the source")
    _scope_args(q)
    q.set_defaults(handler=cmd_parity)


def _scope_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="REGION", help="region to copy from")
    p.add_argument("--to", dest="target", required=True, metavar="REGION", help="region to copy into")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--scope",
        "--group",
        dest="group",
        help="thing group (with subgroups); default: the deployment's fleet group",
    )
    scope.add_argument("--all-things", action="store_true", help="every thing registered in the source")


def _resolve(args: argparse.Namespace) -> tuple[DeploymentConfig, str | None]:
    cfg = config_of(args)
    for flag, region in (("--from", args.source), ("--to", args.target)):
        if region not in cfg.regions:
            raise CliError(f"{flag} {region}: not a region of {cfg.name} (it has {', '.join(cfg.regions)})")
    if args.source == args.target:
        raise CliError("--from and --to name the same region")
    return cfg, None if args.all_things else (args.group or cfg.fleet.thing_group)


async def cmd_sync(args: argparse.Namespace) -> int:
    cfg, group = _resolve(args)
    mode = "periodic" if args.periodic else "one-shot"
    inp = ShadowSyncInput(
        deployment=cfg.name,
        source=args.source,
        target=args.target,
        thing_group=group,
        mode=mode,
        interval_seconds=args.interval,
    )
    workflow_id = shadow_sync_id(cfg.name, args.source, args.target, group or "all")
    client = await client_for(cfg)
    attrs = {SA_DEPLOYMENT: cfg.name, SA_SOURCE: args.source, SA_TARGET: args.target, SA_MODE: mode}
    try:
        handle: WorkflowHandle = await client.start_workflow(
            ShadowSyncWorkflow.run,
            inp,
            id=workflow_id,
            task_queue=cfg.temporal.task_queue,
            static_summary=f"{mode} shadow sync {args.source} → {args.target}, {group or 'every thing'}",
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(k, v) for k, v in {**attrs, SA_PHASE: "syncing"}.items()]
            ),
        )
    except WorkflowAlreadyStartedError:
        raise CliError(
            f"a shadow sync {args.source} → {args.target} for {group or 'every thing'} is already running: "
            f"{ui_link(cfg, workflow_id)}"
        ) from None
    print(
        f"Started {mode} shadow sync {args.source} → {args.target} ({group or 'every thing'}): {workflow_id}"
    )
    print(f"  {ui_link(cfg, workflow_id)}")
    if not args.wait or args.periodic:
        return 0
    result: ShadowSyncResult = await handle.result()
    print(_render(result))
    return 1 if result.failed else 0


def _render(r: ShadowSyncResult) -> str:
    lines = [
        f"things {r.things_scanned} · shadows copied {r.shadows_copied} · merged {r.merged} · "
        f"unchanged {r.unchanged} · failed {r.failed} · stale leaves {r.stale_leaves}"
    ]
    lines += [f"  failed: {f}" for f in r.failures]
    lines += [f"  stale:  {s}" for s in r.stale_sample[:5]]
    return "\n".join(lines)


def cmd_parity(args: argparse.Namespace) -> int:
    """Runs here, not on the worker: a read-only report an operator wants at once."""
    cfg, group = _resolve(args)
    try:
        report = ShadowActivities(Deployments([cfg])).check_shadow_parity(
            ShadowParityInput(cfg.name, args.source, args.target, group)
        )
    except ApplicationError as e:
        raise CliError(str(e)) from None
    scope = group or "every thing"
    if report.ok:
        print(
            f"Shadows in {args.target} are up to date with {args.source}: {report.things_checked} things ({scope})."
        )
        return 0
    print(
        f"{report.differing} of {report.things_checked} things ({scope}) have shadows in {args.target} "
        f"behind {args.source}:"
    )
    for line in report.sample:
        print(f"  {line}")
    print(
        f"Fix: python starter.py shadows sync --from {args.source} --to {args.target}"
        + (f" --group {group}" if group else " --all-things")
    )
    return DIFFER_EXIT
