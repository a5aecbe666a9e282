"""The IoT registry and shadow calls the controller relies on, made to answer as AWS does.

Each call the controller uses was probed through boto3 against moto 5.2.5. What moto lacked, and what
this module patches into the emulator process (only there):
- ListCACertificates answered 500 (not implemented): added, paged with pageSize/marker/isAscendingOrder.
- Certificate IDs were the SHA-256 of the PEM text: moto's `iot.use_valid_cert` is turned on, so an ID
  is the SHA-256 of the DER, the same in every region and equal to `core.certs.certificate_id`.
- DescribeCertificate had no caCertificateId nor certificateMode, a made-up validity (now +/- 1 day),
  and no status when registered without one: the issuing CA is recorded (from caCertificatePem, or
  the registered CA that signed it, as AWS does), the mode is the CA's (SNI_ONLY without a CA),
  validity comes from the certificate, and the default status is INACTIVE.
- RegisterCACertificate ignored allowAutoRegistration and certificateMode and silently replaced an
  existing CA; DescribeCACertificate had no autoRegistrationStatus, certificateMode or real validity;
  UpdateCACertificate ignored newAutoRegistrationStatus: all added, re-registration is
  ResourceAlreadyExistsException.
- ListCertificates and ListCertificatesByCA ignored pageSize/marker: paged.
- ListThingsInThingGroup ignored recursive and paging: child groups included on request, paged with
  maxResults/nextToken (an offset token: fine for the static wave groups the controller pages).
- DeleteThing left the thing in its thing groups (so jobs and listings still saw it): removed.
- CreateThing and UpdateThing took any number of attributes: AWS allows 3 on a thing without a
  thing type and 50 on a typed one (InvalidRequestException beyond), checked on the result.
- Other AWS limits the controller meets, now InvalidRequestException as in AWS: a thing in at most
  10 static thing groups; names of things, groups, thing types, policies, jobs (64) and shadows
  (64) in AWS's character sets and lengths; and a shadow's state at most 8 KB
  (RequestEntityTooLargeException, the shadow left as it was; rehearsal/iot_data_gaps.py).
- DescribeThing, behind every shadow call, scanned all things: an O(1) lookup by ARN.
- DescribeEventConfigurations and UpdateEventConfigurations answered 500: added, every type off
  until enabled, as in a new account (the region stack enables the registry's; `local up` does too).
The shadow and publish calls of iot-data are patched in rehearsal/iot_data_gaps.py.
Probed and already right, so left alone: get_registration_code, update_certificate
(ACTIVE/INACTIVE/REVOKED), describe_endpoint (iot:Data-ATS, iot:Jobs), list_things paging,
list_thing_groups_for_thing, thing groups with parentGroupName (rootToParentThingGroups), thing
types, policies and versions (setAsDefault, get_policy), attach/detach/list_attached_policies,
list_targets_for_policy, thing principals both ways, named shadow update/get/delete and `version`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from moto.core.config import default_user_config
from moto.core.responses import ActionResult
from moto.iot.exceptions import InvalidRequestException, ResourceAlreadyExistsException
from moto.iot.models import FakeCertificate, FakeThing, FakeThingGroup, IoTBackend
from moto.iot.responses import IoTResponse
from moto.utilities.utils import get_partition

from core.certs import certificate_id

PUBLISHED_KEPT = 10_000
SHADOW_STATE_BYTES = 8 * 1024  # AWS's limit on a shadow's desired and reported state
THING_ATTRIBUTES = {False: 3, True: 50}  # AWS's limit, by whether the thing has a thing type
GROUPS_PER_THING = 10  # static thing groups a thing may belong to
NAMES = {  # AWS's character sets and lengths of the names the controller creates
    "thing": re.compile(r"[a-zA-Z0-9:_-]{1,128}"),
    "thing group": re.compile(r"[a-zA-Z0-9:_-]{1,128}"),
    "thing type": re.compile(r"[a-zA-Z0-9:_-]{1,128}"),
    "policy": re.compile(r"[\w+=,.@-]{1,128}"),
    "job": re.compile(r"[a-zA-Z0-9_-]{1,64}"),
    "shadow": re.compile(r"[a-zA-Z0-9:_-]{1,64}"),
}


def check_name(kind: str, name: str | None) -> None:
    """InvalidRequestException for a name AWS would refuse (its character set or length)."""
    if name is not None and not NAMES[kind].fullmatch(name):
        raise InvalidRequestException(
            f"invalid {kind} name {name[:140]!r}: it must match {NAMES[kind].pattern} (AWS IoT's rule)"
        )


def group_things(backend: IoTBackend, group: FakeThingGroup, recursive: bool) -> list[FakeThing]:
    """Things in `group` and, when recursive, in its descendants (each thing once)."""
    groups = [group]
    if recursive:
        groups += [
            g
            for g in backend.thing_groups.values()
            if any(p["groupArn"] == group.arn for p in g.metadata.get("rootToParentThingGroups", []))
        ]
    things: dict[str, FakeThing] = {}
    for g in groups:
        for arn, thing in g.things.items():
            things.setdefault(arn, thing)
    return list(things.values())


def page_of(items: list, size: int | None, token: str | None, default: int = 100) -> tuple[list, str | None]:
    """An offset page of `items`: (page, token of the next page or None)."""
    if token and not token.isdigit():
        raise InvalidRequestException(f"invalid pagination token {token!r}")
    start = int(token or 0)
    end = start + (size or default)
    return items[start:end], (str(end) if end < len(items) else None)


def _validity(pem: str) -> dict[str, Any]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return {"notBefore": cert.not_valid_before_utc, "notAfter": cert.not_valid_after_utc}


def issuing_ca(backend: IoTBackend, pem: str, ca_pem: str | None) -> Any:
    """The registered CA named by `ca_pem`, or else the registered CA that signed `pem`."""
    if ca_pem:
        return backend.ca_certificates.get(certificate_id(ca_pem))
    cert = x509.load_pem_x509_certificate(pem.encode())
    for ca in backend.ca_certificates.values():
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.certificate_pem.encode()))
            return ca
        except (ValueError, TypeError, InvalidSignature):  # not signed by this CA
            continue
    return None


# --- certificates and CAs ------------------------------------------------------------------------


def _description(original: Any) -> Any:
    def to_description_dict(self: FakeCertificate) -> dict[str, Any]:
        out = original(self)
        out["validity"] = _validity(self.certificate_pem)
        out["certificateMode"] = getattr(self, "certificate_mode", "DEFAULT")
        if self.ca_certificate_id:
            out["caCertificateId"] = self.ca_certificate_id
        if hasattr(self, "auto_registration_status"):
            out["autoRegistrationStatus"] = self.auto_registration_status
        return out

    return to_description_dict


def _register_certificate(original: Any) -> Any:
    def register_certificate(
        self: IoTBackend,
        certificate_pem: str,
        ca_certificate_pem: str | None,
        set_as_active: bool,
        status: str,
    ) -> FakeCertificate:
        cert = original(self, certificate_pem, ca_certificate_pem, set_as_active, status or "INACTIVE")
        ca = issuing_ca(self, certificate_pem, ca_certificate_pem)
        cert.ca_certificate_id = ca.certificate_id if ca else None
        cert.certificate_mode = getattr(ca, "certificate_mode", "DEFAULT") if ca else "SNI_ONLY"
        return cert

    return register_certificate


def _register_certificate_without_ca(original: Any) -> Any:
    def register_certificate_without_ca(
        self: IoTBackend, certificate_pem: str, status: str
    ) -> FakeCertificate:
        cert = original(self, certificate_pem, status or "INACTIVE")
        cert.certificate_mode = "SNI_ONLY"
        return cert

    return register_certificate_without_ca


def _register_ca_certificate(original: Any) -> Any:
    def register_ca_certificate(self: IoTResponse) -> ActionResult:
        pem = self._get_param("caCertificate")
        existing = self.iot_backend.ca_certificates.get(certificate_id(pem))
        if existing is not None:
            raise ResourceAlreadyExistsException(
                "The CA certificate is already registered", existing.certificate_id, existing.arn
            )
        result = original(self)
        ca = self.iot_backend.ca_certificates[result.result["certificateId"]]
        ca.auto_registration_status = "ENABLE" if self._get_bool_param("allowAutoRegistration") else "DISABLE"
        ca.certificate_mode = self._get_param("certificateMode") or "DEFAULT"
        return result

    return register_ca_certificate


def _update_ca_certificate(original: Any) -> Any:
    def update_ca_certificate(self: IoTResponse) -> ActionResult:
        result = original(self)
        auto = self._get_param("newAutoRegistrationStatus")
        if auto:
            self.iot_backend.describe_ca_certificate(self.path.split("/")[-1]).auto_registration_status = auto
        return result

    return update_ca_certificate


def _certificate_page(response: IoTResponse, certs: Iterable[FakeCertificate]) -> tuple[list, str | None]:
    ordered = sorted(
        certs, key=lambda c: c.creation_date, reverse=not response._get_bool_param("isAscendingOrder")
    )
    return page_of(ordered, response._get_int_param("pageSize"), response._get_param("marker"))


def list_ca_certificates(self: IoTResponse) -> ActionResult:
    page, marker = _certificate_page(self, self.iot_backend.ca_certificates.values())
    return ActionResult({"certificates": [c.to_dict() for c in page], "nextMarker": marker})


def list_certificates(self: IoTResponse) -> ActionResult:
    page, marker = _certificate_page(self, self.iot_backend.certificates.values())
    return ActionResult({"certificates": [c.to_dict() for c in page], "nextMarker": marker})


def list_certificates_by_ca(self: IoTResponse) -> ActionResult:
    ca_id = self._get_param("caCertificateId")
    self.iot_backend.describe_ca_certificate(ca_id)
    certs = [c for c in self.iot_backend.certificates.values() if c.ca_certificate_id == ca_id]
    page, marker = _certificate_page(self, certs)
    return ActionResult({"certificates": [c.to_dict() for c in page], "nextMarker": marker})


# --- things and groups ---------------------------------------------------------------------------


def list_things_in_thing_group(self: IoTResponse) -> ActionResult:
    group = self.iot_backend.describe_thing_group(self._get_param("thingGroupName"))
    names = [
        t.thing_name for t in group_things(self.iot_backend, group, self._get_bool_param("recursive", False))
    ]
    page, token = page_of(names, self._get_int_param("maxResults"), self._get_param("nextToken"))
    return ActionResult({"things": page, "nextToken": token})


def _describe_thing(original: Any) -> Any:
    def describe_thing(self: IoTBackend, thing_name: str) -> FakeThing:
        arn = f"arn:{get_partition(self.region_name)}:iot:{self.region_name}:{self.account_id}:thing/{thing_name}"
        thing = self.things.get(arn)
        return thing if thing is not None else original(self, thing_name)

    return describe_thing


def _attribute_limit(attributes: dict[str, Any], typed: bool) -> None:
    limit = THING_ATTRIBUTES[typed]
    if len(attributes) > limit:
        raise InvalidRequestException(
            f"A thing {'with' if typed else 'without'} a thing type can have at most {limit} attributes "
            f"(got {len(attributes)})"
        )


def _create_thing(original: Any) -> Any:
    def create_thing(
        self: IoTBackend,
        thing_name: str,
        thing_type_name: str,
        attribute_payload: dict[str, Any] | None,
        billing_group_name: str | None = None,
    ) -> FakeThing:
        check_name("thing", thing_name)
        _attribute_limit((attribute_payload or {}).get("attributes") or {}, bool(thing_type_name))
        return original(self, thing_name, thing_type_name, attribute_payload, billing_group_name)

    return create_thing


def _update_thing(original: Any) -> Any:
    def update_thing(
        self: IoTBackend,
        thing_name: str,
        thing_type_name: str,
        attribute_payload: dict[str, Any] | None,
        remove_thing_type: bool,
    ) -> None:
        thing = self.describe_thing(thing_name)
        typed = bool(thing_type_name) or (thing.thing_type is not None and not remove_thing_type)
        attrs, payload = dict(thing.attributes), attribute_payload or {}
        if "attributes" in payload:
            new = payload["attributes"] or {}
            attrs = {**attrs, **new} if payload.get("merge") else dict(new)
        _attribute_limit({k: v for k, v in attrs.items() if v}, typed)
        return original(self, thing_name, thing_type_name, attribute_payload, remove_thing_type)

    return update_thing


def _named(kind: str, param: str, original: Any) -> Any:
    """Check the new resource's name (argument `param`, or the first) before moto creates it."""

    def create(self: IoTBackend, *args: Any, **kwargs: Any) -> Any:
        check_name(kind, kwargs[param] if param in kwargs else args[0])
        return original(self, *args, **kwargs)

    create.__name__ = original.__name__
    return create


def _add_to_group(original: Any) -> Any:
    def add_thing_to_thing_group(
        self: IoTBackend,
        thing_group_name: str,
        thing_group_arn: str | None,
        thing_name: str,
        thing_arn: str | None,
    ) -> None:
        group = self._identify_thing_group(thing_group_name, thing_group_arn)
        thing = self._identify_thing(thing_name, thing_arn)
        if thing.arn not in group.things:
            member_of = sum(1 for g in self.thing_groups.values() if thing.arn in g.things)
            if member_of >= GROUPS_PER_THING:
                raise InvalidRequestException(
                    f"thing {thing.thing_name} is already in {member_of} static thing groups, "
                    f"the most AWS allows ({GROUPS_PER_THING})"
                )
        return original(self, thing_group_name, thing_group_arn, thing_name, thing_arn)

    return add_thing_to_thing_group


def _delete_thing(original: Any) -> Any:
    def delete_thing(self: IoTBackend, thing_name: str) -> None:
        thing = self.describe_thing(thing_name)
        original(self, thing_name)
        for group in self.thing_groups.values():
            group.things.pop(thing.arn, None)

    return delete_thing


# --- event configurations ------------------------------------------------------------------------

# The account's event types (DescribeEventConfigurations), all off in a new account.
EVENT_TYPES = (
    "THING",
    "THING_GROUP",
    "THING_TYPE",
    "THING_GROUP_MEMBERSHIP",
    "THING_GROUP_HIERARCHY",
    "THING_TYPE_ASSOCIATION",
    "JOB",
    "JOB_EXECUTION",
    "POLICY",
    "CERTIFICATE",
    "CA_CERTIFICATE",
)


def _event_configurations(backend: IoTBackend) -> dict[str, bool]:
    if not hasattr(backend, "event_configurations"):
        backend.event_configurations = dict.fromkeys(EVENT_TYPES, False)
    return backend.event_configurations


def describe_event_configurations(self: IoTResponse) -> ActionResult:
    configs = _event_configurations(self.iot_backend)
    return ActionResult({"eventConfigurations": {t: {"Enabled": on} for t, on in configs.items()}})


def update_event_configurations(self: IoTResponse) -> ActionResult:
    configs = _event_configurations(self.iot_backend)
    for kind, setting in (self._get_param("eventConfigurations") or {}).items():
        if kind not in configs:
            raise InvalidRequestException(f"Unknown event type {kind}")
        configs[kind] = bool(setting.get("Enabled"))
    return ActionResult({})


def install(emulator: Any) -> None:
    """Patch moto's IoT and iot-data in this process (idempotent)."""
    del emulator  # nothing to route: these are fixes to moto's own services
    if getattr(IoTBackend, "gaps_filled", False):
        return
    IoTBackend.gaps_filled = True
    default_user_config.setdefault("iot", {})["use_valid_cert"] = True
    FakeCertificate.to_description_dict = _description(FakeCertificate.to_description_dict)
    for name, wrap in {
        "register_certificate": _register_certificate,
        "register_certificate_without_ca": _register_certificate_without_ca,
        "describe_thing": _describe_thing,
        "delete_thing": _delete_thing,
        "create_thing": _create_thing,
        "update_thing": _update_thing,
        "add_thing_to_thing_group": _add_to_group,
    }.items():
        setattr(IoTBackend, name, wrap(getattr(IoTBackend, name)))
    for name, (kind, param) in {
        "create_thing_group": ("thing group", "thing_group_name"),
        "create_thing_type": ("thing type", "thing_type_name"),
        "create_policy": ("policy", "policy_name"),
        "create_job": ("job", "job_id"),
    }.items():
        setattr(IoTBackend, name, _named(kind, param, getattr(IoTBackend, name)))
    IoTResponse.register_ca_certificate = _register_ca_certificate(IoTResponse.register_ca_certificate)
    IoTResponse.update_ca_certificate = _update_ca_certificate(IoTResponse.update_ca_certificate)
    for fn in (
        list_ca_certificates,
        list_certificates,
        list_certificates_by_ca,
        list_things_in_thing_group,
        describe_event_configurations,
        update_event_configurations,
    ):
        setattr(IoTResponse, fn.__name__, fn)
