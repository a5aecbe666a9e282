"""`starter.py fleet provision|run|stop|status`: the simulated device fleet of the local stack."""

from __future__ import annotations

import argparse
import time

from cli import CliError
from cli.common import config_of
from rehearsal.stack import Stack
from simulator.fleet import read_status
from simulator.provision import Provisioner, ProvisionError, fleet_dir

COMPONENT = "fleet"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="the simulated device fleet: provision, run, stop, status")
    fleet = p.add_subparsers(dest="fleet_command", required=True, metavar="action")

    prov = fleet.add_parser("provision", help="create the demo fleet in the primary region (idempotent)")
    prov.add_argument("--devices", type=int, default=100, help="fleet size (default: %(default)s)")
    prov.add_argument("--workers", type=int, default=8, help="concurrent provisioning calls")
    prov.set_defaults(handler=cmd_provision)
    fleet.add_parser("run", help="start the simulated devices in the background (idempotent)").set_defaults(
        handler=cmd_run
    )
    fleet.add_parser("stop", help="stop the simulated devices").set_defaults(handler=cmd_stop)
    fleet.add_parser("status", help="devices per region and state").set_defaults(handler=cmd_status)


def cmd_provision(args: argparse.Namespace) -> int:
    if not 1 <= args.devices <= 10_000:
        raise CliError("--devices must be between 1 and 10000")
    cfg = config_of(args, need_ca=False)
    print(f"Provisioning {args.devices} devices of deployment {cfg.name} in {cfg.primary}:")
    try:
        result = Provisioner(cfg, workers=max(1, args.workers)).run(args.devices)
    except ProvisionError as e:
        raise CliError(f"{e} (re-running `fleet provision` resumes where this stopped)") from None
    if cfg.is_local and Stack(cfg, args.config).running(COMPONENT):  # the fleet follows the new manifest
        stack = Stack(cfg, args.config)
        stack.down(only=[COMPONENT], echo=lambda _: None)
        stack.up(only=[COMPONENT], echo=lambda _: None)
        print("Restarted the running fleet on the new manifest.")
    print(
        f"Done: {result.devices} devices ({result.created} created or repaired) in {result.region}; "
        f"group {cfg.fleet.thing_group}, policy {cfg.fleet.policy_name}.\n"
        f"Keys and certificates: {fleet_dir(cfg) / 'certs'}    Manifest: {result.manifest}\n"
        "Start them: python starter.py fleet run"
    )
    return 0


def _stack(args: argparse.Namespace) -> Stack:
    cfg = config_of(args, need_ca=False)
    if not cfg.is_local:
        raise CliError(
            "the simulated fleet runs on the local stack; this deployment has no endpoint_url overrides"
        )
    if not (fleet_dir(cfg) / "manifest.json").exists():
        raise CliError(
            "no fleet is provisioned yet: run `python starter.py fleet provision --devices N` first"
        )
    return Stack(cfg, args.config)


def cmd_run(args: argparse.Namespace) -> int:
    stack = _stack(args)
    try:
        stack.up(only=[COMPONENT])
    except RuntimeError as e:
        raise CliError(str(e)) from None
    print(f"Logs: {stack.log_dir / (COMPONENT + '.log')}    Status: python starter.py fleet status")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    _stack(args).down(only=[COMPONENT])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = config_of(args, need_ca=False)
    snap = read_status(cfg)
    if snap is None:
        print("The fleet has not run yet (python starter.py fleet run).")
        return 3
    age = time.time() - snap.get("updated", 0)
    running = "running" if snap["running"] else "not running"
    print(
        f"Fleet of {cfg.name}: {snap['devices']} devices, simulator {running} (pid {snap['pid']}), updated {age:.0f}s ago"
    )
    if snap.get("faulty"):
        print("  faulty: " + ", ".join(f"{k} {v}" for k, v in sorted(snap["faulty"].items())))
    print(f"  {'region':<14} {'state':<14} {'devices':>8}")
    for region, states in snap["by_region"].items():
        for state, n in states.items():
            print(f"  {region:<14} {state:<14} {n:>8}")
    totals = snap.get("totals", {})
    if totals:
        print("  totals: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    return 0 if snap["running"] else 3
