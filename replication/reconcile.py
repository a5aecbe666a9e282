"""Anti-entropy for one (source, target) pair: every kind, paged, in dependency order, resumable.

Phases: `catalog` (thing types, thing groups parents first, policies), `certificates` (with their
policy attachments), `things` (type, attributes, group memberships, certificate attachments),
`prune` (deletions, reverse order: things, certificates, policies, groups children first, types)
and `claims` (the claims table). Paged phases call `checkpoint` after every page with the token to
resume from, so a retried activity continues where the last attempt stopped. With a thing group
as scope only that group's devices (and their certificates and claims) are compared and applied,
and nothing is deleted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from core.aws import all_items, fetch_page
from core.errors import is_not_found
from core.retry import patiently
from replication import certificates as certs
from replication.events import EventError
from replication.records import (
    MARKER_ATTRIBUTE,
    CertificateRecord,
    ClaimRecord,
    ItemFailed,
    KindDiff,
    canonical_json,
    diff,
    may_delete,
)
from replication.sync import Replicator

PHASES = ("catalog", "certificates", "things", "prune", "claims")
CATALOG = ("thing_type", "thing_group", "policy")
CLAIM_MARK = "replicatedFrom"


@dataclass
class Progress:
    """Where a reconcile is (heartbeat details): the phase, the page token and counts so far."""

    phase: str = PHASES[0]
    token: str | None = None
    applied: dict[str, int] = field(default_factory=dict)  # "kind:operation" -> n
    drift: dict[str, int] = field(default_factory=dict)  # kind -> differences found
    things: int = 0  # the source's own things seen so far


class Reconciler:
    def __init__(
        self,
        rep: Replicator,
        checkpoint: Callable[[Progress], None],
        concurrency: int = 16,
        page_size: int = 250,
        scope_group: str | None = None,
    ):
        self.rep, self.checkpoint = rep, checkpoint
        self.concurrency, self.page_size, self.scope = concurrency, page_size, scope_group
        self.base = Progress()
        self.things = 0  # the source's own things seen by this attempt
        self._pool: ThreadPoolExecutor | None = None

    def run(self, start: Progress | None = None) -> Progress:
        self.base = start or Progress()
        if self.base.phase == "done":
            return self.base
        first = PHASES.index(self.base.phase)
        token = self.base.token
        steps: dict[str, Callable[[str | None], None]] = {
            "catalog": self._catalog,
            "certificates": self._certificates,
            "things": self._things,
            "prune": self._prune,
            "claims": self._claims,
        }
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency), thread_name_prefix="reconcile") as pool:
            self._pool = pool
            for phase in PHASES[first:]:
                if self.scope and phase in ("certificates", "prune", "claims"):
                    continue  # a scope's certificates and claims go with its things; scopes never delete
                steps[phase](token)
                token = None
                self._save(PHASES[PHASES.index(phase) + 1] if phase != PHASES[-1] else "done", None)
        return self.progress("done", None)

    def progress(self, phase: str, token: str | None) -> Progress:
        applied = Counter(self.base.applied) + Counter(self.rep.applied)
        drift = Counter(self.base.drift) + Counter({k: d.drift for k, d in self.rep.diffs.items()})
        return Progress(phase, token, dict(applied), dict(drift), self.base.things + self.things)

    def _save(self, phase: str, token: str | None) -> None:
        self.checkpoint(self.progress(phase, token))

    def _each(self, items: Iterable[Any], fn: Callable[[Any], None]) -> None:
        """Apply `fn` to a page of items on a bounded pool; the first retryable error propagates.

        Each item is tried again on throttling or a 5xx (core.retry) before it fails the page: one
        sporadic throttle among a page's thousands of calls would otherwise replay the whole page.
        Every item re-reads the target, so a retry converges, never repeats.
        """
        items = list(items)
        if len(items) <= 1 or self._pool is None:
            for i in items:
                patiently(fn, i)
            return
        for f in [self._pool.submit(patiently, fn, i) for i in items]:
            f.result()

    # ------------------------------------------------------------------ phases
    def _catalog(self, _token: str | None) -> None:
        for kind in CATALOG:
            self.rep.converge_catalog(kind)

    def _certificates(self, token: str | None) -> None:
        src = self.rep.iot(self.rep.source)
        mine = self.rep.ledger.names(self.rep.source, "certificate")
        while True:
            page, token = fetch_page(src, "list_certificates", "certificates", token, self.page_size)
            page = [c for c in page if c["certificateId"] not in mine]
            pending = [c for c in page if c["status"] == "PENDING_ACTIVATION"]
            self._each(pending, self._finish_jitr)
            self._each([c for c in page if c not in pending], self._certificate)
            self._save("certificates", token)
            if not token:
                return

    def _finish_jitr(self, listed: dict) -> None:
        """A device certificate of the deployment's CA still pending: its JITR failed or its event was lost.

        Completed in the source as the event handler would have (certificates.onboard_jitr), then
        replicated; without this the device could never connect anywhere.
        """
        rep, cid = self.rep, listed["certificateId"]
        if not certs.is_unfinished_jitr(rep.aws, rep.source, cid):
            return  # another CA's certificate, or one naming no device: not ours to activate
        if not rep.apply:
            rep.kind_diff("certificate").note("missing", f"{cid} (just-in-time registration unfinished)")
            return

        def finish() -> None:
            try:
                certs.onboard_jitr(rep.aws, rep.source, cid)
            except EventError as e:
                raise ItemFailed(
                    f"completing its just-in-time registration in {rep.source}: {e.detail}"
                ) from None
            rep.done("certificate", "jitr")
            self._certificate({**listed, "status": "ACTIVE"})

        rep.guarded("certificate", cid, finish)

    def _certificate(self, listed: dict) -> None:
        rep, cid = self.rep, listed["certificateId"]
        policies = (
            rep.iot(rep.source).list_attached_policies(target=listed["certificateArn"]).get("policies", [])
        )
        src = CertificateRecord(cid, listed["status"], tuple(sorted(p["policyName"] for p in policies)))
        tgt = certs.read_certificate(rep.aws, rep.target, cid, rep.cert_arns)
        self._apply("certificate", cid, src, tgt)

    def _apply(self, kind: str, name: str, src: Any, tgt: Any) -> None:
        """Converge one item whose source record is known (it exists in the source)."""
        rep = self.rep
        create, update, _ = diff({name: src}, {name: tgt} if tgt else {}, set(), rep.kind_diff(kind))
        if rep.apply and create:
            rep.guarded(kind, name, lambda: rep.create(kind, src))
        elif rep.apply and update:
            rep.guarded(kind, name, lambda: rep.update(kind, src, tgt))

    def _things(self, token: str | None) -> None:
        if self.scope:
            return self._scoped_things(token)
        rep = self.rep
        src_members = self._memberships(rep.source)
        tgt_members = self._memberships(rep.target)
        tgt_index = {t["thingName"]: t for t in all_items(rep.iot(rep.target), "list_things", "things", 250)}
        mine = rep.ledger.names(rep.source, "thing")  # one paged query, not one read per thing

        def one(listed: dict) -> None:
            if listed["thingName"] in mine:
                return  # replicated into the source from elsewhere (active/active): not sent back
            src = rep.thing_record(rep.source, listed, src_members.get(listed["thingName"], []))
            if src.replicated_by:
                return  # the same, replicated there before the ledger recorded things
            t = tgt_index.get(src.name)
            tgt = rep.thing_record(rep.target, t, tgt_members.get(src.name, [])) if t else None
            self._apply("thing", src.name, src, tgt)

        seen: set[str] = set()
        while True:
            page, token = fetch_page(rep.iot(rep.source), "list_things", "things", token, self.page_size)
            self._each(page, one)
            seen |= {t["thingName"] for t in page}
            self.things += sum(
                1
                for t in page
                if t["thingName"] not in mine
                and (t.get("attributes") or {}).get(MARKER_ATTRIBUTE) != rep.marker
            )
            self._save("things", token)
            if not token:
                break
        ours = rep.ledger.names(rep.target, "thing")
        kd = rep.kind_diff("thing")  # informational: target-only things that are not ours
        kd.foreign += sum(
            1
            for n, t in tgt_index.items()
            if n not in seen
            and n not in ours
            and (t.get("attributes") or {}).get(MARKER_ATTRIBUTE) != rep.marker
        )

    def _memberships(self, region: str) -> dict[str, list[str]]:
        """thing -> static groups, one paged listing per group (not one call per thing)."""
        iot = self.rep.iot(region)
        found: dict[str, list[str]] = {}
        for g in all_items(iot, "list_thing_groups", "thingGroups", page_size=250):
            for thing in all_items(
                iot, "list_things_in_thing_group", "things", 250, thingGroupName=g["groupName"]
            ):
                found.setdefault(thing, []).append(g["groupName"])
        return found

    def _scoped_things(self, token: str | None) -> None:
        """The devices of a thing group and its descendants, each with its certificates and claim."""
        rep = self.rep
        groups = rep.read_groups(rep.source)
        scope = [self.scope] + sorted(n for n in groups if self.scope in _ancestors(groups, n))
        index, inner = (int(token.split("|", 1)[0]), token.split("|", 1)[1] or None) if token else (0, None)

        def one(name: str) -> None:
            src = rep.read_thing(rep.source, name)
            if src is None:
                return
            for cid in src.certificates:
                c = certs.read_certificate(rep.aws, rep.source, cid)
                if c is not None:
                    self._apply("certificate", cid, c, certs.read_certificate(rep.aws, rep.target, cid))
            self._apply("thing", name, src, rep.read_thing(rep.target, name))
            self.claim(name)

        while index < len(scope):
            page, inner = fetch_page(
                rep.iot(rep.source), "list_things_in_thing_group", "things", inner, self.page_size,
                thingGroupName=scope[index],
            )  # fmt: skip
            self._each(page, one)
            if not inner:
                index += 1
            self._save("things", f"{index}|{inner or ''}" if index < len(scope) else None)

    def _prune(self, _token: str | None) -> None:
        """Deletions, reverse dependency order, each one only per records.may_delete."""
        rep = self.rep
        recorded = rep.ledger.names(rep.target, "thing")
        src_things = {t["thingName"] for t in all_items(rep.iot(rep.source), "list_things", "things", 250)}
        legacy = {
            t["thingName"]
            for t in all_items(
                rep.iot(rep.target), "list_things", "things", 250,
                attributeName=MARKER_ATTRIBUTE, attributeValue=rep.marker,
            )
        }  # fmt: skip
        self._delete("thing", self._gone("thing", sorted((recorded | legacy) - src_things), recorded))
        src_certs = {
            c["certificateId"] for c in all_items(rep.iot(rep.source), "list_certificates", "certificates")
        }
        recorded = rep.ledger.names(rep.target, "certificate")
        self._delete("certificate", self._gone("certificate", sorted(recorded - src_certs), recorded))
        for kind in ("policy", "thing_group", "thing_type"):
            if rep.apply:
                rep.prune_catalog(kind)

    def _gone(self, kind: str, candidates: list[str], recorded: set[str]) -> list[str]:
        """Ours and missing from the source's listing: those the source says are gone and the target has.

        Each is re-read in the source, as a listing may miss an item (eventual consistency, a lost
        page); the ledger records of items gone from both regions are dropped.
        """
        rep, gone = self.rep, []
        for name in candidates:
            if not may_delete(rep.read(rep.source, kind, name) is not None, replicated_by_us=True):
                continue
            if rep.read(rep.target, kind, name) is not None:
                gone.append(name)
            elif rep.apply and name in recorded:
                rep.ledger.forget(rep.target, kind, name)
        return gone

    def _delete(self, kind: str, names: list[str]) -> None:
        rep = self.rep
        for n in names:
            rep.kind_diff(kind).note("extra", n)
        if rep.apply:
            self._each(names, lambda n: rep.guarded(kind, n, lambda: rep.delete(kind, n)))

    def _claims(self, token: str | None) -> None:
        rep = self.rep
        table = rep.aws.cfg.claims_table
        src, tgt = rep.aws.dynamodb(rep.source), rep.aws.dynamodb(rep.target)
        start = _decode_key(token)
        while True:
            args: dict[str, Any] = {"TableName": table, "Limit": self.page_size}
            if start:
                args["ExclusiveStartKey"] = start
            resp = src.scan(**args)
            self._each([i["thingName"]["S"] for i in resp.get("Items", [])], self.claim)
            start = resp.get("LastEvaluatedKey")
            self._save("claims", canonical_json(start) if start else None)
            if not start:
                break
        replicated = all_claims(tgt, table, only_replicated=True)
        gone = [n for n in replicated if "Item" not in src.get_item(TableName=table, Key=_claim_key(n))]
        for n in gone:
            rep.kind_diff("claim").note("extra", n)
            if rep.apply:
                tgt.delete_item(TableName=table, Key=_claim_key(n))
                rep.done("claim", "delete")

    def claim(self, name: str) -> None:
        """Converge one device's claim record (owner, application, extended attributes)."""
        rep, table = self.rep, self.rep.aws.cfg.claims_table
        src = _get_claim(rep.aws.dynamodb(rep.source), table, name)
        if src is None or CLAIM_MARK in src:
            return
        tgt = _get_claim(rep.aws.dynamodb(rep.target), table, name)
        create, update, _ = diff(
            {name: _claim_record(name, src)},
            {name: _claim_record(name, tgt)} if tgt else {},
            set(),
            rep.kind_diff("claim"),
        )
        if rep.apply and (create or update):
            item = {**src, CLAIM_MARK: {"S": rep.source}}
            rep.aws.dynamodb(rep.target).put_item(TableName=table, Item=item)
            rep.done("claim", "create" if create else "update")


def all_claims(ddb: Any, table: str, only_replicated: bool = False) -> list[str]:
    args: dict[str, Any] = {"TableName": table}
    if only_replicated:
        args["FilterExpression"] = "attribute_exists(#m)"
        args["ExpressionAttributeNames"] = {"#m": CLAIM_MARK}
    return [i["thingName"]["S"] for page in ddb.get_paginator("scan").paginate(**args) for i in page["Items"]]


def _get_claim(ddb: Any, table: str, name: str) -> dict | None:
    """A device's claim item; none when the region has no claims table yet."""
    try:
        return ddb.get_item(TableName=table, Key=_claim_key(name)).get("Item")
    except ClientError as e:
        if is_not_found(e):
            return None
        raise


def _claim_key(name: str) -> dict:
    return {"thingName": {"S": name}}


def _claim_record(name: str, item: dict) -> ClaimRecord:
    return ClaimRecord(name, canonical_json({k: v for k, v in item.items() if k != CLAIM_MARK}))


def _decode_key(token: str | None) -> dict | None:
    return json.loads(token) if token else None


def _ancestors(groups: dict, name: str) -> set[str]:
    seen: set[str] = set()
    parent = groups[name].parent if name in groups else None
    while parent and parent not in seen:
        seen.add(parent)
        parent = groups[parent].parent if parent in groups else None
    return seen


__all__ = ["PHASES", "Progress", "Reconciler", "KindDiff", "all_claims"]
