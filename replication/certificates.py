"""The customer's CA and device certificates in every region, and just-in-time registration.

Only public certificates pass through here (DESIGN.md, invariant 5). A device certificate is
registered in each region from its PEM, so it gets the same certificate ID everywhere (the ID is
the certificate's hash), keeps its status and gets the same policy attachments: the writes are the
Replicator's (replication.sync), as for every other kind; this module reads, and registers the CA.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from core import logs, metrics
from core.aws import AwsClients, all_items
from core.certs import CertificateError, certificate_id, device_identity
from core.errors import is_already_exists, is_not_found
from replication.events import EventError
from replication.records import CertificateRecord

log = logs.get("certificates")


# ---------------------------------------------------------------- the deployment CA


def register_ca(aws: AwsClients, region: str) -> str:
    """Register the deployment CA (public part) in `region`, ACTIVE with auto-registration on.

    SNI_ONLY mode needs no proof-of-possession certificate, so the controller never needs the
    CA's private key, and it lets the same CA be registered in many regions and accounts.
    """
    iot = aws.iot(region)
    pem = aws.cfg.ca_pem()
    try:
        ca_id = iot.register_ca_certificate(
            caCertificate=pem, setAsActive=True, allowAutoRegistration=True, certificateMode="SNI_ONLY"
        )["certificateId"]
    except ClientError as e:
        if not is_already_exists(e):
            raise
        ca_id = e.response.get("resourceId") or _find_ca(iot, pem)
    iot.update_ca_certificate(certificateId=ca_id, newStatus="ACTIVE", newAutoRegistrationStatus="ENABLE")
    return ca_id


def _find_ca(iot: Any, pem: str) -> str:
    for ca in all_items(iot, "list_ca_certificates", "certificates"):
        desc = iot.describe_ca_certificate(certificateId=ca["certificateId"])["certificateDescription"]
        if desc.get("certificatePem", "").strip() == pem.strip():
            return ca["certificateId"]
    raise RuntimeError("the CA is reported as registered but is not listed")


# ---------------------------------------------------------------- device certificates


def read_certificate(
    aws: AwsClients, region: str, cert_id: str, arns: dict[str, str] | None = None
) -> CertificateRecord | None:
    """The certificate's record in `region` (None if absent); `arns` collects its ARN there."""
    iot = aws.iot(region)
    try:
        desc = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
    except ClientError as e:
        if is_not_found(e):
            return None
        raise
    if arns is not None:
        arns[cert_id] = desc["certificateArn"]
    policies = iot.list_attached_policies(target=desc["certificateArn"]).get("policies", [])
    return CertificateRecord(cert_id, desc["status"], tuple(sorted(p["policyName"] for p in policies)))


def arn_in(aws: AwsClients, region: str, cert_id: str) -> str:
    return aws.iot(region).describe_certificate(certificateId=cert_id)["certificateDescription"][
        "certificateArn"
    ]


# ---------------------------------------------------------------- just-in-time registration


def is_unfinished_jitr(aws: AwsClients, region: str, cert_id: str) -> bool:
    """A device certificate of the deployment's CA still PENDING_ACTIVATION: its JITR never completed.

    One whose CN names no device is not (it was counted as bad input when its event came).
    """
    try:
        desc = aws.iot(region).describe_certificate(certificateId=cert_id)["certificateDescription"]
    except ClientError as e:
        if is_not_found(e):
            return False
        raise
    if desc["status"] != "PENDING_ACTIVATION" or desc.get("caCertificateId") != certificate_id(
        aws.cfg.ca_pem()
    ):
        return False
    try:
        device_identity(desc["certificatePem"])
    except CertificateError:
        return False
    return True


def onboard_jitr(aws: AwsClients, region: str, cert_id: str) -> str:
    """Turn a just-registered device certificate into a device in `region`; returns the thing name.

    Reads the JSON common name, creates the thing (sku as an attribute, the fleet's thing type),
    attaches the fleet policy and the thing, adds the thing to the fleet group and, last, activates
    the certificate: until then a failure anywhere leaves it PENDING_ACTIVATION, which the reconcile
    takes for an unfinished registration and completes (replication.reconcile). Idempotent. A
    certificate whose CN is not `{"id": ..., "sku": ...}` is rejected (left pending) and counted.
    """
    fleet, iot = aws.cfg.fleet, aws.iot(region)
    try:
        desc = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
    except ClientError as e:
        if is_not_found(e):
            raise EventError("not_found", f"certificate {cert_id} no longer exists in {region}") from None
        raise
    try:
        ident = device_identity(desc["certificatePem"])
    except CertificateError as e:
        metrics.BAD_INPUT.labels(source="jitr", reason="bad_common_name").inc()
        raise EventError("bad_common_name", f"certificate {cert_id}: {e}") from None
    args: dict[str, Any] = {"thingName": ident.device_id}
    if ident.sku:
        args["attributePayload"] = {"attributes": {"sku": ident.sku}}
    if fleet.thing_type:
        _ignore_exists(lambda: iot.create_thing_type(thingTypeName=fleet.thing_type))
        args["thingTypeName"] = fleet.thing_type
    _ignore_exists(lambda: iot.create_thing(**args))
    _ignore_exists(lambda: iot.create_thing_group(thingGroupName=fleet.thing_group))
    try:
        iot.attach_policy(policyName=fleet.policy_name, target=desc["certificateArn"])
    except ClientError as e:
        if is_not_found(e):
            raise EventError(
                "not_found", f"fleet policy {fleet.policy_name} is missing in {region}"
            ) from None
        raise
    iot.attach_thing_principal(thingName=ident.device_id, principal=desc["certificateArn"])
    iot.add_thing_to_thing_group(thingGroupName=fleet.thing_group, thingName=ident.device_id)
    iot.update_certificate(certificateId=cert_id, newStatus="ACTIVE")  # the commit point
    log.info("device registered just in time", region=region, thing=ident.device_id, certificate=cert_id)
    return ident.device_id


def _ignore_exists(fn: Any) -> None:
    try:
        fn()
    except ClientError as e:
        if not is_already_exists(e):
            raise
