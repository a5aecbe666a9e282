"""Converging one target region to one source region, resource by resource.

A `Replicator` reads comparable records (replication.records) from both regions, diffs them and, when
`apply` is set, creates, updates and deletes in the target in dependency order. With `apply` unset
it only counts differences: the parity checker and the reconciler are the same code. Every write is
idempotent ("already exists" is success) and every delete obeys records.may_delete.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from core import logs
from core.aws import AwsClients
from core.errors import ACCESS_CODES, error_code, is_already_exists, is_not_found, is_retryable
from replication import certificates as certs
from replication.ledger import Ledger
from replication.readers import RegistryReader
from replication.records import (
    CertificateRecord,
    ItemFailed,
    KindDiff,
    PolicyRecord,
    ThingGroupRecord,
    ThingRecord,
    ThingTypeRecord,
    diff,
    marker,
    parents_first,
    target_status,
)

log = logs.get("replication")
APPLIED_HOOK = Callable[[str, str, str], None]  # (target region, kind, operation)


class Replicator(RegistryReader):
    def __init__(
        self,
        aws: AwsClients,
        source: str,
        target: str,
        apply: bool = True,
        on_applied: APPLIED_HOOK | None = None,
    ):
        self.aws, self.source, self.target, self.apply = aws, source, target, apply
        self.ledger = Ledger(aws)
        self.marker = marker(aws.cfg.name)
        self.diffs: dict[str, KindDiff] = {}
        self.applied: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.failures: list[str] = []
        self.present: set[tuple[str, str]] = set()  # (kind, name) known to exist in the target
        self.cert_arns: dict[str, str] = {}  # certificate ID -> its ARN in the target
        self._source_catalogs: dict[str, dict[str, Any]] = {}  # read once per reconcile
        self._lock = threading.Lock()
        self._on_applied = on_applied

    # ---------------------------------------------------------------- bookkeeping
    def kind_diff(self, kind: str) -> KindDiff:
        with self._lock:
            return self.diffs.setdefault(kind, KindDiff())

    def done(self, kind: str, op: str) -> None:
        with self._lock:
            self.applied[f"{kind}:{op}"] += 1
        if self._on_applied:
            self._on_applied(self.target, kind, op)

    def guarded(self, kind: str, name: str, fn: Callable[[], None]) -> None:
        """Run one item's change; a non-retryable AWS error is recorded, a retryable one raised.

        Access denied is raised too: it is the controller's role, not the item, so it stops the run
        with a message that says which right to grant, instead of failing every item alike.
        """
        try:
            fn()
        except ItemFailed as e:
            self._fail(kind, name, str(e))
        except ClientError as e:
            if is_retryable(e) or error_code(e) in ACCESS_CODES:
                raise
            self._fail(kind, name, f"{error_code(e)}: {e}")

    def _fail(self, kind: str, name: str, why: str) -> None:
        with self._lock:
            self.failed[kind] += 1
            if len(self.failures) < 20:
                self.failures.append(f"{kind} {name}: {why[:200]}")
        log.warning("replication item failed", kind=kind, name=name, target=self.target, reason=why[:300])

    # ---------------------------------------------------------------- catalog kinds
    def converge_catalog(self, kind: str) -> None:
        """Diff a whole small kind (types, groups, policies) and apply its creates and updates.

        Its deletes wait for prune_catalog, after things and certificates are pruned.
        """
        source, target = self.source_catalog(kind), self.read_catalog(self.target, kind)
        create, update, _ = diff(source, target, self.ledger.names(self.target, kind), self.kind_diff(kind))
        self.present |= {(kind, n) for n in target}
        if not self.apply:
            return
        order = parents_first(source) if kind == "thing_group" else sorted(source)
        for name in order:
            if name in create:
                self.guarded(kind, name, partial(self.create, kind, source[name]))
            elif name in update:
                self.guarded(kind, name, partial(self.update, kind, source[name], target[name]))

    def prune_catalog(self, kind: str) -> None:
        source, target = self.source_catalog(kind), self.read_catalog(self.target, kind)
        ours = self.ledger.names(self.target, kind)
        _, _, delete = diff(source, target, ours, KindDiff())
        if kind == "thing_group":  # children before parents
            delete = [n for n in reversed(parents_first(target)) if n in delete]
        for name in delete:
            self.guarded(kind, name, partial(self._prune_one, kind, name))
        for name in ours - set(target) - set(source):  # records of resources already gone
            self.ledger.forget(self.target, kind, name)

    def _prune_one(self, kind: str, name: str) -> None:
        """Delete one of ours that the source's listing lacks, if the source says it is gone.

        A listing can miss an item that exists (eventual consistency, a lost or throttled page), and
        deleting a policy detaches it from every certificate first: only NotFound from the source
        proves the item is gone.
        """
        if self.read(self.source, kind, name) is not None:
            log.warning("kept: absent from the source's listing, present when read", kind=kind, name=name)
            return
        self.delete(kind, name)

    def source_catalog(self, kind: str) -> dict[str, Any]:
        """The source's own resources of a kind: not those replicated into it (active/active)."""
        if kind not in self._source_catalogs:
            found = self.read_catalog(self.source, kind)
            mine = self.ledger.names(self.source, kind)
            self._source_catalogs[kind] = {n: r for n, r in found.items() if n not in mine}
        return self._source_catalogs[kind]

    # ---------------------------------------------------------------- one item, any kind
    def converge_one(self, kind: str, name: str, source_required: bool = False) -> str:
        """Converge a single resource; returns "gone" when it is absent from the source."""
        src, tgt = self.read(self.source, kind, name), self.read(self.target, kind, name)
        if src is not None and (
            getattr(src, "replicated_by", None) or self.ledger.has(self.source, kind, name)
        ):
            return "echo"  # our own write, seen in a region that is also a source
        ours = self.is_ours(kind, name, tgt)
        create, update, delete = diff(
            {name: src} if src else {}, {name: tgt} if tgt else {}, {name} if ours else set(), KindDiff()
        )
        if self.apply:
            if create:
                self.guarded(kind, name, lambda: self.create(kind, src))
            elif update:
                self.guarded(kind, name, lambda: self.update(kind, src, tgt))
            elif delete:
                self.guarded(kind, name, lambda: self.delete(kind, name))
        return "gone" if src is None else "synced"

    def is_ours(self, kind: str, name: str, target_record: Any) -> bool:
        if getattr(target_record, "replicated_by", None):
            return True  # a thing replicated before the ledger recorded things
        return self.ledger.has(self.target, kind, name)

    def ensure(self, kind: str, name: str) -> None:
        """Make a dependency exist in the target (a type, group, policy or certificate)."""
        if (kind, name) in self.present:
            return
        if self.read(self.target, kind, name) is None:
            self.converge_one(kind, name)
        else:
            self.present.add((kind, name))

    # ---------------------------------------------------------------- writes
    def create(self, kind: str, rec: Any) -> None:
        name = str(getattr(rec, "name", None) or getattr(rec, "certificate_id", ""))
        recorded_before = self.ledger.record(self.target, kind, name, self.source)  # first: see ledger.py
        creators: dict[str, Callable[[Any], None]] = {
            "thing_type": self._create_type,
            "thing_group": self._create_group,
            "policy": self._create_policy,
            "certificate": self._create_certificate,
            "thing": self._create_thing,
        }
        try:
            creators[kind](rec)
        except ClientError as e:
            if not is_already_exists(e):
                raise
            # Recorded before this attempt: an earlier try of ours whose answer was lost. Otherwise
            # made by someone else meanwhile: not ours, so never deleted by us.
            if not recorded_before:
                self.ledger.forget(self.target, kind, name)
            if kind == "thing":  # converge it instead
                tgt = self.read_thing(self.target, name)
                if tgt is not None and not rec.same(tgt):
                    self.update(kind, rec, tgt)
            return
        self.present.add((kind, name))
        self.done(kind, "create")

    def update(self, kind: str, src: Any, tgt: Any) -> None:
        updaters: dict[str, Callable[[Any, Any], None]] = {
            "thing_type": self._update_type,
            "thing_group": self._update_group,
            "policy": self._update_policy,
            "certificate": self._update_certificate,
            "thing": self._update_thing,
        }
        updaters[kind](src, tgt)
        self.done(kind, "update")

    def delete(self, kind: str, name: str) -> None:
        try:
            {
                "thing_type": self._delete_type,
                "thing_group": lambda n: self.iot(self.target).delete_thing_group(thingGroupName=n),
                "policy": self._delete_policy,
                "certificate": self._delete_certificate,
                "thing": self._delete_thing,
            }[kind](name)
        except ClientError as e:
            if not is_not_found(e):
                raise
        self.ledger.forget(self.target, kind, name)
        self.done(kind, "delete")

    def _create_type(self, rec: ThingTypeRecord) -> None:
        props: dict[str, Any] = {}
        if rec.description:
            props["thingTypeDescription"] = rec.description
        if rec.searchable:
            props["searchableAttributes"] = list(rec.searchable)
        self.iot(self.target).create_thing_type(thingTypeName=rec.name, thingTypeProperties=props)
        if rec.deprecated:
            self.iot(self.target).deprecate_thing_type(thingTypeName=rec.name, undoDeprecate=False)

    def _update_type(self, src: ThingTypeRecord, tgt: ThingTypeRecord) -> None:
        self.iot(self.target).deprecate_thing_type(thingTypeName=src.name, undoDeprecate=not src.deprecated)

    def _delete_type(self, name: str) -> None:
        """AWS deletes a thing type only 5 minutes after deprecation: deprecate now, delete later."""
        iot = self.iot(self.target)
        iot.deprecate_thing_type(thingTypeName=name, undoDeprecate=False)
        try:
            iot.delete_thing_type(thingTypeName=name)
        except ClientError as e:
            if e.response["Error"]["Code"] == "InvalidRequestException":
                raise ItemFailed("deprecated; AWS allows the delete 5 minutes later (next reconcile)") from e
            raise

    def _group_props(self, rec: ThingGroupRecord) -> dict[str, Any]:
        return {
            "thingGroupDescription": rec.description,
            "attributePayload": {"attributes": dict(rec.attributes), "merge": False},
        }

    def _create_group(self, rec: ThingGroupRecord) -> None:
        args: dict[str, Any] = {"thingGroupName": rec.name, "thingGroupProperties": self._group_props(rec)}
        if rec.parent:
            self.ensure("thing_group", rec.parent)
            args["parentGroupName"] = rec.parent
        self.iot(self.target).create_thing_group(**args)

    def _update_group(self, src: ThingGroupRecord, tgt: ThingGroupRecord) -> None:
        if src.parent != tgt.parent:
            # A group's parent is fixed at creation in AWS IoT: recreate it, but only if it is ours.
            if not self.ledger.has(self.target, "thing_group", src.name):
                raise ItemFailed(f"parent is {tgt.parent!r}, source has {src.parent!r}; not ours to recreate")
            self.iot(self.target).delete_thing_group(thingGroupName=src.name)
            self._create_group(src)
            return
        self.iot(self.target).update_thing_group(
            thingGroupName=src.name, thingGroupProperties=self._group_props(src)
        )

    def _create_policy(self, rec: PolicyRecord) -> None:
        self.iot(self.target).create_policy(policyName=rec.name, policyDocument=rec.document)

    def _update_policy(self, src: PolicyRecord, tgt: PolicyRecord) -> None:
        iot = self.iot(self.target)
        versions = iot.list_policy_versions(policyName=src.name)["policyVersions"]
        old = [v for v in versions if not v.get("isDefaultVersion")]
        if len(versions) >= 5 and old:  # AWS keeps at most five versions
            oldest = min(old, key=lambda v: int(v["versionId"]))
            iot.delete_policy_version(policyName=src.name, policyVersionId=oldest["versionId"])
        iot.create_policy_version(policyName=src.name, policyDocument=src.document, setAsDefault=True)

    def _delete_policy(self, name: str) -> None:
        iot = self.iot(self.target)
        for t in iot.list_targets_for_policy(policyName=name).get("targets", []):
            iot.detach_policy(policyName=name, target=t)
        for v in iot.list_policy_versions(policyName=name)["policyVersions"]:
            if not v.get("isDefaultVersion"):
                iot.delete_policy_version(policyName=name, policyVersionId=v["versionId"])
        iot.delete_policy(policyName=name)

    def _create_certificate(self, rec: CertificateRecord) -> None:
        """Register the source's certificate in the target with the CA (or without, if allowed)."""
        aws, iot = self.aws, self.iot(self.target)
        pem = self.iot(self.source).describe_certificate(certificateId=rec.certificate_id)[
            "certificateDescription"
        ]["certificatePem"]
        status = target_status(rec.status)
        first = "ACTIVE" if status == "ACTIVE" else "INACTIVE"
        try:
            got = iot.register_certificate(
                certificatePem=pem, caCertificatePem=aws.cfg.ca_pem(), status=first
            )
        except ClientError as e:
            if is_already_exists(e) or is_retryable(e) or not aws.cfg.replication.allow_register_without_ca:
                raise
            certs.log.info("registering without CA", certificate=rec.certificate_id, reason=str(e)[:200])
            got = iot.register_certificate_without_ca(certificatePem=pem, status=first)
        if got["certificateId"] != rec.certificate_id:
            raise ItemFailed(f"registered as {got['certificateId']}, not the same certificate ID")
        self.cert_arns[rec.certificate_id] = got["certificateArn"]
        if status != first:
            iot.update_certificate(certificateId=rec.certificate_id, newStatus=status)
        self._converge_policies(rec, CertificateRecord(rec.certificate_id, status), got["certificateArn"])

    def _update_certificate(self, src: CertificateRecord, tgt: CertificateRecord) -> None:
        status = target_status(src.status)
        if status != tgt.status:
            self.iot(self.target).update_certificate(certificateId=src.certificate_id, newStatus=status)
        self._converge_policies(src, tgt, self._certificate_in_target(src.certificate_id))

    def _converge_policies(self, src: CertificateRecord, tgt: CertificateRecord, arn: str) -> None:
        iot = self.iot(self.target)
        for p in sorted(set(src.policies) - set(tgt.policies)):
            self.ensure("policy", p)
            iot.attach_policy(policyName=p, target=arn)
        for p in sorted(set(tgt.policies) - set(src.policies)):
            iot.detach_policy(policyName=p, target=arn)

    def _delete_certificate(self, cert_id: str) -> None:
        iot = self.iot(self.target)
        arn = certs.arn_in(self.aws, self.target, cert_id)
        iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
        for p in iot.list_attached_policies(target=arn).get("policies", []):
            iot.detach_policy(policyName=p["policyName"], target=arn)
        for thing in iot.list_principal_things(principal=arn).get("things", []):
            iot.detach_thing_principal(thingName=thing, principal=arn)
        iot.delete_certificate(certificateId=cert_id, forceDelete=True)

    def _certificate_in_target(self, cert_id: str) -> str:
        """The certificate's ARN in the target, registering it there first if needed."""
        if cert_id in self.cert_arns:
            return self.cert_arns[cert_id]
        try:
            return certs.arn_in(self.aws, self.target, cert_id)
        except ClientError as e:
            if not is_not_found(e):
                raise
        self.converge_one("certificate", cert_id)
        return certs.arn_in(self.aws, self.target, cert_id)

    def _create_thing(self, rec: ThingRecord) -> None:
        args: dict[str, Any] = {
            "thingName": rec.name,
            "attributePayload": {"attributes": dict(rec.attributes)},
        }
        if rec.thing_type:
            self.ensure("thing_type", rec.thing_type)
            args["thingTypeName"] = rec.thing_type
        self.iot(self.target).create_thing(**args)
        self._converge_links(rec, ThingRecord(rec.name))

    def _update_thing(self, src: ThingRecord, tgt: ThingRecord) -> None:
        iot = self.iot(self.target)
        if tgt.replicated_by:  # ours from before the ledger: recorded there before the marker goes
            self.ledger.record(self.target, "thing", src.name, self.source)
        if (src.thing_type, src.attributes, src.replicated_by) != (
            tgt.thing_type,
            tgt.attributes,
            tgt.replicated_by,
        ):
            args: dict[str, Any] = {
                "thingName": src.name,
                "attributePayload": {"attributes": dict(src.attributes), "merge": False},
            }
            if src.thing_type:
                self.ensure("thing_type", src.thing_type)
                args["thingTypeName"] = src.thing_type
            elif tgt.thing_type:
                args["removeThingType"] = True
            iot.update_thing(**args)
        self._converge_links(src, tgt)

    def _converge_links(self, src: ThingRecord, tgt: ThingRecord) -> None:
        """Group memberships and certificate attachments of one thing."""
        iot = self.iot(self.target)
        for g in sorted(set(src.groups) - set(tgt.groups)):
            self.ensure("thing_group", g)
            iot.add_thing_to_thing_group(thingGroupName=g, thingName=src.name)
        for g in sorted(set(tgt.groups) - set(src.groups)):
            iot.remove_thing_from_thing_group(thingGroupName=g, thingName=src.name)
        for cid in sorted(set(src.certificates) - set(tgt.certificates)):
            arn = self._certificate_in_target(cid)
            iot.attach_thing_principal(thingName=src.name, principal=arn)
        for cid in sorted(set(tgt.certificates) - set(src.certificates)):
            iot.detach_thing_principal(thingName=src.name, principal=certs.arn_in(self.aws, self.target, cid))

    def _delete_thing(self, name: str) -> None:
        iot = self.iot(self.target)
        for p in iot.list_thing_principals(thingName=name).get("principals", []):
            iot.detach_thing_principal(thingName=name, principal=p)
        iot.delete_thing(thingName=name)
