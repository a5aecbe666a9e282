"""A provisioned fleet in one region for the replication tests and bench (plain boto3, like a customer)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from botocore.exceptions import ClientError

from activities.context import Deployments
from activities.registry import ReadyInput, RegistryActivities
from core.config import DeploymentConfig
from rehearsal import pki
from tests import toml_files
from tests.conftest import make_config
from tests.toml_files import deployment_data

POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}],
}

# the limiter is tested elsewhere; here the emulator sets the pace
FAST = {"default_rps": 5000, "per_api": {}}


def fast_config(
    emulators: dict[str, str], ca: pki.LocalCA, tmp_path: Path, **overrides: dict
) -> DeploymentConfig:
    """A two-region deployment on the emulators with the rate limiter out of the way."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.cert_pem)
    return make_config(emulators, ca_file, quotas=FAST, **overrides)


def ready_activities(cfg: DeploymentConfig) -> RegistryActivities:
    """The registry activities with queues, tables and CA prepared, as the workflow's first step does."""
    acts = RegistryActivities(Deployments([cfg]))
    acts.ensure_replication_ready(ReadyInput(cfg.name))
    return acts


@dataclass
class Fleet:
    things: list[str] = field(default_factory=list)
    cert_ids: dict[str, str] = field(default_factory=dict)  # thing -> certificate id
    groups: list[str] = field(default_factory=list)


def provision(
    iot: Any, ca: pki.LocalCA, n: int, prefix: str = "dev", policy: str = "test-policy", threads: int = 16
) -> Fleet:
    """CA, two thing types, nested groups (fleet > east > east-a), a policy, n things with certs."""
    try:
        iot.register_ca_certificate(caCertificate=ca.cert_pem, setAsActive=True, certificateMode="SNI_ONLY")
    except ClientError as e:  # already registered (by the replicator's readiness step)
        if e.response["Error"]["Code"] != "ResourceAlreadyExistsException":
            raise
    for t in ("sensor", "gateway"):
        iot.create_thing_type(thingTypeName=t, thingTypeProperties={"thingTypeDescription": f"{t}s"})
    iot.create_thing_group(thingGroupName="test-fleet", thingGroupProperties={"thingGroupDescription": "all"})
    iot.create_thing_group(thingGroupName="east", parentGroupName="test-fleet")
    iot.create_thing_group(
        thingGroupName="east-a",
        parentGroupName="east",
        thingGroupProperties={"attributePayload": {"attributes": {"site": "a"}}},
    )
    iot.create_policy(policyName=policy, policyDocument=json.dumps(POLICY))
    fleet = Fleet(groups=["test-fleet", "east", "east-a"])
    pems = [pki.issue_device_cert(ca, f"{prefix}-{i:04d}")[0] for i in range(n)]

    def one(i: int) -> tuple[str, str]:
        name = f"{prefix}-{i:04d}"
        iot.create_thing(
            thingName=name,
            thingTypeName="sensor" if i % 3 else "gateway",
            attributePayload={"attributes": {"sku": f"sku-{i % 7}", "batch": str(i // 50)}},
        )
        cert = iot.register_certificate(certificatePem=pems[i], caCertificatePem=ca.cert_pem, status="ACTIVE")
        iot.attach_policy(policyName=policy, target=cert["certificateArn"])
        iot.attach_thing_principal(thingName=name, principal=cert["certificateArn"])
        iot.add_thing_to_thing_group(thingGroupName=("east-a", "east", "test-fleet")[i % 3], thingName=name)
        return name, cert["certificateId"]

    with ThreadPoolExecutor(threads) as pool:
        for name, cid in pool.map(one, range(n)):
            fleet.things.append(name)
            fleet.cert_ids[name] = cid
    return fleet


def write_toml(cfg: DeploymentConfig, path: Path, **temporal: str) -> Path:
    """The deployment as a TOML file, for `starter.py --config` (with a [temporal] section if given)."""
    return toml_files.write_toml(path, deployment_data(cfg) | ({"temporal": temporal} if temporal else {}))


@contextmanager
def denied(client: Any, operation: str) -> Iterator[None]:
    """Answer `operation` on this boto3 client as AWS does when the role lacks the right."""

    def deny(**_: Any) -> tuple[Any, dict]:
        error = {"Code": "AccessDeniedException", "Message": f"not authorized to perform iot:{operation}"}
        return SimpleNamespace(status_code=403, headers={}), {
            "Error": error,
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }

    event = f"before-call.iot.{operation}"
    client.meta.events.register(event, deny)
    try:
        yield
    finally:
        client.meta.events.unregister(event, deny)
