"""How a simulated device reaches AWS IoT: a small Transport protocol and the local transport.

The device logic only sees `Transport.connect` and the `Connection` it returns, so an MQTT transport
(awsiotsdk over mTLS against real AWS IoT, see README) can replace the local one without touching it.

The local transport plays a connection with the region's emulator HTTP data plane through the
project's boto3 client factory: boto3 is synchronous, so calls run in one bounded thread pool shared
by every device of the process, behind an asyncio semaphore that bounds the calls in flight.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from core.aws import AwsClients
from core.config import DeploymentConfig, Quotas
from core.errors import error_code, is_retryable
from simulator.contract import Endpoint

# Device-side account quotas of AWS IoT (data plane and Jobs over HTTP), not the controller's.
DEVICE_QUOTAS = Quotas(
    default_rps=4000,
    per_api={
        "Publish": 20000,
        "GetPendingJobExecutions": 200,
        "DescribeJobExecution": 200,
        "UpdateJobExecution": 200,
        "StartNextPendingJobExecution": 200,
    },
)


class TransportError(Exception):
    """A failed device call; `retryable` says whether the link (not the request) failed."""

    def __init__(self, message: str, code: str = "", retryable: bool = True):
        super().__init__(message)
        self.code = code or "TransportError"
        self.retryable = retryable


@dataclass(frozen=True)
class JobExecution:
    job_id: str
    status: str
    document: Any


class Connection(Protocol):
    """One device connected to one region's endpoint."""

    region: str
    endpoint: Endpoint

    async def publish(self, topic: str, payload: dict) -> None: ...
    async def report(self, reported: dict, shadow: str | None = None) -> None: ...
    async def pending_jobs(self) -> list[str]: ...
    async def job(self, job_id: str) -> JobExecution: ...
    async def update_job(self, job_id: str, status: str, details: dict[str, str]) -> None: ...
    async def close(self) -> None: ...


class Transport(Protocol):
    async def connect(self, thing: str, endpoint: Endpoint, subscribe: list[str]) -> Connection: ...
    async def close(self) -> None: ...


class LocalTransport:
    """Devices of one process talking to the per-region emulators (or any AWS IoT HTTP data plane)."""

    def __init__(self, cfg: DeploymentConfig, max_in_flight: int = 32):
        self.cfg = cfg
        self.aws = AwsClients(
            cfg.model_copy(update={"quotas": DEVICE_QUOTAS}),
            max_pool_connections=max_in_flight,
            max_attempts=1,  # the device's own retry timings decide when to try again
        )
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="sim-aws")
        self._slots = asyncio.Semaphore(max_in_flight)

    async def call(self, region: str, service: str, method: str, **kwargs: Any) -> Any:
        if region not in self.cfg.regions:
            raise TransportError(f"no route to region {region}: not part of deployment {self.cfg.name}")
        async with self._slots:
            try:
                client = self.aws.client(region, service)
                fn = partial(getattr(client, method), **kwargs)
                return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
            except (ClientError, BotoCoreError) as e:
                code = error_code(e)
                raise TransportError(f"{method} in {region}: {code}: {e}", code, is_retryable(e)) from None

    async def connect(self, thing: str, endpoint: Endpoint, subscribe: list[str]) -> LocalConnection:
        """A cheap data-plane read that only succeeds if the region is up and knows this thing."""
        try:
            await self.call(endpoint.region, "iot-data", "list_named_shadows_for_thing", thingName=thing)
        except TransportError as e:
            e.retryable = True  # an unknown thing is a refused connection: try again, then elsewhere
            raise
        return LocalConnection(self, thing, endpoint.region, endpoint, list(subscribe))

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class LocalConnection:
    transport: LocalTransport
    thing: str
    region: str
    endpoint: Endpoint
    subscriptions: list[str] = field(default_factory=list)  # delivered only by an MQTT transport

    async def _call(self, service: str, method: str, **kwargs: Any) -> Any:
        return await self.transport.call(self.region, service, method, **kwargs)

    async def publish(self, topic: str, payload: dict) -> None:
        await self._call("iot-data", "publish", topic=topic, qos=1, payload=json.dumps(payload).encode())

    async def report(self, reported: dict, shadow: str | None = None) -> None:
        body = json.dumps({"state": {"reported": reported}}).encode()
        kwargs = {"shadowName": shadow} if shadow else {}
        await self._call("iot-data", "update_thing_shadow", thingName=self.thing, payload=body, **kwargs)

    async def pending_jobs(self) -> list[str]:
        resp = await self._call("iot-jobs-data", "get_pending_job_executions", thingName=self.thing)
        return [j["jobId"] for j in [*resp.get("inProgressJobs", []), *resp.get("queuedJobs", [])]]

    async def job(self, job_id: str) -> JobExecution:
        resp = await self._call(
            "iot-jobs-data",
            "describe_job_execution",
            jobId=job_id,
            thingName=self.thing,
            includeJobDocument=True,
        )
        ex = resp["execution"]
        raw = ex.get("jobDocument")
        try:
            doc = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            doc = raw
        return JobExecution(job_id, ex.get("status", ""), doc)

    async def update_job(self, job_id: str, status: str, details: dict[str, str]) -> None:
        await self._call(
            "iot-jobs-data",
            "update_job_execution",
            jobId=job_id,
            thingName=self.thing,
            status=status,
            statusDetails=details,
        )

    async def close(self) -> None:
        """Nothing to tear down: the local link is a series of HTTP calls."""
