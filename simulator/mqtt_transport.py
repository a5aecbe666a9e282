"""The MQTT transport: each device connects with its own certificate over mutual TLS (aiomqtt).

The same code talks to a rehearsal region's broker and to AWS IoT Core; only the address and the
root it trusts differ. A region with an `endpoint_url` (the local stack) tells its broker's address
and root CA at `/_emulator/mqtt`; any other region is AWS: the ATS endpoint of the bootstrap answer
on port 8883 (or 443 with ALPN `x-amzn-mqtt-ca`), trusting `[simulator.mqtt] root_ca_file` or else
the bootstrap answer's `CAs`. Shadows and jobs are IoT Core's request/response topics (correlated
by `clientToken`); `jobs/notify-next` sets `Connection.notified`, which wakes the device's job
check at once instead of at its next poll. A lost link fails every call in flight and every later
one with a retryable `TransportError`, so the device's retry timings and failover stay the same as
over any link.

Chosen after bench/mqtt_bench.py measured aiomqtt and gmqtt side by side (docs/simulator.md):
gmqtt cost a little less CPU, but aiomqtt awaits each PUBACK and raises on a lost link, which is
what a device's retry count needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
import uuid
from collections import deque
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import aiomqtt

from core.config import DeploymentConfig
from simulator.config import SimulatorConfig
from simulator.contract import Endpoint
from simulator.transport import JobExecution, TransportError

ALPN = "x-amzn-mqtt-ca"
T = TypeVar("T")


class _Client(aiomqtt.Client):
    """aiomqtt's client, except that a link the broker closes before its CONNACK fails the connect at
    once (aiomqtt 2.5 ignores that disconnect and waits out its timeout): IoT Core refusing a
    certificate in the handshake is a reset a device sees at once, and its retry timings count on it."""

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None
    ):
        if not self._connected.done():
            self._loop.call_soon_threadsafe(self._refused_before_connack, str(reason_code))
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def _refused_before_connack(self, reason: str) -> None:
        if not self._connected.done():
            self._connected.set_exception(aiomqtt.MqttError(f"connection closed before CONNACK: {reason}"))

    async def _wait_for(self, fut: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 (aiomqtt signature)
        """aiomqtt's own wait (connect, publish, subscribe) without `asyncio.wait_for`, which on Python
        3.11 loses a cancel arriving as the awaited thing completes (CPython gh-86296): a device
        stopped as its PUBACK came in ran on, and the fleet's stop waited for it."""
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(None if limit == math.inf else limit):
                return await fut
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None


class MqttTransport:
    """Devices of one process, each with its own key and certificate (paths from the manifest)."""

    def __init__(
        self, cfg: DeploymentConfig, sim: SimulatorConfig, credentials: dict[str, tuple[Path, Path]]
    ):
        self.cfg, self.sim, self.credentials = cfg, sim, credentials
        self._brokers: dict[str, dict] = {}  # region -> {"host", "port", "root_ca"} of a local region
        self._contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        self._connecting = asyncio.Semaphore(sim.mqtt.max_connecting)

    async def _local_broker(self, region: str) -> dict | None:
        url = self.cfg.regions[region].endpoint_url if region in self.cfg.regions else None
        if not url:
            return None
        if region not in self._brokers:
            try:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"{url}/_emulator/mqtt", timeout=aiohttp.ClientTimeout(total=5)) as r,
                ):
                    self._brokers[region] = await r.json()
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                raise TransportError(f"no MQTT endpoint known for {region}: {e}", "NoEndpoint") from None
        return self._brokers[region]

    def _tls(self, thing: str, root: str, alpn: bool) -> ssl.SSLContext:
        key = (thing, root)
        if key not in self._contexts:
            if thing not in self.credentials:
                raise TransportError(f"{thing} has no certificate in the manifest", "NoCredentials", False)
            cert, private_key = self.credentials[thing]
            ctx = ssl.create_default_context(cadata=root or None)
            ctx.load_cert_chain(cert, private_key)
            if alpn:
                ctx.set_alpn_protocols([ALPN])
            self._contexts[key] = ctx
        return self._contexts[key]

    async def _address(self, endpoint: Endpoint) -> tuple[str, int, str, bool]:
        """(host, port, trusted root PEM, ALPN) of a region's device endpoint."""
        local = await self._local_broker(endpoint.region)
        if local is not None:
            return local["host"], int(local["port"]), local["root_ca"], False
        settings = self.sim.mqtt
        root = settings.root_ca_file.read_text() if settings.root_ca_file else "\n".join(endpoint.cas)
        return endpoint.endpoint, settings.port, root, settings.port == 443

    async def connect(self, thing: str, endpoint: Endpoint, subscribe: list[str]) -> MqttConnection:
        host, port, root, alpn = await self._address(endpoint)
        client = _Client(
            host,
            port,
            identifier=thing,
            tls_context=self._tls(thing, root, alpn),
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=int(self.sim.keep_alive_seconds) + 30,
            clean_session=True,
            timeout=self.sim.mqtt.connect_timeout_seconds,
        )
        async with self._connecting:
            try:  # bounded as a whole: a handshake that never ends must not hold a connect slot
                async with asyncio.timeout(self.sim.mqtt.connect_timeout_seconds + 5):
                    await client.__aenter__()
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as e:
                raise TransportError(f"connect to {endpoint.region}: {e}", "ConnectFailed") from None
            except (TimeoutError, asyncio.CancelledError) as e:  # cut short mid-connect: leave no client
                with contextlib.suppress(Exception):
                    await asyncio.shield(client.__aexit__(None, None, None))
                if isinstance(e, asyncio.CancelledError):
                    raise
                raise TransportError(f"connect to {endpoint.region}: timed out", "ConnectFailed") from None
        conn = MqttConnection(self, client, thing, endpoint.region, endpoint)
        try:
            await conn.start(subscribe)
        except BaseException:
            await asyncio.shield(conn.close())
            raise
        return conn

    async def close(self) -> None:
        """Nothing shared to tear down: each connection closes itself."""


class MqttConnection:
    """One device's MQTT session with one region."""

    def __init__(
        self, transport: MqttTransport, client: aiomqtt.Client, thing: str, region: str, ep: Endpoint
    ):
        self.transport, self.client, self.thing, self.region, self.endpoint = (
            transport,
            client,
            thing,
            region,
            ep,
        )
        self.base = f"$aws/things/{thing}"
        self.notified = asyncio.Event()  # set by notify-next, and when the link is lost
        self.lost: str | None = None
        self._waiters: dict[str, asyncio.Future] = {}
        self.received: deque[tuple[str, Any]] = deque(maxlen=64)  # messages that answer no request
        self._reader: asyncio.Task | None = None
        self._timeout = transport.sim.mqtt.request_timeout_seconds

    async def start(self, subscribe: list[str]) -> None:
        """Subscribe to the answers and notifications first, as IoT Core asks, then listen."""
        filters = [
            f"{self.base}/shadow/update/accepted",
            f"{self.base}/shadow/update/rejected",
            f"{self.base}/jobs/notify-next",
            f"{self.base}/jobs/get/+",
            f"{self.base}/jobs/+/get/+",
            f"{self.base}/jobs/+/update/+",
            *subscribe,
        ]
        try:
            await self.client.subscribe([(f, 1) for f in filters], timeout=self._timeout)
        except aiomqtt.MqttError as e:
            raise TransportError(f"subscribe in {self.region}: {e}", "SubscribeFailed") from None
        self._reader = asyncio.create_task(self._read(), name=f"mqtt-{self.thing}")

    async def _read(self) -> None:
        try:
            async for m in self.client.messages:
                topic = m.topic.value
                if topic.endswith("/notify-next"):
                    self.notified.set()
                    continue
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    body = json.loads(m.payload)  # type: ignore[arg-type]
                    waiter = self._waiters.pop(body.get("clientToken"), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result((topic.rsplit("/", 1)[-1], body))
                    elif waiter is None:
                        self.received.append((topic, body))
        except aiomqtt.MqttError as e:
            self.lost = f"link lost: {e}"
        finally:
            self.lost = self.lost or "link closed"
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(TransportError(f"{self.region}: {self.lost}", "ConnectionLost"))
            self._waiters.clear()
            self.notified.set()

    def _check(self) -> None:
        if self.lost:
            raise TransportError(f"{self.region}: {self.lost}", "ConnectionLost")

    async def publish(self, topic: str, payload: dict) -> None:
        self._check()
        try:
            await self.client.publish(topic, json.dumps(payload), qos=1, timeout=self._timeout)
        except aiomqtt.MqttError as e:
            raise TransportError(f"publish in {self.region}: {e}", "PublishFailed") from None

    async def _request(self, topic: str, body: dict) -> dict:
        """Publish a request and wait for its `/accepted` (returned) or `/rejected` (raised) answer."""
        self._check()
        token = uuid.uuid4().hex
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[token] = waiter
        try:
            await self.publish(topic, {**body, "clientToken": token})
            async with asyncio.timeout(self._timeout):  # not wait_for: see _Client._wait_for
                outcome, answer = await waiter
        except TimeoutError:
            raise TransportError(f"{topic}: no answer within {self._timeout}s", "RequestTimeout") from None
        finally:
            self._waiters.pop(token, None)
        if outcome == "rejected":
            code = str(answer.get("code", "Rejected"))
            retry = code in ("RequestThrottled", "429", "500", "503", "InternalError")
            raise TransportError(f"{topic} rejected: {code}: {answer.get('message', '')}", code, retry)
        return answer

    async def report(self, reported: dict, shadow: str | None = None) -> None:
        if shadow:  # the device reports to its classic shadow only; a named one is fire-and-forget
            await self.publish(f"{self.base}/shadow/name/{shadow}/update", {"state": {"reported": reported}})
            return
        await self._request(f"{self.base}/shadow/update", {"state": {"reported": reported}})

    async def pending_jobs(self) -> list[str]:
        answer = await self._request(f"{self.base}/jobs/get", {})
        return [j["jobId"] for j in [*answer.get("inProgressJobs", []), *answer.get("queuedJobs", [])]]

    async def job(self, job_id: str) -> JobExecution:
        answer = await self._request(f"{self.base}/jobs/{job_id}/get", {"includeJobDocument": True})
        ex: dict[str, Any] = answer.get("execution") or {}
        return JobExecution(job_id, ex.get("status", ""), ex.get("jobDocument"))

    async def update_job(self, job_id: str, status: str, details: dict[str, str]) -> None:
        await self._request(f"{self.base}/jobs/{job_id}/update", {"status": status, "statusDetails": details})

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            # asyncio.wait raises only if *this* task is cancelled: a device's stop is never lost
            await asyncio.wait([self._reader])
        with contextlib.suppress(aiomqtt.MqttError, OSError, RuntimeError):
            await self.client.__aexit__(None, None, None)
