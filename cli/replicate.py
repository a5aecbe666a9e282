"""`starter.py replicate [start|status] [--now]`: the deployment's RegistryReplicationWorkflow."""

from __future__ import annotations

import argparse

from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.service import RPCError

from cli import CliError
from cli.common import client_for, config_of, run_async, ui_link
from core.config import DeploymentConfig
from core.temporal import SA_DEPLOYMENT
from workflows.replication import (
    ReconcileNowInput,
    ReconcileNowResult,
    RegistryReplicationWorkflow,
    ReplicationInput,
    ReplicationState,
    workflow_id,
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


def replication_input(cfg: DeploymentConfig) -> ReplicationInput:
    return ReplicationInput(
        deployment=cfg.name, reconcile_interval_seconds=cfg.replication.reconcile_interval_minutes * 60
    )


async def start(client: Client, cfg: DeploymentConfig) -> WorkflowHandle:
    """Start the deployment's replication workflow, or return the running one."""
    return await client.start_workflow(
        RegistryReplicationWorkflow.run,
        replication_input(cfg),
        id=workflow_id(cfg.name),
        task_queue=cfg.temporal.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes([SearchAttributePair(SA_DEPLOYMENT, cfg.name)]),
        static_summary=f"Registry replication for {cfg.name}",
    )


async def cmd_replicate(args: argparse.Namespace) -> int:
    cfg = config_of(args)
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
    handle = client.get_workflow_handle(workflow_id(cfg.name))
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
    return 0
