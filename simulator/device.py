"""One simulated device following DESIGN.md's device contract, as a single asyncio task.

Boot (bootstrap over HTTP) > connect to the primary endpoint > heartbeat, telemetry and job polls on
their own timers > migrate-region jobs > on `retry` consecutive errors, re-bootstrap and move to the
next endpoint of the list. One coroutine per device keeps 10,000 devices cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass

from core import logs
from simulator.bootstrap_client import BootstrapClient
from simulator.config import FaultKind, SimulatorConfig
from simulator.contract import (
    MIGRATE,
    Assignment,
    ContractError,
    Endpoint,
    MigrateJob,
    UnknownRegion,
    parse_migrate_job,
)
from simulator.metrics import Stats
from simulator.transport import Connection, JobExecution, Transport, TransportError

FIRMWARE = "sim-1.0"


@dataclass(frozen=True)
class DeviceSpec:
    thing: str
    sku: str = ""
    fault: FaultKind | None = None
    certificate: str = ""  # paths of the device's own certificate and key (the MQTT transport)
    key: str = ""


class Device:
    def __init__(
        self,
        spec: DeviceSpec,
        sim: SimulatorConfig,
        application: str,
        transport: Transport,
        bootstrap: BootstrapClient,
        stats: Stats,
        rng: random.Random,
    ):
        self.spec = spec
        self.sim = sim
        self.application = application
        self.transport = transport
        self.bootstrap_client = bootstrap
        self.stats = stats
        self.rng = rng
        self.state = "booting"
        self.assignment: Assignment | None = None
        self.epoch = -1
        self.conn: Connection | None = None
        self.since = 0.0
        self.seq = 0
        self.handled_jobs: set[str] = set()
        self.events: deque[tuple[float, str, str]] = deque(maxlen=32)  # (monotonic, kind, detail)
        self.log = logs.get("simulator.device", thing=spec.thing)

    @property
    def thing(self) -> str:
        return self.spec.thing

    @property
    def region(self) -> str:
        return self.conn.region if self.conn else "-"

    def event(self, kind: str, detail: str = "") -> None:
        self.events.append((time.monotonic(), kind, detail))

    def event_kinds(self) -> list[str]:
        return [k for _, k, _ in self.events]

    # ---- the life of a device -------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._live()
        finally:  # a stopped device closes its link: an MQTT client left open keeps its socket busy
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.conn.close())

    async def _live(self) -> None:
        failed_region: str | None = None
        while True:
            await self._bootstrap()
            if self.assignment is None:
                self.state = "offline"
                await self._backoff(len(self.sim.retry_timings_ms) - 1)
                continue
            if await self._connect_in_order(self.assignment.ordered(last=failed_region), failed_region):
                failed_region = await self._session()
            else:
                self.state = "offline"
                self.event("all-endpoints-failed")
                await self._backoff(len(self.sim.retry_timings_ms) - 1)

    async def _bootstrap(self) -> None:
        """Fetch an assignment; an answer older than the epoch the device holds is ignored."""
        await self._slow()
        answer, problems = await self.bootstrap_client.fetch(self.thing)
        if answer is None:
            self.stats.bootstrap("failed")
            self.event("bootstrap-failed", "; ".join(problems))
            return
        if answer.epoch < self.epoch:
            self.stats.bootstrap("stale")
            self.event("bootstrap-stale", f"epoch {answer.epoch} < {self.epoch}")
            return
        self.stats.bootstrap("ok")
        self.event("bootstrap", f"epoch {answer.epoch}")
        self.assignment, self.epoch = answer, answer.epoch

    async def _connect_in_order(self, order: list[Endpoint], failed_region: str | None) -> bool:
        """Each endpoint gets its `retry` attempts before the next one is tried."""
        self.state = "connecting"
        for ep in order:
            conn = await self._attempts(ep, self.epoch)
            if conn is None:
                continue
            await self._switch(conn)
            if failed_region and conn.region != failed_region:
                self.stats.failed_over(failed_region, conn.region)
                self.event("failover", f"{failed_region} -> {conn.region}")
                self.log.info("failed over", source=failed_region, target=conn.region)
            return True
        return False

    async def _attempts(self, ep: Endpoint, epoch: int, first: int = 0) -> Connection | None:
        """Attempts `first`..`retry`-1 at one endpoint, the retry timings plus skew between them."""
        for attempt in range(first, ep.retry):
            if attempt:
                await self._backoff(attempt - 1)
            conn = await self._try_connect(ep, epoch)
            if conn is not None:
                return conn
        return None

    async def _try_connect(self, ep: Endpoint, epoch: int) -> Connection | None:
        """Connect and report connectivity there; None (counted, logged) when either fails."""
        await self._slow()
        since = round(time.time(), 3)
        try:
            self._flaky()
            conn = await self.transport.connect(self.thing, ep, self._topics(self.sim.subscribe_topics))
            self._flaky()
            await self._report_connectivity(conn, epoch, since, full=True)
        except TransportError as e:
            self.stats.error(ep.region, "connect")
            self.event("connect-failed", f"{ep.region}: {e.code}")
            return None
        self.since = since
        self.stats.connected(conn.region)
        self.event("connected", conn.region)
        return conn

    async def _switch(self, conn: Connection) -> None:
        old, self.conn = self.conn, conn
        if old is not None and old is not conn:
            await old.close()

    async def _session(self) -> str:
        """Heartbeat, telemetry and job polls until the link fails `retry` times in a row; returns its region."""
        self.state = "connected"
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = {
            "heartbeat": now + self.sim.keep_alive_seconds,
            "telemetry": now + self.rng.uniform(0, self.sim.telemetry_interval_seconds),
            "jobs": now + self.rng.uniform(0, self.sim.job_poll_seconds),
        }
        every = {
            "heartbeat": self.sim.keep_alive_seconds,
            "telemetry": self.sim.telemetry_interval_seconds,
            "jobs": self.sim.job_poll_seconds,
        }
        actions = {"heartbeat": self._heartbeat, "telemetry": self._publish, "jobs": self._poll_jobs}
        while True:
            name = min(due, key=due.__getitem__)
            if await self._woken(max(0.0, due[name] - loop.time())):
                name = "jobs"  # notify-next (or a lost link): look at the jobs now
            due[name] = loop.time() + every[name]
            try:
                await self._slow()
                await actions[name]()
            except TransportError as e:
                assert self.conn is not None
                region = self.conn.region
                self.stats.error(region, name)
                self.event("link-error", f"{region}: {e.code}")
                if not await self._reconnect():
                    self.event("retries-exhausted", region)
                    return region
                self.state = "connected"

    async def _woken(self, delay: float) -> bool:
        """Sleep `delay`, cut short when the connection signals (an MQTT notify-next or a lost link)."""
        notified = getattr(self.conn, "notified", None)
        if notified is None:
            await asyncio.sleep(delay)
            return False
        try:
            async with asyncio.timeout(delay):  # not wait_for, which loses a cancel on Python 3.11
                await notified.wait()
        except TimeoutError:
            return False
        notified.clear()
        return True

    async def _reconnect(self) -> bool:
        """The error that got us here was attempt 0 of `retry`: retry the same endpoint."""
        assert self.conn is not None
        self.state = "reconnecting"
        conn = await self._attempts(self.conn.endpoint, self.epoch, first=1)
        if conn is not None:
            await self._switch(conn)
        return conn is not None

    # ---- what a connected device does ----------------------------------------------------------

    async def _heartbeat(self) -> None:
        assert self.conn is not None
        self._flaky()
        if self.sim.shadow:
            await self._report_connectivity(self.conn, self.epoch, self.since)
        else:
            await self.conn.publish(self._topic("{sensor}") + "heartbeat", {"ts": time.time()})

    async def _publish(self) -> None:
        assert self.conn is not None
        self.seq += 1
        payload = {
            "device": self.thing,
            "sku": self.spec.sku,
            "seq": self.seq,
            "ts": time.time(),
            "temperature": round(20 + self.rng.gauss(0, 2), 2),
            "health": self.sim.health_score,
        }
        for topic in self._topics(self.sim.publish_topics):
            self._flaky()
            await self.conn.publish(topic, payload)
            self.stats.published(self.conn.region)

    async def _report_connectivity(
        self, conn: Connection, epoch: int, since: float, full: bool = False
    ) -> None:
        if not self.sim.shadow:
            return
        reported: dict = {
            "connectivity": {
                "region": conn.region,
                "endpoint": conn.endpoint.endpoint,
                "epoch": epoch,
                "since": since,
            }
        }
        if full:
            reported["device"] = {
                "sku": self.spec.sku,
                "firmware": FIRMWARE,
                "healthScore": self.sim.health_score,
            }
        await conn.report(reported)

    async def _poll_jobs(self) -> None:
        assert self.conn is not None
        self._flaky()
        for job_id in await self.conn.pending_jobs():
            if job_id in self.handled_jobs:
                continue
            try:
                execution = await self.conn.job(job_id)
            except TransportError as e:
                if e.retryable:
                    raise
                self.handled_jobs.add(job_id)
                self.stats.error(self.conn.region, "job")
                continue
            await self._handle_job(execution)

    async def _handle_job(self, ex: JobExecution) -> None:
        """Run a migrate job; stale epochs and never-migrate devices leave the job untouched."""
        assert self.conn is not None
        self.handled_jobs.add(ex.job_id)
        try:
            job = await self._read_job(ex.document)
        except ContractError as e:
            is_migrate = isinstance(ex.document, dict) and ex.document.get("operation") == MIGRATE
            status = "FAILED" if is_migrate else "REJECTED"
            reason = f"bad {MIGRATE} document: {e}" if is_migrate else f"unsupported job: {e}"
            await self._finish_job(self.conn, ex.job_id, status, {"reason": reason})
            self.stats.migration("failed" if is_migrate else "rejected")
            return
        if job.epoch < self.epoch:
            self.stats.migration("stale")
            self.event("job-stale", f"{ex.job_id}: epoch {job.epoch} < {self.epoch}")
            return
        if self.spec.fault == "never-migrate":
            self.stats.migration("refused")
            self.event("job-refused", ex.job_id)
            return
        try:
            await self._migrate(ex.job_id, job)
        except TransportError as e:
            if e.retryable:  # the old region's link failed: pick the job up again once reconnected
                self.handled_jobs.discard(ex.job_id)
                raise
            self.stats.error(self.region, "job-update")  # e.g. the job was cancelled meanwhile
            self.event("job-update-failed", f"{ex.job_id}: {e.code}")
        finally:
            self.state = "connected"

    async def _read_job(self, document: object) -> MigrateJob:
        """Parse a migrate job; one that leaves endpoints to bootstrap and names an unknown region
        sends the device to bootstrap first (the cutover flipped it before creating the job)."""
        try:
            return parse_migrate_job(document, self.assignment)
        except UnknownRegion:
            answer, _ = await self.bootstrap_client.fetch(self.thing)
            return parse_migrate_job(document, answer or self.assignment)

    async def _migrate(self, job_id: str, job: MigrateJob) -> None:
        old = self.conn
        assert old is not None
        self.state = "migrating"
        self.event("migrating", f"{job_id}: {old.region} -> {job.target_region}")
        await old.update_job(job_id, "IN_PROGRESS", {"step": "connecting", "targetRegion": job.target_region})
        target = job.target()
        new = old if target.region == old.region else await self._attempts(target, job.epoch)
        if new is None:
            reason = f"cannot connect to {target.endpoint} ({target.region}) after {target.retry} attempts"
            await self._finish_job(old, job_id, "FAILED", {"reason": reason})
            self.stats.migration("failed")
            self.event("migrate-failed", reason)
            return
        self.assignment, self.epoch, self.conn = job.assignment, job.epoch, new
        details = {"region": new.region, "epoch": str(job.epoch)}
        await self._finish_job(old, job_id, "SUCCEEDED", details, attempts=target.retry)
        if new is not old:
            await old.close()  # only once the job's outcome is reported where the job lives
        self.stats.migration("succeeded")
        self.event("migrated", f"{job_id}: {new.region}")

    async def _finish_job(
        self, conn: Connection, job_id: str, status: str, details: dict[str, str], attempts: int = 1
    ) -> None:
        """Report a job's outcome where the job lives; a lost update is counted, the device moves on."""
        for attempt in range(attempts):
            if attempt:
                await self._backoff(attempt - 1)
            try:
                await conn.update_job(job_id, status, details)
                return
            except TransportError as e:
                self.stats.error(conn.region, "job-update")
                self.event("job-update-failed", f"{job_id} {status}: {e.code}")
                if not e.retryable:
                    return

    # ---- small helpers -------------------------------------------------------------------------

    def _topic(self, template: str) -> str:
        topics = self.assignment.topics if self.assignment else {}
        return template.format(
            sensor=topics.get("sensor", f"data/{self.application}/{self.thing}/"),
            configurations=topics.get("configurations", f"cmd/{self.application}/config/{self.thing}/"),
            device=self.thing,
            application=self.application,
        )

    def _topics(self, templates: list[str]) -> list[str]:
        return [self._topic(t) for t in templates]

    async def _backoff(self, attempt: int) -> None:
        timings = self.sim.retry_timings_ms
        ms = timings[min(attempt, len(timings) - 1)] + self.rng.uniform(0, self.sim.skew_range_ms)
        await asyncio.sleep(ms / 1000)

    async def _slow(self) -> None:
        if self.spec.fault == "slow":
            await asyncio.sleep(self.sim.faults.slow_ms / 1000)

    def _flaky(self) -> None:
        if self.spec.fault == "flaky" and self.rng.random() < self.sim.faults.flaky_error_rate:
            raise TransportError("simulated flaky link", "SimulatedFlakyLink")
