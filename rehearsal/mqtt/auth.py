"""Who may connect, and what a connection may do, as IoT Core decides it from the region's registry.

On CONNECT (the TLS chain already checked by tls.py): the certificate (ID = SHA-256 of its DER) must
be registered and ACTIVE in the region, and so must the CA it was registered with; a certificate
unknown there but signed by a CA registered with auto-registration on is registered
PENDING_ACTIVATION, the JITR event is published and the connection refused (just-in-time
registration); then the policies attached to the certificate must allow `iot:Connect` on
`client/<client id>`, with `${iot:Connection.Thing.*}` resolved only when the client ID is a thing
attached to the certificate. Anything else is CONNACK "not authorized". The policies are read once
per connection, as IoT Core caches them for a session.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from moto.core import DEFAULT_ACCOUNT_ID
from prometheus_client import Counter

from rehearsal.iot_gaps import issuing_ca
from rehearsal.jobs_model import LOCK
from rehearsal.mqtt import events, policy
from rehearsal.mqtt.brokers import BROKERS  # each broker registers itself before it starts

CONNECTS = Counter(
    "iotfailover_emulator_mqtt_connects_total",
    "MQTT connects to a rehearsal region's broker, by outcome (tls_refused: the chain failed the handshake)",
    ["region", "outcome"],
)


@dataclass
class Identity:
    """An authenticated connection: its thing, certificate and the policies it was granted."""

    region: str
    client_id: str
    thing: str | None
    cert_id: str
    cert_arn: str
    statements: list[dict] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)

    def arn(self, resource: str) -> str:
        return f"arn:aws:iot:{self.region}:{DEFAULT_ACCOUNT_ID}:{resource}"

    def may(self, action: str, resource: str) -> bool:
        return policy.allowed(self.statements, action, self.arn(resource), self.variables)


class Refused(Exception):
    """A CONNECT IoT Core would refuse; `outcome` is its metric label."""

    def __init__(self, outcome: str, detail: str):
        super().__init__(detail)
        self.outcome = outcome


def _variables(iot: Any, client_id: str, cert: Any) -> dict[str, str]:
    out = {"iot:ClientId": client_id, "iot:Certificate.Id": cert.certificate_id}
    thing = iot.things.get(f"arn:aws:iot:{iot.region_name}:{iot.account_id}:thing/{client_id}")
    attached = thing is not None and (cert.arn, client_id) in iot.principal_things
    out["iot:Connection.Thing.IsAttached"] = "true" if attached else "false"
    if attached:
        out["iot:Connection.Thing.ThingName"] = client_id
        if thing.thing_type is not None:
            out["iot:Connection.Thing.ThingTypeName"] = thing.thing_type.thing_type_name
        for key, value in thing.attributes.items():
            out[f"iot:Connection.Thing.Attributes[{key}]"] = str(value)
    return out


def _just_in_time(iot: Any, pem: str) -> None:
    """Register an unknown certificate signed by an auto-registering CA; always refuses the connect."""
    ca = issuing_ca(iot, pem, None)
    if ca is None or ca.status != "ACTIVE" or getattr(ca, "auto_registration_status", "") != "ENABLE":
        raise Refused("unknown_certificate", "certificate not registered in this region")
    with LOCK:
        cert = iot.register_certificate(pem, ca.certificate_pem, False, "PENDING_ACTIVATION")
    events.certificate_registered(iot, cert.certificate_id, ca.certificate_id)
    raise Refused("jitr", f"certificate {cert.certificate_id} registered just in time, PENDING_ACTIVATION")


def authenticate(iot: Any, client_id: str, der: bytes) -> Identity:
    """The identity of a CONNECT with this client ID and peer certificate, or Refused."""
    cert_id = hashlib.sha256(der).hexdigest()
    cert = iot.certificates.get(cert_id)
    if cert is None:
        pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
        _just_in_time(iot, pem)
    if cert.status != "ACTIVE":
        raise Refused("certificate_not_active", f"certificate {cert_id} is {cert.status}")
    if cert.ca_certificate_id:
        ca = iot.ca_certificates.get(cert.ca_certificate_id)
        if ca is None or ca.status != "ACTIVE":
            raise Refused("ca_not_active", f"the CA of certificate {cert_id} is not ACTIVE")
    statements = [
        s
        for (target, _), (_, pol) in list(iot.principal_policies.items())
        if target == cert.arn
        for s in policy.parse(pol.document)
    ]
    variables = _variables(iot, client_id, cert)
    thing = variables.get("iot:Connection.Thing.ThingName")
    identity = Identity(iot.region_name, client_id, thing, cert_id, cert.arn, statements, variables)
    if not identity.may("iot:Connect", f"client/{client_id}"):
        raise Refused("connect_not_allowed", f"no policy of {cert_id} allows iot:Connect as {client_id}")
    return identity


class IotDevicePlugin(BaseAuthPlugin, BaseTopicPlugin):
    """amqtt plugin: authentication, subscribe/receive authorization and presence for one region."""

    @dataclass
    class Config:
        region: str

    @property
    def broker(self) -> Any:
        return BROKERS[self.config.region]

    async def authenticate(self, *, session: Any) -> bool | None:
        region = self.config.region
        der = session.ssl_object.getpeercert(binary_form=True) if session.ssl_object else None
        try:
            if not der:
                raise Refused("no_certificate", "no client certificate")
            session.attributes["iot"] = authenticate(self.broker.iot, session.client_id or "", der)
        except Refused as e:
            CONNECTS.labels(region=region, outcome=e.outcome).inc()
            self.context.logger.info("refused %s: %s", session.client_id, e)
            return False
        CONNECTS.labels(region=region, outcome="accepted").inc()
        session.attributes["connected_at"] = time.time()
        return True

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        """Subscribe and receive; publishes are authorized by the broker (it closes the connection)."""
        identity: Identity | None = session.attributes.get("iot") if session else None
        if action == Action.PUBLISH:
            return True
        if identity is None or topic is None:
            return False
        if action == Action.SUBSCRIBE:
            return identity.may("iot:Subscribe", f"topicfilter/{topic}")
        return identity.may("iot:Receive", f"topic/{topic}")

    async def on_broker_client_connected(self, *, client_id: str, client_session: Any) -> None:
        identity = client_session.attributes.get("iot")
        handler = self.broker.broker.sessions.get(client_id, (None, None))[1]
        if identity is not None and handler is not None:
            client_session.attributes["handler"] = handler
            self.broker.connected(client_id, identity, handler, client_session.remote_address or "")

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Any) -> None:
        handler = client_session.attributes.get("handler")
        clean = bool(client_session.attributes.pop("clean_disconnect", False))
        self.broker.disconnected(client_id, handler, clean)
