"""`starter.py local up|down|status|reset|fault`: the local rehearsal stack."""

from __future__ import annotations

import argparse

from cli import CliError
from cli.common import config_of
from rehearsal import faults
from rehearsal.stack import Stack


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("local", help="the local rehearsal stack (Temporal, AWS emulators, bootstrap, worker)")
    local = p.add_subparsers(dest="local_command", required=True, metavar="action")

    up = local.add_parser("up", help="start the stack (idempotent) and print every URL")
    up.add_argument(
        "--only", nargs="*", help="start only these components (e.g. temporal emulator-us-east-1)"
    )
    up.set_defaults(handler=cmd_up)
    local.add_parser(
        "down", help="stop exactly the processes `local up` started; Temporal's history and the fleet go too"
    ).set_defaults(handler=cmd_down)
    local.add_parser(
        "reset", help="stop everything and wipe the state folder (CA, keys, history, logs)"
    ).set_defaults(handler=cmd_reset)
    local.add_parser("status", help="what runs, and whether it is healthy").set_defaults(handler=cmd_status)

    f = local.add_parser("fault", help="flip a region's fault switch: outage, latency, throttle or clear")
    f.add_argument("region", help="the emulated region to break or mend, e.g. us-east-1")
    f.add_argument("mode", choices=faults.MODES, help="the fault: %(choices)s")
    f.add_argument("--latency-ms", type=int, default=0, help="added latency per request (mode latency)")
    f.add_argument("--rate", type=float, default=1.0, help="share of requests affected, 0..1")
    f.set_defaults(handler=cmd_fault)


def _stack(args: argparse.Namespace) -> Stack:
    cfg = config_of(args, need_ca=False)
    if not cfg.is_local:
        raise CliError(
            "this deployment has no endpoint_url overrides: it runs against AWS, not the local stack"
        )
    return Stack(cfg, args.config)


def cmd_up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    print("Starting the local rehearsal stack:")
    try:
        stack.up(only=args.only)
    except RuntimeError as e:
        raise CliError(str(e)) from None
    print_urls(stack)
    return 0


def print_urls(stack: Stack) -> None:
    print("\nRunning:")
    for label, url in stack.urls().items():
        print(f"  {label:<22} {url}")
    print(f"\nLogs: {stack.log_dir}    Stop: python starter.py local down")


def cmd_down(args: argparse.Namespace) -> int:
    print("Stopping the local rehearsal stack:")
    _stack(args).down()
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    print("Resetting the local rehearsal stack:")
    _stack(args).reset()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rows = _stack(args).status()
    for r in rows:
        state = "healthy" if r["healthy"] else ("running, not answering" if r["running"] else "stopped")
        print(f"  {r['name']:<22} {state:<24} {'pid ' + str(r['pid']) if r['pid'] else ''}")
    return 0 if all(r["healthy"] for r in rows) else 3


def cmd_fault(args: argparse.Namespace) -> int:
    cfg = config_of(args, need_ca=False)
    region = cfg.regions.get(args.region)
    if region is None:
        raise CliError(f"unknown region {args.region!r}; this deployment has {', '.join(cfg.regions)}")
    if not region.endpoint_url:
        raise CliError(f"{args.region} is a real AWS region: the fault switch exists only on the local stack")
    try:
        state = faults.set_fault(region.endpoint_url, args.mode, args.latency_ms, args.rate)
    except OSError as e:
        raise CliError(f"the {args.region} emulator is not answering at {region.endpoint_url}: {e}") from None
    print(
        f"{args.region}: fault {state['fault']['mode']}"
        + (f" ({state['fault']['latency_ms']} ms)" if args.mode == "latency" else "")
    )
    return 0
