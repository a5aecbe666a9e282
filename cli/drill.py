"""`starter.py drill`: rehearse a failover and fail back; `drill schedule` makes it a habit."""

from __future__ import annotations

import argparse
import asyncio
import re
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleSpec,
)

from cli import CliError
from cli.common import client_for, config_of, run_async, ui_link
from core.config import DeploymentConfig
from core.workflow_ids import drill_prefix
from workflows.drill import DrillInput, DrillWorkflow
from workflows.drill_report import DrillCriteria, DrillReport, render_markdown


def duration(text: str) -> timedelta:
    """`90`, `90s`, `5m`, `2h`, `7d`."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 60s, 5m, 2h or 7d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return timedelta(seconds=float(m.group(1)) * unit)


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("drill", help="rehearse a failover on (a slice of) the fleet, fail back, report")
    d.add_argument(
        "--kind",
        choices=["planned", "outage"],
        default="planned",
        help="planned: cutover and back; outage: fault switch on the primary (local stack)",
    )
    scope = d.add_mutually_exclusive_group()
    scope.add_argument("--scope", help="thing group to drill with")
    scope.add_argument("--percent", type=float, help="sample this percent of the fleet into a drill group")
    d.add_argument(
        "--hold", type=duration, default=timedelta(seconds=30), help="time in the target (e.g. 60s)"
    )
    d.add_argument("--min-confirmed", type=float, default=95.0, help="percent of devices that must move")
    d.add_argument(
        "--max-recovery",
        type=duration,
        default=timedelta(minutes=10),
        help="longest acceptable time to 95%% of devices in the target",
    )
    d.add_argument(
        "--approval",
        choices=["none", "canary", "every-wave", "policy"],
        default="none",
        help="approval gates of the drill's cutovers (policy: the deployment's [cutover] approval); "
        "a drill is unattended unless you ask for gates",
    )
    d.add_argument(
        "--timeout",
        type=duration,
        help="the longest any one wait of the drill may take (a cutover to start or end, a region's "
        "health) before it aborts what it started and reports FAIL (default: from the health policy, "
        "at least 15m)",
    )
    d.add_argument("--wait", action="store_true", help="follow progress and print the report")
    d.set_defaults(handler=run_async(cmd_drill), drill_command=None)
    ds = d.add_subparsers(dest="drill_command", metavar="schedule")
    s = ds.add_parser("schedule", help="run this drill on a Temporal Schedule")
    s.add_argument("--every", type=duration, required=True, help="e.g. 7d")
    s.add_argument(
        "--kind",
        choices=["planned", "outage"],
        default="planned",
        help="each drill's kind (default: %(default)s)",
    )
    s.add_argument(
        "--percent",
        type=float,
        default=10.0,
        help="each drill's sample of the fleet (default: %(default)s%%)",
    )
    s.set_defaults(handler=run_async(cmd_schedule))


async def next_drill_id(client: Client, cfg: DeploymentConfig) -> str:
    prefix = drill_prefix(cfg.name)
    highest = 0
    async for wf in client.list_workflows(f"WorkflowType = '{DrillWorkflow.__name__}'"):
        tail = wf.id.removeprefix(prefix)
        if wf.id.startswith(prefix) and tail.isdigit():
            highest = max(highest, int(tail))
    return f"{prefix}{highest + 1}"


def drill_input(cfg: DeploymentConfig, drill_id: str, args: argparse.Namespace) -> DrillInput:
    if args.percent is not None and not 0 < args.percent <= 100:
        raise CliError("--percent must be between 0 and 100")
    timeout, approval = getattr(args, "timeout", None), getattr(args, "approval", "none")
    if timeout is not None and timeout.total_seconds() <= 0:
        raise CliError("--timeout must be longer than 0s")
    return DrillInput(
        deployment=cfg.name,
        drill_id=drill_id,
        kind=args.kind,
        scope=getattr(args, "scope", None),
        percent=args.percent,
        hold_seconds=getattr(args, "hold", timedelta(seconds=30)).total_seconds(),
        criteria=DrillCriteria(
            min_confirmed_percent=getattr(args, "min_confirmed", 95.0),
            max_recovery_seconds=getattr(args, "max_recovery", timedelta(minutes=10)).total_seconds(),
        ),
        timeout_seconds=timeout.total_seconds()
        if timeout
        else max(900.0, cfg.health.interval_seconds * (cfg.health.unhealthy_after + 4) * 4),
        approval=None if approval == "policy" else approval,
    )


async def run_drill(client: Client, cfg: DeploymentConfig, args: argparse.Namespace) -> DrillReport | None:
    drill_id = await next_drill_id(client, cfg)
    handle = await client.start_workflow(
        DrillWorkflow.run,
        drill_input(cfg, drill_id, args),
        id=drill_id,
        task_queue=cfg.temporal.task_queue,
        static_summary=f"{args.kind} drill of {cfg.name}",
    )
    print(f"{drill_id}: {args.kind} drill started")
    print(f"  {ui_link(cfg, drill_id)}", flush=True)
    if not args.wait:
        return None
    last = None
    while True:
        report = await handle.query(DrillWorkflow.report)
        if report and report.phase != last:
            print(f"  [{report.phase}]" + "".join(f"\n    {c}" for c in report.cutovers[-1:]), flush=True)
            last = report.phase
        if report and report.phase.startswith("done"):
            return await handle.result()
        await asyncio.sleep(2)


async def cmd_drill(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    client = await client_for(cfg)
    report = await run_drill(client, cfg, args)
    if report is None:
        return 0
    print()
    print(render_markdown(report))
    print("Report files: " + ", ".join(report.report_paths))
    return 0 if report.passed else 1


async def cmd_schedule(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    client = await client_for(cfg)
    schedule_id = f"{drill_prefix(cfg.name)}every-{int(args.every.total_seconds())}s"
    inp = drill_input(cfg, "", args)  # each scheduled run is named by its own workflow ID
    try:
        await client.create_schedule(
            schedule_id,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    DrillWorkflow.run,
                    inp,
                    id=f"{drill_prefix(cfg.name)}scheduled",
                    task_queue=cfg.temporal.task_queue,
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=args.every)]),
            ),
        )
        print(f"schedule {schedule_id} created: a {args.kind} drill every {args.every}")
    except ScheduleAlreadyRunningError:
        print(f"schedule {schedule_id} already exists")
    print(f"  {cfg.temporal.ui_url.rstrip('/')}/namespaces/{cfg.temporal.namespace}/schedules/{schedule_id}")
    return 0
