"""`starter.py demo` (what `make demo` runs): the local stack, a fleet, the deployment, an outage drill.

Leaves the stack running so the drill can be explored in the Temporal UI afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from activities.registry import registry_parity
from cli import CliError
from cli.common import client_for, config_of, run_async, ui_link
from cli.deployment import deployment_state, start_deployment
from cli.drill import run_drill
from cli.local import print_urls
from core.aws import AwsClients
from core.config import DeploymentConfig
from core.models import HEALTHY
from core.workflow_ids import deployment_id
from rehearsal.stack import Stack
from simulator.fleet import read_status
from simulator.provision import Provisioner
from workflows.drill_report import render_markdown


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="start everything locally and run an outage drill end to end")
    d.add_argument("--devices", type=int, default=100, help="fleet size (default: %(default)s)")
    d.add_argument(
        "--kind",
        choices=["outage", "planned"],
        default="outage",
        help="the demo's drill: outage (the fault switch takes the primary down) or planned (a cutover and "
        "back); default: %(default)s",
    )
    d.set_defaults(handler=run_async(cmd_demo))


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


async def _wait(what: str, check, within: float = 300) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise CliError(f"timed out waiting for {what}; see `python starter.py status` and the logs")
        await asyncio.sleep(2)


async def cmd_demo(args: argparse.Namespace) -> int:
    cfg = config_of(args, need_ca=False)
    if not cfg.is_local:
        raise CliError("the demo runs on the local stack (a deployment with endpoint_url overrides)")
    stack = Stack(cfg, args.config)

    _step("Starting the local stack (Temporal, one AWS emulator per region, bootstrap services, worker)")
    try:
        await asyncio.to_thread(stack.up)
    except RuntimeError as e:
        raise CliError(str(e)) from None

    _step(f"Provisioning {args.devices} devices in {cfg.primary} (CA, certificates, things, policy, shadows)")
    await asyncio.to_thread(Provisioner(cfg).run, args.devices, lambda line: print(line, flush=True))
    cfg = config_of(args)

    _step("Starting the deployment, its health monitors and registry replication")
    client = await client_for(cfg)
    await start_deployment(client, cfg)
    await _wait("every region to be reported Healthy", lambda: _all_healthy(client, cfg))
    await _wait(
        f"the registry to be replicated to {', '.join(cfg.standbys())}", lambda: _replicated(client, cfg)
    )

    _step("Starting the simulated fleet")
    await asyncio.to_thread(stack.up, ["fleet"])
    await _wait(f"the fleet to connect in {cfg.primary}", lambda: _connected(cfg, args.devices))

    _step(f"Running an {args.kind} drill: watch it in the Temporal UI")
    drill_args = argparse.Namespace(kind=args.kind, scope=None, percent=None, wait=True)
    report = await run_drill(client, cfg, drill_args)
    print()
    print(render_markdown(report))
    print("Report files: " + ", ".join(report.report_paths))
    print_urls(stack)
    print(f"  Deployment             {ui_link(cfg, deployment_id(cfg.name))}")
    print(
        "\nExplore: python starter.py status | fleet status | health | drill --kind planned --percent 20 --wait"
    )
    return 0 if report.passed else 1


async def _all_healthy(client, cfg: DeploymentConfig) -> bool:
    try:
        s = await deployment_state(client, cfg)
    except CliError:
        return False
    return all(v.state == HEALTHY for v in s.health.values())


async def _replicated(client, cfg: DeploymentConfig) -> bool:
    """Parity holds, and the deployment has heard it from replication: automatic failover refuses a
    standby whose copy it does not know complete."""
    s = await deployment_state(client, cfg)
    complete = {v.target for v in s.replicas.values() if v.complete}
    if not set(cfg.standbys()) <= complete:
        return False
    aws = AwsClients(cfg)
    for target in cfg.standbys():
        report = await asyncio.to_thread(registry_parity, aws, cfg.primary, target, cfg.fleet.thing_group)
        if not report.ok:
            return False
    return True


async def _connected(cfg: DeploymentConfig, devices: int) -> bool:
    snap = read_status(cfg)
    if not snap:
        return False
    connected = snap.get("by_region", {}).get(cfg.primary, {}).get("connected", 0)
    return connected >= devices * 0.9
