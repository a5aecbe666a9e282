"""`starter.py parity`: compare every target region with its source; exits non-zero on drift."""

from __future__ import annotations

import argparse

from activities.registry import registry_parity, sources
from cli import CliError
from cli.common import config_of
from core.aws import AwsClients


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="registry parity between regions (exit 1 on drift)")
    # the names every command uses (--from/--to regions, --scope a thing group); the first ones stay
    p.add_argument(
        "--from", "--source", dest="source", help="source region (default: the deployment's sources)"
    )
    p.add_argument("--to", "--target", dest="target", help="target region (default: every other region)")
    p.add_argument("--scope", "--thing-group", dest="thing_group", help="only this thing group's devices")
    p.set_defaults(handler=cmd_parity)


def cmd_parity(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    aws = AwsClients(cfg)
    for r in (args.source, args.target):
        if r and r not in cfg.regions:
            raise CliError(f"unknown region {r!r}; this deployment has {', '.join(cfg.regions)}")
    srcs = [args.source] if args.source else sources(cfg)
    ok = True
    for s in srcs:
        for t in [args.target] if args.target else [r for r in cfg.region_names if r != s]:
            report = registry_parity(aws, s, t, args.thing_group)
            print(report.render())
            ok &= report.ok
    return 0 if ok else 1
