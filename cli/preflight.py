"""`starter.py preflight`: what a deployment needs before the controller can act on it, checked in
every region and in the Temporal namespace. Nothing is changed; each missing piece is named with
its fix; exit 1 when anything is missing, 5 when a region or Temporal cannot even be reached."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

from cli import Exit
from cli.common import client_for, config_of, run_async
from core.aws import AwsClients
from core.certs import certificate_id
from core.config import DeploymentConfig
from core.errors import error_code, is_not_found
from core.prerequisites import REGISTRY_EVENT_TYPES
from core.temporal import SEARCH_ATTRIBUTES
from replication.dead_letters import dead_letter_queue

REGION_STACK = "deploy/aws/region.yaml creates it (docs/operating.md, 1.3)"


@dataclass
class Check:
    where: str  # a region, or "temporal"
    what: str
    ok: bool
    detail: str = ""
    fix: str = ""

    def render(self) -> str:
        line = f"{'ok' if self.ok else 'MISSING':<8} {self.where:<12} {self.what}"
        line += f": {self.detail}" if self.detail else ""
        return line + (f"\n{'':<22}fix: {self.fix}" if not self.ok and self.fix else "")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preflight",
        help="check a deployment's prerequisites in every region and in Temporal (changes nothing)",
    )
    p.add_argument("--skip-temporal", action="store_true", help="check the AWS regions only")
    p.set_defaults(handler=run_async(cmd_preflight))


async def cmd_preflight(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    checks = [c for region in cfg.region_names for c in region_checks(AwsClients(cfg), region)]
    if not args.skip_temporal:
        checks += await temporal_checks(cfg)
    for c in checks:
        print(c.render())
    missing = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(missing)} of {len(checks)} prerequisites in place")
    if any(c.what in ("credentials", "connection") for c in missing):
        return Exit.UNREACHABLE
    return Exit.FAILED if missing else Exit.OK


def region_checks(aws: AwsClients, region: str) -> list[Check]:
    """Credentials first: without them nothing else can be asked."""
    cfg = aws.cfg
    identity = _ask(region, "credentials", lambda: aws.client(region, "sts").get_caller_identity()["Arn"])
    if not identity.ok:
        identity.fix = (
            "the worker's identity must be able to assume regions.<region>.role_arn with its "
            "external_id (docs/troubleshooting.md)"
        )
        return [identity]
    out = [identity]
    ddb, iot = aws.dynamodb(region), aws.iot(region)
    for table in (cfg.bootstrap_table, cfg.claims_table, cfg.routing_table, cfg.replication.ledger_table):
        out.append(_exists(region, f"table {table}", lambda t=table: ddb.describe_table(TableName=t)))
    for queue in (cfg.replication.events_queue, dead_letter_queue(cfg.replication.events_queue)):
        out.append(
            _exists(region, f"queue {queue}", lambda q=queue: aws.sqs(region).get_queue_url(QueueName=q))
        )
    out.append(_ca(cfg, iot, region))
    out.append(_events(iot, region))
    return out


def _ask(region: str, what: str, call: Callable[[], Any]) -> Check:
    try:
        return Check(region, what, True, str(call() or ""))
    except (ClientError, BotoCoreError) as e:
        return Check(region, what, False, f"{error_code(e) or type(e).__name__}: {e}"[:240])


def _exists(region: str, what: str, call: Callable[[], Any]) -> Check:
    """`call` answers when the resource exists (its answer is not shown)."""

    def probe() -> str:
        call()
        return ""

    check = _ask(region, what, probe)
    if not check.ok:
        check.fix = REGION_STACK
    return check


def _ca(cfg: DeploymentConfig, iot: Any, region: str) -> Check:
    """The customer CA, ACTIVE with auto-registration, so devices it signed connect (and JITR)."""
    ca_id = certificate_id(cfg.ca_pem())
    what = f"customer CA {ca_id[:12]}"
    fix = "`python starter.py replicate --now` registers it in every region (replication does, too)"
    try:
        desc = iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
    except (ClientError, BotoCoreError) as e:
        detail = "not registered" if is_not_found(e) else f"{error_code(e)}: {e}"[:240]
        return Check(region, what, False, detail, fix)
    status, auto = desc.get("status"), desc.get("autoRegistrationStatus")
    ok = status == "ACTIVE" and auto == "ENABLE"
    return Check(region, what, ok, f"{status}, auto-registration {auto}", "" if ok else fix)


def _events(iot: Any, region: str) -> Check:
    what = "registry event configurations"
    try:
        configs = iot.describe_event_configurations()["eventConfigurations"]
    except (ClientError, BotoCoreError) as e:
        return Check(region, what, False, f"{error_code(e)}: {e}"[:240], REGION_STACK)
    off = [t for t in REGISTRY_EVENT_TYPES if not configs.get(t, {}).get("Enabled")]
    detail = f"off: {', '.join(off)}" if off else f"{len(REGISTRY_EVENT_TYPES)} types enabled"
    return Check(region, what, not off, detail, "" if not off else REGION_STACK.replace("creates", "enables"))


async def temporal_checks(cfg: DeploymentConfig) -> list[Check]:
    ns = cfg.temporal.namespace
    try:
        client = await client_for(cfg)
    except Exception as e:  # CliError or the SDK's: both are the answer here
        return [Check("temporal", "connection", False, str(e)[:240], "docs/troubleshooting.md, Temporal")]
    checks = [Check("temporal", "connection", True, f"{cfg.temporal.address} namespace {ns}")]
    try:
        answer = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=ns)
        )
    except Exception as e:  # Temporal Cloud answers the operator API only with an admin's key
        checks.append(Check("temporal", "search attributes", False, f"cannot list: {e}"[:240]))
        return checks
    known = set(answer.custom_attributes)
    missing = [sa.name for sa in SEARCH_ATTRIBUTES if sa.name not in known]
    checks.append(
        Check(
            "temporal",
            "search attributes",
            not missing,
            f"missing: {', '.join(missing)}" if missing else ", ".join(sa.name for sa in SEARCH_ATTRIBUTES),
            "register them once per namespace (docs/operating.md, 1.5)",
        )
    )
    return checks
