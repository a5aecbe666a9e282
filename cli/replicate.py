"""`starter.py replicate [start|status|dead-letters] [--now]`: the deployment's registry replication.

`start`, `status` and `--now` talk to its RegistryReplicationWorkflow; `dead-letters` reads each
region's dead-letter queue directly (no Temporal needed), so it works while the worker is down.
"""

from __future__ import annotations

import argparse

from botocore.exceptions import BotoCoreError, ClientError
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.service import RPCError

from activities.registry_dead_letters import DeadLetterQueues
from cli import CliError, Exit
from cli.common import client_for, config_of, run_async, ui_link
from core.aws import AwsClients
from core.config import DeploymentConfig
from core.temporal import SA_DEPLOYMENT
from core.workflow_ids import deployment_id, replication_id
from workflows.replication import (
    ReconcileNowInput,
    ReconcileNowResult,
    RegistryReplicationWorkflow,
    ReplicationInput,
    ReplicationState,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replicate", help="registry and certificate replication across the deployment's regions"
    )
    p.add_argument("--now", action="store_true", help="run a full reconcile now and wait for its result")
    p.add_argument("--no-wait", action="store_true", help="with --now: return once the reconcile is queued")
    p.set_defaults(handler=run_async(cmd_replicate), replicate_command=None)
    actions = p.add_subparsers(dest="replicate_command", metavar="action")
    actions.add_parser("start", help="start the replication workflow (idempotent)")
    actions.add_parser("status", help="lag, drift, last reconcile and dead letters")
    dead = actions.add_parser(
        "dead-letters",
        help="registry events that could not be applied, per region with reasons (exit 1 if any wait)",
    )
    dead.add_argument("--region", help="only this region (default: every region of the deployment)")
    dead.add_argument("--limit", type=int, default=20, help="dead letters shown per region (default: 20)")
    dead.add_argument(
        "--replay",
        action="store_true",
        help="move them back into the events queue (after fixing their cause); safe to repeat",
    )


def replication_input(cfg: DeploymentConfig) -> ReplicationInput:
    return ReplicationInput(
        deployment=cfg.name,
        reconcile_interval_seconds=cfg.replication.reconcile_interval_minutes * 60,
        deployment_workflow_id=deployment_id(cfg.name),  # replica reports go to the deployment's entity
    )


async def start(client: Client, cfg: DeploymentConfig) -> WorkflowHandle:
    """Start the deployment's replication workflow, or return the running one."""
    return await client.start_workflow(
        RegistryReplicationWorkflow.run,
        replication_input(cfg),
        id=replication_id(cfg.name),
        task_queue=cfg.temporal.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes([SearchAttributePair(SA_DEPLOYMENT, cfg.name)]),
        static_summary=f"Registry replication for {cfg.name}",
    )


async def cmd_replicate(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    if args.replicate_command == "dead-letters":
        return dead_letters(cfg, args.region, args.limit, args.replay)
    client = await client_for(cfg)
    if args.replicate_command == "status":
        return await _status(client, cfg)
    handle = await start(client, cfg)
    print(f"replication workflow {handle.id}: {ui_link(cfg, handle.id)}")
    if not args.now:
        return 0
    print("reconciling every region now..." if not args.no_wait else "queueing a reconcile...")
    try:
        res: ReconcileNowResult = await handle.execute_update(
            RegistryReplicationWorkflow.reconcile_now, ReconcileNowInput(wait=not args.no_wait)
        )
    except RPCError as e:
        raise CliError(f"the replication workflow did not take the request: {e}") from None
    if res.queued_only:
        print("queued")
        return 0
    for r in res.results:
        applied = ", ".join(f"{k} {v}" for k, v in sorted(r.applied.items())) or "nothing to apply"
        print(f"  {r.source} -> {r.target}: {applied} ({r.seconds:.1f}s)")
        for f in r.failures:
            print(f"    failed: {f}")
    drift = ", ".join(f"{k} {v}" for k, v in sorted(res.drift.items()) if v) or "none"
    print(f"reconcile #{res.reconciles} done; drift found: {drift}")
    return 1 if any(r.failed for r in res.results) else 0


async def _status(client: Client, cfg: DeploymentConfig) -> int:
    handle = client.get_workflow_handle(replication_id(cfg.name))
    try:
        s: ReplicationState = await handle.query(RegistryReplicationWorkflow.status)
    except RPCError as e:
        raise CliError(
            f"no replication workflow for {cfg.name} ({e}); start it with `replicate start`"
        ) from None
    print(f"replication workflow {handle.id}: {ui_link(cfg, handle.id)}")
    print(f"  last full reconcile: {s.last_full_reconcile or 'never'} (#{s.reconciles})")
    print(f"  drift found: {s.drift or 'none'}; lag: {s.lag_seconds}")
    print(
        f"  events applied {s.events_applied}, JITR {s.jitr_registered}, dead letters {s.dead_letter_count}"
    )
    for d in s.dead_letters[-5:]:
        print(f"    {d.at} {d.region} {d.reason}: {d.detail}")
    if s.dead_letter_queue_depth:
        print(f"  waiting in the dead-letter queues: {s.dead_letter_queue_depth} (`replicate dead-letters`)")
    for r in s.replicas:
        print(
            f"  copy in {r.target} of {r.source}: {'complete' if r.complete else 'incomplete: ' + r.reason}"
        )
    if s.replica_unsent:
        print(f"  the deployment workflow was not told: {s.replica_signal_error}")
    return 0


def dead_letters(cfg: DeploymentConfig, region: str | None, limit: int, replay: bool) -> int:
    """List (or replay) each region's dead letters; 0 when none is left waiting, 1 otherwise."""
    if region and region not in cfg.regions:
        raise CliError(f"unknown region {region!r}; this deployment has {', '.join(cfg.regions)}")
    if limit < 0:
        raise CliError("--limit must be 0 or more")
    queues = DeadLetterQueues(AwsClients(cfg))
    waiting = 0
    for r in [region] if region else cfg.region_names:
        try:
            if replay:
                res = queues.replay(r)
                print(f"{r}: {res.moved} moved back to the events queue, {res.left} still dead-lettered")
                waiting += res.left
                continue
            listing = queues.peek(r, limit)
        except (ClientError, BotoCoreError) as e:
            raise CliError(
                f"cannot read the dead-letter queue {queues.dead_queue} in {r}: {e} "
                "(run `replicate start` once to create the queues, or check the region's credentials)",
                code=Exit.UNREACHABLE,
            ) from None
        waiting += listing.count
        print(f"{r}: {listing.count} dead letters in {listing.queue}")
        for m in listing.messages:
            print(f"  {m.at or '-'} {m.reason} (from {m.region}, {m.receives} receives): {m.detail[:200]}")
            print(f"    {m.body[:120]}")
        if listing.count > len(listing.messages):
            print(f"  ... and {listing.count - len(listing.messages)} more (--limit)")
    if waiting and not replay:
        print("fix their cause, then `replicate dead-letters --replay` puts them back on the events queue")
    return 1 if waiting else 0
