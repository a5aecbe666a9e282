"""A region's MQTT endpoint: an amqtt broker on its own event loop thread inside the emulator process.

Running next to moto's HTTP server in one process lets the broker read moto's in-process backend, so
a certificate registered, activated or deactivated through boto3 takes effect on MQTT at once. What
amqtt does as a library (MQTT 3.1.1 codec, sessions, subscriptions, fan-out) is left to it; this
module adds what IoT Core does on top, through amqtt's plugin hooks and three overridden steps:
- `_create_ssl_context`: mutual TLS checked against the region's registry (tls.py);
- `_client_connected`: the fault switch (outage refuses, throttle refuses a share, latency delays);
- `_handle_message_delivery`: publishes are authorized by the device's policies (an unauthorized
  publish closes the connection, as IoT Core does), `$aws/things/...` requests are answered from
  moto's state (device_topics.py) and telemetry is also recorded where iot-data's Publish keeps it.

Everything else in the process (HTTP threads: boto3 calls, the fault switch) reaches the broker only
through the thread-safe methods of `RegionBroker`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.disconnect import DisconnectPacket
from moto.backends import get_backend
from moto.core import DEFAULT_ACCOUNT_ID
from prometheus_client import Counter

from rehearsal import pki
from rehearsal.faults import Fault, FaultSwitch
from rehearsal.mqtt import device_topics, presence
from rehearsal.mqtt.auth import CONNECTS, Identity
from rehearsal.mqtt.brokers import BROKERS
from rehearsal.mqtt.tls import TrustStore, server_context

PUBLISHES = Counter(
    "iotfailover_emulator_mqtt_publishes_total",
    "PUBLISH packets received by a rehearsal region's broker, by outcome",
    ["region", "outcome"],
)
DROPS = Counter(
    "iotfailover_emulator_mqtt_drops_total",
    "Live MQTT sessions the broker closed, by reason",
    ["region", "reason"],
)
log = logging.getLogger("emulator.mqtt")


@dataclass
class Live:
    """A connected, authenticated device session."""

    identity: Identity
    handler: Any  # amqtt's BrokerProtocolHandler
    since: float


class Subscriptions(dict):
    """amqtt's topic filter -> subscribers map, indexed so a message finds its filters in O(1).

    amqtt scans every filter for every message; with 1,000 devices of ~8 filters each and three
    notifications per shadow update, that scan was the broker's main cost. Device filters start
    with literal levels (`$aws/things/<thing>/...`), so wildcard filters are indexed by their first
    three levels; exact filters are found by key.
    """

    def __init__(self) -> None:
        super().__init__()
        self.wild: dict[tuple[str, ...], set[str]] = {}

    @staticmethod
    def _head(levels: list[str]) -> tuple[str, ...]:
        head = []
        for level in levels[:3]:
            if level in ("+", "#"):
                break
            head.append(level)
        return tuple(head)

    def __setitem__(self, key: str, value: Any) -> None:
        if "+" in key or "#" in key:
            self.wild.setdefault(self._head(key.split("/")), set()).add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        if "+" in key or "#" in key:
            self.wild.get(self._head(key.split("/")), set()).discard(key)

    def candidates(self, topic: str) -> list[str]:
        levels = topic.split("/")
        out = [topic] if topic in self else []
        for n in range(min(3, len(levels)) + 1):
            out.extend(self.wild.get(tuple(levels[:n]), ()))
        return out


class IotBroker(Broker):
    """amqtt's broker with IoT Core's TLS, fault switch and publish handling (see the module doc)."""

    def __init__(self, region: RegionBroker, config: dict[str, Any]):
        self.region = region
        super().__init__(config, loop=region.loop)
        self._subscriptions = Subscriptions()

    async def _run_broadcast(self, running_tasks: Any) -> None:
        """amqtt's fan-out of one message (0.12.1), over the indexed filters instead of all of them."""
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        for k_filter in self._subscriptions.candidates(topic):
            if not self._matches(topic, k_filter):
                continue
            for target_session, sub_qos in list(self._subscriptions.get(k_filter, ())):
                qos = broadcast.get("qos", sub_qos)
                if target_session.transitions.state != "connected":
                    continue  # devices connect with a clean session: nothing is kept for them
                if not await self._topic_filtering(target_session, topic=topic, action=Action.RECEIVE):
                    continue
                handler = self._get_handler(target_session)
                if handler:
                    task = asyncio.ensure_future(
                        handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
                    )
                    running_tasks.append(task)

    def _create_ssl_context(self, listener: Any) -> Any:  # amqtt calls it per TLS listener
        del listener
        return server_context(self.region.region, self.region.root, self.region.trust)

    async def _create_server_instance(
        self, listener_name: str, listener_type: Any, address: Any, port: int, ctx: Any
    ):
        """A TCP server that consults the fault switch before the TLS handshake, then starts TLS.

        A region that is down (or throttling this connect) resets the connection at once, so a
        device sees its connect fail as it would against an unreachable endpoint, not a timeout.
        """
        del listener_type

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            faults = self.region.faults
            if faults.hits("outage") or faults.hits("throttle"):
                writer.transport.abort()
                return
            await self.region.delay()
            try:
                await writer.start_tls(ctx, ssl_handshake_timeout=10)
            except (OSError, ConnectionError, TimeoutError) as e:  # ssl.SSLError is an OSError
                CONNECTS.labels(region=self.region.region, outcome="tls_refused").inc()
                log.info("TLS handshake refused in %s: %s", self.region.region, e)
                writer.transport.abort()
                return
            await self.stream_connected(reader, writer, listener_name)

        return await asyncio.start_server(accept, address, port, reuse_address=True)

    async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: Any) -> bool:
        message = wait_deliver.result()
        if message is None or not message.topic:
            return await super()._handle_message_delivery(client_session, handler, wait_deliver)
        identity: Identity | None = client_session.attributes.get("iot")
        region = self.region.region
        if identity is None or not identity.may("iot:Publish", f"topic/{message.topic}"):
            PUBLISHES.labels(region=region, outcome="unauthorized").inc()
            return await self._disconnect(client_session, handler, "AUTHORIZATION_FAILURE")
        if self.region.faults.hits("throttle"):
            PUBLISHES.labels(region=region, outcome="throttled").inc()
            return await self._disconnect(client_session, handler, "THROTTLED")
        await self.region.delay()
        PUBLISHES.labels(region=region, outcome="accepted").inc()
        if message.topic.startswith("$aws/"):
            for topic, payload in device_topics.handle(
                self.region, identity, message.topic, bytes(message.data)
            ):
                await self.internal_message_broadcast(topic, json.dumps(payload).encode())
            return True
        self.region.data.publish(message.topic, bytes(message.data))  # where iot-data Publish keeps it
        return await super()._handle_message_delivery(client_session, handler, wait_deliver)

    async def _disconnect(self, client_session: Any, handler: Any, reason: str) -> bool:
        """Close the connection as IoT Core does (the message loop then ends it as a lost link)."""
        self.region.mark_drop(client_session.client_id, reason)
        if handler.writer is not None:
            await handler.writer.close()
        return True

    async def _handle_disconnect(self, client_session: Any, handler: Any, disconnect_waiter: Any) -> None:
        clean = isinstance(disconnect_waiter.result(), DisconnectPacket)
        client_session.attributes["clean_disconnect"] = clean
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)


class RegionBroker:
    """One region's broker: started on its own thread, reached from other threads by the methods below."""

    def __init__(
        self,
        region: str,
        faults: FaultSwitch,
        port: int = 0,
        host: str = "127.0.0.1",
        root: pki.LocalCA | None = None,
        events_queue: str = "iotfailover-registry-events",
    ):
        self.region, self.faults, self.host, self.port = region, faults, host, port
        self.root = root or pki.create_ca("Rehearsal IoT Root CA")
        self.events_queue = events_queue
        self.trust = TrustStore(self._registered)
        self.loop = asyncio.new_event_loop()
        self.live: dict[str, Live] = {}
        self.drop_reasons: dict[str, str] = {}  # client id -> why the broker is closing it
        self.broker: IotBroker | None = None
        self._jobs_dirty: set[str] = set()
        self._notified: dict[str, tuple] = {}  # thing -> what notify / notify-next last said

    # ---- the region's state (moto's in-process backends) --------------------------------------

    @property
    def iot(self) -> Any:
        return get_backend("iot")[DEFAULT_ACCOUNT_ID][self.region]

    @property
    def data(self) -> Any:
        return get_backend("iot-data")[DEFAULT_ACCOUNT_ID][self.region]

    def _registered(self) -> list[tuple[str, str]]:
        iot = self.iot
        for _ in range(3):  # HTTP threads may register meanwhile
            try:
                cas = [(c.certificate_id, c.certificate_pem) for c in list(iot.ca_certificates.values())]
                return cas + [(c.certificate_id, c.certificate_pem) for c in list(iot.certificates.values())]
            except RuntimeError:
                continue
        return []

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> int:
        """Start the broker thread; returns the port it listens on."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._start())
            except BaseException as e:  # reported to the caller below
                failure.append(e)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, name=f"mqtt-{self.region}", daemon=True).start()
        if not ready.wait(timeout) or failure:
            raise RuntimeError(f"the MQTT broker of {self.region} did not start: {failure or 'timeout'}")
        BROKERS[self.region] = self
        return self.port

    async def _start(self) -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "ssl": True}},
            "plugins": {"rehearsal.mqtt.auth.IotDevicePlugin": {"region": self.region}},
        }
        BROKERS[self.region] = self
        self.broker = IotBroker(self, config)
        await self.broker.start()
        self.port = self.broker._servers["default"].instance.sockets[0].getsockname()[1]

    def info(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "root_ca": self.root.cert_pem,
            "sessions": len(self.live),
        }

    # ---- thread-safe entry points ----------------------------------------------------------------

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the broker's loop (from any thread)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def publish(self, topic: str, payload: dict) -> None:
        """Deliver a message from the region itself (events, shadow and jobs notifications)."""

        def send() -> None:
            if self.broker is not None:
                asyncio.ensure_future(
                    self.broker.internal_message_broadcast(topic, json.dumps(payload).encode())
                )

        self.soon(send)

    def drop(self, match: Callable[[Identity], bool], reason: str) -> None:
        """Close every live session whose identity matches (a deactivated certificate, an outage)."""
        self.soon(self._drop, match, reason)

    def jobs_changed(self, thing: str) -> None:
        """A job execution of `thing` changed: notify and notify-next once the change settles."""
        self.soon(self._jobs_settled, thing)

    def reset(self) -> None:
        """The emulator forgot its state: every session goes with it."""
        self.drop(lambda _: True, "SERVER_INITIATED_DISCONNECT")
        self.soon(self._notified.clear)

    def on_fault(self, fault: Fault) -> None:
        if fault.mode == "outage":
            self.drop(lambda _: True, "SERVER_INITIATED_DISCONNECT")

    # ---- on the broker's loop ------------------------------------------------------------------

    async def delay(self) -> None:
        fault = self.faults.get()
        if fault.mode == "latency" and fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)

    def mark_drop(self, client_id: str, reason: str) -> None:
        self.drop_reasons[client_id] = reason
        DROPS.labels(region=self.region, reason=reason).inc()

    def _drop(self, match: Callable[[Identity], bool], reason: str) -> None:
        for client_id, live in list(self.live.items()):
            if match(live.identity):
                self.close(client_id, live, reason)

    def close(self, client_id: str, live: Live, reason: str) -> None:
        self.mark_drop(client_id, reason)
        writer = live.handler.writer
        if writer is not None:
            asyncio.ensure_future(writer.close())

    def connected(self, client_id: str, identity: Identity, handler: Any, address: str) -> None:
        """A device passed authentication: a second session with its client ID ends the first."""
        old = self.live.get(client_id)
        if old is not None and old.handler is not handler:
            self.close(client_id, old, "DUPLICATE_CLIENTID")
        self.drop_reasons.pop(client_id, None)
        self.live[client_id] = Live(identity, handler, time.time())
        self.publish(*presence.connected(self.iot, client_id, identity, address))

    def disconnected(self, client_id: str, handler: Any, clean: bool) -> None:
        live = self.live.get(client_id)
        if live is None or live.handler is not handler:
            return  # a session already replaced by a newer one with the same client ID
        del self.live[client_id]
        reason = self.drop_reasons.pop(
            client_id, "CLIENT_INITIATED_DISCONNECT" if clean else "CONNECTION_LOST"
        )
        self.publish(*presence.disconnected(self.iot, client_id, live.identity, reason))

    def _jobs_settled(self, thing: str) -> None:
        if thing in self._jobs_dirty:
            return
        self._jobs_dirty.add(thing)
        self.loop.call_soon(self._notify_jobs, thing)

    def _notify_jobs(self, thing: str) -> None:
        self._jobs_dirty.discard(thing)
        before = self._notified.get(thing)
        after, messages = device_topics.job_notifications(self.iot, thing, before)
        self._notified[thing] = after
        for topic, payload in messages:
            self.publish(topic, payload)
