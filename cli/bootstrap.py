"""`starter.py bootstrap show <thing>`: what a device would get at boot, from each region."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from urllib.parse import quote

from bootstrap.service import BootstrapService
from cli import CliError, Exit
from cli.common import config_of
from core.config import DeploymentConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bootstrap", help="the device bootstrap service: what devices are told at boot")
    b = p.add_subparsers(dest="bootstrap_command", required=True, metavar="action")
    show = b.add_parser("show", help="what a device gets from each region's bootstrap service")
    show.add_argument("thing", help="the device's thing name")
    show.add_argument("--json", action="store_true", help="print each region's raw answer as JSON")
    show.set_defaults(handler=cmd_show)


def ask(cfg: DeploymentConfig, region: str, thing: str) -> tuple[int, dict, str]:
    """(status, body, source): the region's running service, else its logic run here."""
    url = cfg.regions[region].bootstrap_url
    if url:
        try:
            with urllib.request.urlopen(f"{url}/v1/bootstrap/{quote(thing, safe='')}", timeout=5) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read()), url
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}"), url
        except (urllib.error.URLError, OSError, ValueError):
            pass  # not running: answer with the same logic, in process
    ans = BootstrapService(cfg, region, cache_ttl=0).answer(thing)
    return ans.status, ans.body, "service logic (no service answering)"


def _describe(status: int, body: dict) -> list[str]:
    if status != 200:
        return [f"    {body.get('error', body)}"]
    lines = [f"    epoch {body['epoch']}, scope {body.get('scope', 'default')}"]
    for i, e in enumerate(body["endpoints"], 1):
        role = "primary" if e["primary"] else "fallback"
        lines.append(f"    {i}. {e['region']:<14} {e['endpoint']}  {role}, retry {e['retry']}")
    topics = body["topics"]
    lines.append(f"    topics: configurations {topics['configurations']}  sensor {topics['sensor']}")
    return lines


def cmd_show(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    answers = {region: ask(cfg, region, args.thing) for region in cfg.regions}
    for region, (status, body, source) in answers.items():
        if args.json:
            print(json.dumps({"region": region, "status": status, "source": source, "answer": body}))
        else:
            print(f"{region} ({source}): HTTP {status}")
            print("\n".join(_describe(status, body)))
    statuses = {region: a[0] for region, a in answers.items()}
    if 400 in statuses.values():
        raise CliError(f"{args.thing!r} is not a valid thing name (1-128 of [a-zA-Z0-9:_-])", code=Exit.USAGE)
    unknown = [r for r, s in statuses.items() if s == 404]
    if unknown and len(unknown) == len(statuses):
        raise CliError(
            f"device {args.thing!r} is unknown in every region ({', '.join(unknown)}): check the name or "
            "register the device (its certificate and thing) first",
            code=Exit.FAILED,
        )
    if unknown:
        raise CliError(
            f"device {args.thing!r} is unknown in {', '.join(unknown)}: registry replication has not "
            "caught up there, so those regions cannot serve it",
            code=Exit.FAILED,
        )
    if 200 not in statuses.values():
        raise CliError(f"no region could answer for {args.thing!r}: {statuses}", code=Exit.UNREACHABLE)
    return 0
