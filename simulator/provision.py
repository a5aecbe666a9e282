"""`starter.py fleet provision`: the demo fleet in the primary region, idempotently.

The customer CA and the device keys are made here and stay under the git-ignored state folder; only
public certificates go to AWS. Devices are provisioned a page at a time by a bounded thread pool
(the client factory's rate limiter keeps each API under its quota), and a device counts as done once
it is in the fleet group, which is its last step: a re-run skips finished devices and heals the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from core.aws import AwsClients, all_items
from core.config import DeploymentConfig
from core.errors import is_already_exists, is_not_found, to_application_error
from rehearsal import pki

SKUS = ("2563x01189", "2563x01190")
NAMED_SHADOW = "config"
PAGE = 100


class ProvisionError(RuntimeError):
    """A provisioning step AWS refused; the message says what failed and whether a re-run helps."""


@dataclass
class ProvisionResult:
    region: str
    devices: int
    created: int
    manifest: Path
    ca_certificate_id: str


def device_name(cfg: DeploymentConfig, index: int) -> str:
    return f"{cfg.name}-device-{index:05d}"


def fleet_dir(cfg: DeploymentConfig) -> Path:
    return cfg.state_dir / "fleet"


def policy_document(application: str) -> dict:
    """Least privilege per device: its own client id, topics, shadows and jobs."""
    thing = "${iot:Connection.Thing.ThingName}"
    arn = "arn:aws:iot:*:*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/{thing}"},
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [
                    f"{arn}:topic/data/{application}/{thing}/*",
                    f"{arn}:topic/cmd/{application}/config/{thing}/*",
                    f"{arn}:topic/$aws/things/{thing}/*",
                ],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [
                    f"{arn}:topicfilter/cmd/{application}/config/{thing}/*",
                    f"{arn}:topicfilter/$aws/things/{thing}/*",
                ],
            },
            {
                "Effect": "Allow",
                "Action": [
                    "iot:GetThingShadow",
                    "iot:UpdateThingShadow",
                    "iot:DescribeJobExecution",
                    "iot:GetPendingJobExecutions",
                    "iot:StartNextPendingJobExecution",
                    "iot:UpdateJobExecution",
                ],
                "Resource": f"{arn}:thing/{thing}",
            },
        ],
    }


class Provisioner:
    def __init__(self, cfg: DeploymentConfig, workers: int = 8):
        self.cfg = cfg
        self.region = cfg.primary
        self.workers = workers
        self.aws = AwsClients(cfg, max_pool_connections=workers)
        self.iot = self.aws.iot(self.region)
        self.data = self.aws.iot_data(self.region)
        self.certs = fleet_dir(cfg) / "certs"
        self.ca: pki.LocalCA | None = None

    def _aws(self, doing: str, fn: Callable, **kwargs) -> dict:
        """One AWS call; "already exists" is success (returns {}), anything else a readable error."""
        try:
            return fn(**kwargs)
        except ClientError as e:
            if is_already_exists(e):
                return {}
            raise ProvisionError(to_application_error(e, doing, self.region).message) from None
        except BotoCoreError as e:
            raise ProvisionError(to_application_error(e, doing, self.region).message) from None

    def run(self, devices: int, echo: Callable[[str], None] = print) -> ProvisionResult:
        self.ca = pki.load_or_create_ca(self.cfg.ca_certificate.parent)
        ca_id = self._shared_resources()
        group = self.cfg.fleet.thing_group
        done = set(all_items(self.iot, "list_things_in_thing_group", "things", thingGroupName=group))
        names = [device_name(self.cfg, i) for i in range(1, devices + 1)]
        created = 0
        with ThreadPoolExecutor(self.workers, thread_name_prefix="provision") as pool:
            for start in range(0, len(names), PAGE):
                page = names[start : start + PAGE]
                created += sum(pool.map(lambda n: self._device(n, n in done), page))
                echo(f"  {min(start + PAGE, len(names))}/{len(names)} devices provisioned in {self.region}")
        manifest = self._write_manifest(names)
        return ProvisionResult(self.region, len(names), created, manifest, ca_id)

    def _shared_resources(self) -> str:
        """The CA (public part, proven with a verification certificate), thing type, group, policy."""
        assert self.ca is not None
        code = self._aws("get the CA registration code", self.iot.get_registration_code)["registrationCode"]
        verification, _ = pki.issue_device_cert(self.ca, "verification", cn=code)  # its key is dropped
        ca_id = self._register(
            "register the customer CA",
            self.iot.register_ca_certificate,
            caCertificate=self.ca.cert_pem,
            verificationCertificate=verification,
            setAsActive=True,
            allowAutoRegistration=True,
        )["certificateId"]
        fleet = self.cfg.fleet
        if fleet.thing_type and not self._exists(
            self.iot.describe_thing_type, thingTypeName=fleet.thing_type
        ):
            self._aws(
                "create the thing type",
                self.iot.create_thing_type,
                thingTypeName=fleet.thing_type,
                thingTypeProperties={"searchableAttributes": ["sku", "application"]},
            )
        self._aws("create the fleet group", self.iot.create_thing_group, thingGroupName=fleet.thing_group)
        self._aws(
            "create the device policy",
            self.iot.create_policy,
            policyName=fleet.policy_name,
            policyDocument=json.dumps(policy_document(fleet.application)),
        )
        return ca_id

    def _exists(self, describe: Callable, **kwargs) -> bool:
        try:
            describe(**kwargs)
            return True
        except ClientError as e:
            if is_not_found(e):
                return False
            raise ProvisionError(to_application_error(e, describe.__name__, self.region).message) from None

    def _key_pair(self, name: str) -> tuple[str, bool]:
        """The device's certificate, issued once; its private key never leaves the state folder."""
        assert self.ca is not None
        cert_file, key_file = self.certs / f"{name}.pem", self.certs / f"{name}.key"
        if cert_file.exists() and key_file.exists():
            return cert_file.read_text(), False
        self.certs.mkdir(parents=True, exist_ok=True)
        cert, key = pki.issue_device_cert(self.ca, name, sku=self._sku(name))
        key_file.write_text(key)
        key_file.chmod(0o600)
        cert_file.write_text(cert)
        return cert, True

    def _sku(self, name: str) -> str:
        return SKUS[int(name.rsplit("-", 1)[-1]) % len(SKUS)]

    def _device(self, name: str, in_group: bool) -> int:
        """Certificate, thing, policy, attachments, shadows, then the group; 1 if anything was created."""
        assert self.ca is not None
        cert, new_cert = self._key_pair(name)
        if in_group and not new_cert:
            return 0
        fleet = self.cfg.fleet
        arn = self._register(
            f"register the certificate of {name}",
            self.iot.register_certificate,
            certificatePem=cert,
            caCertificatePem=self.ca.cert_pem,
            status="ACTIVE",
        )["certificateArn"]
        if not self._exists(self.iot.describe_thing, thingName=name):
            kwargs = {"thingTypeName": fleet.thing_type} if fleet.thing_type else {}
            self._aws(
                f"create thing {name}",
                self.iot.create_thing,
                thingName=name,
                attributePayload={"attributes": {"sku": self._sku(name), "application": fleet.application}},
                **kwargs,
            )
        self._aws(
            f"attach the policy to {name}", self.iot.attach_policy, policyName=fleet.policy_name, target=arn
        )
        self._aws(
            f"attach {name} to its certificate",
            self.iot.attach_thing_principal,
            thingName=name,
            principal=arn,
        )
        reported = {"state": {"reported": {"device": {"sku": self._sku(name), "firmware": "factory"}}}}
        self._aws(
            f"create the shadow of {name}",
            self.data.update_thing_shadow,
            thingName=name,
            payload=json.dumps(reported).encode(),
        )
        desired = {"state": {"desired": {"telemetryIntervalSeconds": 15}}}
        self._aws(
            f"create the {NAMED_SHADOW} shadow of {name}",
            self.data.update_thing_shadow,
            thingName=name,
            shadowName=NAMED_SHADOW,
            payload=json.dumps(desired).encode(),
        )
        self._aws(
            f"add {name} to the fleet group",
            self.iot.add_thing_to_thing_group,
            thingGroupName=fleet.thing_group,
            thingName=name,
        )
        return 1

    def _register(self, doing: str, fn: Callable, **kwargs) -> dict:
        """A certificate registration; "already registered" answers with the existing ID and ARN."""
        try:
            return fn(**kwargs)
        except ClientError as e:
            if is_already_exists(e) and e.response.get("resourceArn"):
                return {
                    "certificateId": e.response.get("resourceId"),
                    "certificateArn": e.response["resourceArn"],
                }
            raise ProvisionError(to_application_error(e, doing, self.region).message) from None
        except BotoCoreError as e:
            raise ProvisionError(to_application_error(e, doing, self.region).message) from None

    def _write_manifest(self, names: list[str]) -> Path:
        """The simulator's device list; devices of an earlier, larger run stay listed."""
        path = fleet_dir(self.cfg) / "manifest.json"
        known = json.loads(path.read_text())["devices"] if path.exists() else []
        listed = {d["id"] for d in known}
        for n in names:
            if n not in listed:
                known.append(
                    {"id": n, "sku": self._sku(n), "certificate": f"certs/{n}.pem", "key": f"certs/{n}.key"}
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "deployment": self.cfg.name,
                    "region": self.region,
                    "application": self.cfg.fleet.application,
                    "devices": known,
                },
                indent=1,
            )
        )
        return path
