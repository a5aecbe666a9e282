"""What a device gets at boot: the logic shared by the local HTTP server and the Lambda handler.

The answer is built from the region's own registry (does the thing exist here, which groups is it
in, which application) and the region's own bootstrap table, so a region answers alone when the
others are down. Everything read is kept in a short in-memory cache: a boot storm of thousands of
devices costs a few table scans per TTL, not one read per device.

Availability is decided by the service's own reads, never by `/healthz` (a public endpoint anyone can
call): a read that fails answers that request 503, and until a read succeeds again no answer comes
from the cache, so a region whose table has stopped answering cannot keep handing out answers it can
no longer confirm.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter, Gauge, Histogram

from bootstrap.runtime import device_endpoints, service_clients
from core import logs
from core.aws import AwsClients, all_items
from core.bootstrap_records import (
    DEFAULT_SCOPE,
    BootstrapRecord,
    MalformedRecord,
    from_item,
    group_scope,
    parse_record,
)
from core.config import DeploymentConfig
from core.errors import error_code, is_not_found, is_retryable, is_throttle
from core.metrics import BAD_INPUT

THING_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
_APPLICATION = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

REQUESTS = Counter(
    "iotfailover_bootstrap_requests_total", "Bootstrap requests answered, by status", ["region", "status"]
)
CACHE = Counter(
    "iotfailover_bootstrap_cache_total",
    "Bootstrap service cache lookups by kind (thing, groups, records) and result (hit, miss)",
    ["region", "kind", "result"],
)
READS_FAILING = Gauge(
    "iotfailover_bootstrap_reads_failing",
    "1 while the region's last read failed: answers bypass the cache until a read succeeds",
    ["region"],
)
LATENCY = Histogram(
    "iotfailover_bootstrap_request_seconds",
    "Time to build a bootstrap answer",
    ["region"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> str:
        return json.dumps(self.body, separators=(",", ":"))


_MISSING = object()


class TtlCache:
    """A thread-safe cache whose entries live `ttl` seconds; one loader per key at a time.

    Concurrent misses of one key wait for the first loader instead of all reading AWS (a boot storm
    of one device retrying, or of every device asking for the same table records).
    """

    def __init__(self, ttl: float, region: str, kind: str, max_entries: int = 200_000):
        self.ttl, self.max_entries = ttl, max_entries
        self._data: dict[Any, tuple[float, Any]] = {}
        self._gates: dict[Any, threading.Lock] = {}
        self._lock = threading.Lock()
        self._hit = CACHE.labels(region=region, kind=kind, result="hit")
        self._miss = CACHE.labels(region=region, kind=kind, result="miss")

    def peek(self, key: Any) -> Any:
        """The fresh value of `key`, or _MISSING; never loads."""
        entry = self._data.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        return _MISSING

    def get(self, key: Any, load: Callable[[], Any], refresh: bool = False) -> Any:
        """The cached value, or `load()`'s (kept for `ttl`); `refresh` loads even over a fresh entry."""
        if self.ttl <= 0 or refresh:
            self._miss.inc()
            value = load()
            if self.ttl > 0:
                self._store(key, value)
            return value
        value = self.peek(key)
        if value is not _MISSING:
            self._hit.inc()
            return value
        with self._lock:
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:
            value = self.peek(key)
            if value is not _MISSING:
                self._hit.inc()
                return value
            self._miss.inc()
            try:
                value = load()
                self._store(key, value)
            finally:
                with self._lock:
                    self._gates.pop(key, None)
            return value

    def _store(self, key: Any, value: Any) -> None:
        with self._lock:
            if len(self._data) >= self.max_entries:
                self._data.clear()
            self._data[key] = (time.monotonic() + self.ttl, value)


class BootstrapService:
    """Answers `GET /v1/bootstrap/<thing>` for one region of one deployment.

    Reads with the process's own credentials and serves the configured device endpoints
    (bootstrap/runtime.py); `endpoints` overrides the config's (IOTFAILOVER_IOT_ENDPOINTS).
    """

    def __init__(
        self,
        cfg: DeploymentConfig,
        region: str,
        cache_ttl: float = 5.0,
        aws: AwsClients | None = None,
        endpoints: Mapping[str, str] | None = None,
    ):
        if region not in cfg.regions:
            raise ValueError(f"region {region!r} is not part of deployment {cfg.name!r}")
        self.cfg, self.region = cfg, region
        self.endpoints = device_endpoints(cfg, endpoints)
        self.aws = aws or service_clients(cfg)
        self.reads_failing = False  # the breaker: set by a failed read, cleared by the next good one
        self._reads_failing = READS_FAILING.labels(region=region)
        self._reads_failing.set(0)
        self.things = TtlCache(cache_ttl, region, "thing")
        self.groups = TtlCache(cache_ttl, region, "groups")
        self.records = TtlCache(cache_ttl, region, "records")
        self._cas = [cfg.ca_pem()]
        self._log = logs.get("bootstrap", deployment=cfg.name, region=region)

    def answer(self, thing: str) -> Answer:
        """The device contract's JSON for `thing`, or an error answer; counted and timed."""
        t0 = time.perf_counter()
        ans = self._answer(thing)
        REQUESTS.labels(region=self.region, status=str(ans.status)).inc()
        LATENCY.labels(region=self.region).observe(time.perf_counter() - t0)
        return ans

    def _answer(self, thing: str) -> Answer:
        if not THING_NAME.match(thing):
            BAD_INPUT.labels(source="bootstrap_request", reason="thing_name").inc()
            return Answer(400, {"error": f"invalid thing name {thing[:140]!r}: use 1-128 of [a-zA-Z0-9:_-]"})
        refresh = self.reads_failing
        records: dict[str, dict] = {}
        groups: list[str] = []
        try:
            attributes = self.things.get(thing, lambda: self._describe_thing(thing), refresh)
            if attributes is not None:
                records = self.records.get("all", self._scan_records, refresh)
                if _groups_matter(records):
                    groups = self.groups.get(thing, lambda: self._thing_groups(thing), refresh)
        except (ClientError, BotoCoreError) as e:
            if is_retryable(e):
                self._record_read(is_throttle(e))  # throttled: the region is up, pushing back
                return self._unavailable(f"{error_code(e)}")
            self._log.error("bootstrap lookup failed", thing=thing, error=str(e))
            return Answer(500, {"error": f"bootstrap lookup failed in {self.region}: {error_code(e)}: {e}"})
        self._record_read(True)
        if attributes is None:
            return Answer(404, {"error": f"device {thing!r} is not registered in {self.region}"})
        try:
            return Answer(200, self.contract(thing, attributes, records, groups))
        except MalformedRecord as e:
            BAD_INPUT.labels(source="bootstrap_table", reason="malformed_record").inc()
            self._log.error("malformed bootstrap config", thing=thing, error=str(e))
            return Answer(500, {"error": f"bootstrap config of {self.region} is malformed: {e}"})

    def _record_read(self, ok: bool) -> None:
        """Close (ok) or open the breaker; logged when it changes."""
        failing = not ok
        if failing == self.reads_failing:
            return
        self.reads_failing = failing
        self._reads_failing.set(0 if ok else 1)
        if ok:
            self._log.info("region reads answer again: serving from the cache")
        else:
            self._log.warning("region reads fail: answering 503 and bypassing the cache until one succeeds")

    def from_cache(self, thing: str) -> bool:
        """Whether answer(thing) needs no AWS call, so a server may answer it on its event loop."""
        if not THING_NAME.match(thing):
            return True
        if self.reads_failing:
            return False
        attributes, records = self.things.peek(thing), self.records.peek("all")
        if attributes is _MISSING or records is _MISSING:
            return False
        if attributes is None:
            return True
        return not _groups_matter(records) or self.groups.peek(thing) is not _MISSING

    def _unavailable(self, why: str) -> Answer:
        return Answer(
            503,
            {"error": f"region {self.region} is unavailable ({why}); try the next endpoint", "retry": True},
            {"Retry-After": "5"},
        )

    def contract(
        self, thing: str, attributes: dict[str, str], records: dict[str, dict], groups: list[str]
    ) -> dict[str, Any]:
        """The answer for a device: the newest live record among the default and its groups' scopes.

        A scope override only wins while it is newer than the default, so a deployment-wide flip
        after a canary also moves the canary. The epoch is the newest of every record that applies
        (tombstones included), so a device never sees the epoch go backwards when a scope is cleared.
        """
        scopes = [DEFAULT_SCOPE, *sorted(group_scope(g) for g in groups)]
        applicable = [parse_record(records[s], self.cfg.region_names) for s in scopes if s in records]
        live = [r for r in applicable if not r.cleared]
        chosen = max(live, key=lambda r: (r.epoch, r.scope != DEFAULT_SCOPE)) if live else self._initial()
        app = attributes.get("application") or self.cfg.fleet.application
        if not _APPLICATION.match(app):
            raise MalformedRecord(f"thing {thing!r} has attribute application={app!r}; use [A-Za-z0-9_-]")
        return {
            "epoch": max([chosen.epoch, *(r.epoch for r in applicable)]),
            "scope": chosen.scope,
            "endpoints": [
                {
                    "endpoint": self.endpoints[region],
                    "region": region,
                    "CAs": self._cas,
                    "primary": region == chosen.primary,
                    "retry": chosen.retry,
                }
                for region in chosen.order
            ],
            "topics": {"configurations": f"cmd/{app}/config/{thing}/", "sensor": f"data/{app}/{thing}/"},
        }

    def _initial(self) -> BootstrapRecord:
        """Before any flip: the deployment config's primary, then its standbys, at epoch 0."""
        return BootstrapRecord(
            scope=DEFAULT_SCOPE,
            epoch=0,
            primary=self.cfg.primary,
            order=[self.cfg.primary, *self.cfg.standbys()],
            reason="deployment config (never flipped)",
        )

    def _describe_thing(self, thing: str) -> dict[str, str] | None:
        try:
            return self.aws.iot(self.region).describe_thing(thingName=thing).get("attributes") or {}
        except ClientError as e:
            if is_not_found(e):
                return None
            raise

    def _thing_groups(self, thing: str) -> list[str]:
        iot = self.aws.iot(self.region)
        return [
            g["groupName"]
            for g in all_items(iot, "list_thing_groups_for_thing", "thingGroups", thingName=thing)
        ]

    def _scan_records(self) -> dict[str, dict]:
        """Every scope's item; {} before the first flip (no table yet)."""
        try:
            return scan_records(self.aws.dynamodb(self.region), self.cfg.bootstrap_table)
        except ClientError as e:
            if is_not_found(e):
                return {}
            raise

    def health(self) -> tuple[bool, dict[str, Any]]:
        """What /healthz reports: whether this region's table answers now (missing: never flipped;
        throttled: up and pushing back). Read-only: anyone may call /healthz, so it never changes
        what devices are answered."""
        body: dict[str, Any] = {"region": self.region, "deployment": self.cfg.name}
        try:
            self.aws.dynamodb(self.region).describe_table(TableName=self.cfg.bootstrap_table)
            ok, body["table"] = True, "ready"
        except ClientError as e:
            ok = is_not_found(e) or is_throttle(e)
            body["table"] = "missing" if is_not_found(e) else "throttled" if ok else f"error: {error_code(e)}"
        except BotoCoreError as e:
            ok, body["table"] = False, f"error: {error_code(e)}"
        body["status"] = "ok" if ok else "unavailable"
        body["answers"] = "bypassing the cache (a read failed)" if self.reads_failing else "normal"
        return ok, body

    def check(self) -> bool:
        """The service's own periodic check (the local server runs it every second): it opens or
        closes the breaker, so a table outage turns even cached answers into 503 within a period."""
        ok, _ = self.health()
        self._record_read(ok)
        return ok


def _groups_matter(records: dict[str, dict]) -> bool:
    """Whether a thing's groups can change its answer: only a group scope newer than the default can
    (so retired canaries cost no registry lookups); a record without a numeric epoch is looked at."""

    def epoch(values: dict | None) -> float:
        v = (values or {}).get("epoch", -1)
        return float(v) if isinstance(v, int | Decimal) and not isinstance(v, bool) else float("inf")

    default = epoch(records.get(DEFAULT_SCOPE)) if DEFAULT_SCOPE in records else -1
    return any(epoch(v) > default for scope, v in records.items() if scope != DEFAULT_SCOPE)


def scan_records(ddb: Any, table: str) -> dict[str, dict[str, Any]]:
    """Every scope's item of one region's table (one item per scope, so it stays tiny), by scope.

    Here rather than in core.bootstrap_records: only the service scans, and the Lambda's IAM policy
    is derived from the calls in bootstrap/ (deploy/iam_actions.py).
    """
    records: dict[str, dict[str, Any]] = {}
    args: dict[str, Any] = {"TableName": table}
    while True:
        page = ddb.scan(**args)
        for item in page.get("Items", []):
            values = from_item(item)
            records[str(values.get("scope"))] = values
        if not page.get("LastEvaluatedKey"):
            return records
        args["ExclusiveStartKey"] = page["LastEvaluatedKey"]
