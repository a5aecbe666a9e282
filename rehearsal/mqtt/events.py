"""Events a region publishes on `$aws/events/...`, delivered as deploy/aws's topic rules deliver them.

Each event goes to the broker's subscribers and, when its topic is one the region template routes
(`SELECT *, topic() AS topic FROM '$aws/events/certificates/registered/+'` and the registry events),
to the region's events queue when that queue exists: the message body is the event's JSON with the
topic added, exactly what replication/events.py parses.
"""

from __future__ import annotations

import json
import time
from typing import Any

from moto.backends import get_backend

from rehearsal.mqtt.brokers import BROKERS

ROUTED = ("$aws/events/certificates/registered/",)  # the routed topics the rehearsal region publishes


def _broker(iot: Any) -> Any:
    return BROKERS.get(iot.region_name)


def emit(iot: Any, topic: str, payload: dict) -> None:
    """Publish an event of the region; route it to the events queue as the topic rules would."""
    broker = _broker(iot)
    if broker is None:
        return
    broker.publish(topic, payload)
    if topic.startswith(ROUTED):
        sqs = get_backend("sqs")[iot.account_id][iot.region_name]
        if broker.events_queue in sqs.queues:
            sqs.send_message(broker.events_queue, json.dumps({**payload, "topic": topic}))


def certificate_registered(iot: Any, cert_id: str, ca_id: str) -> None:
    """The JITR event, as IoT Core publishes it when an unknown certificate first connects."""
    now = int(time.time() * 1000)
    emit(
        iot,
        f"$aws/events/certificates/registered/{ca_id}",
        {
            "certificateId": cert_id,
            "caCertificateId": ca_id,
            "timestamp": now,
            "certificateStatus": "PENDING_ACTIVATION",
            "awsAccountId": iot.account_id,
            "certificateRegistrationTimestamp": str(now),
        },
    )
