"""What registry, shadow and job changes made through any API do to the region's MQTT side.

Patched into moto's backends in the emulator process (only there), like iot_gaps.py:
- a certificate deactivated, revoked or deleted, a CA deactivated, a thing detached from its
  certificate or deleted: the live sessions that relied on it are closed at once;
- every shadow update and delete publishes `/update/accepted` (or `/delete/accepted`),
  `/update/documents` and `/update/delta`, whether it came over MQTT or HTTP;
- a change to a thing's job executions queues its `jobs/notify` and `jobs/notify-next`.
The broker methods called here only schedule work on the broker's loop: they never block a request.
"""

from __future__ import annotations

import json
import time
from typing import Any

from moto.iot.models import IoTBackend
from moto.iotdata.models import IoTDataPlaneBackend

from rehearsal import jobs_model
from rehearsal.mqtt.brokers import BROKERS


def _broker(region: str) -> Any:
    return BROKERS.get(region)


def _drop(region: str, match: Any, reason: str) -> None:
    if (broker := _broker(region)) is not None:
        broker.drop(match, reason)


def _update_certificate(original: Any) -> Any:
    def update_certificate(self: IoTBackend, certificate_id: str, new_status: str) -> None:
        original(self, certificate_id, new_status)
        if new_status != "ACTIVE":
            _drop(self.region_name, lambda i: i.cert_id == certificate_id, "AUTH_ERROR")

    return update_certificate


def _delete_certificate(original: Any) -> Any:
    def delete_certificate(self: IoTBackend, certificate_id: str, force_delete: bool) -> None:
        original(self, certificate_id, force_delete)
        _drop(self.region_name, lambda i: i.cert_id == certificate_id, "AUTH_ERROR")

    return delete_certificate


def _update_ca_certificate(original: Any) -> Any:
    def update_ca_certificate(self: IoTBackend, certificate_id: str, new_status: Any, config: Any) -> None:
        original(self, certificate_id, new_status, config)
        if new_status not in (None, "ACTIVE"):
            signed = {
                c.certificate_id for c in self.certificates.values() if c.ca_certificate_id == certificate_id
            }
            _drop(self.region_name, lambda i: i.cert_id in signed, "AUTH_ERROR")

    return update_ca_certificate


def _detach_thing_principal(original: Any) -> Any:
    def detach_thing_principal(self: IoTBackend, thing_name: str, principal_arn: str) -> None:
        original(self, thing_name, principal_arn)
        _drop(self.region_name, lambda i: i.cert_arn == principal_arn and i.thing == thing_name, "AUTH_ERROR")

    return detach_thing_principal


def _delete_thing(original: Any) -> Any:
    def delete_thing(self: IoTBackend, thing_name: str) -> None:
        original(self, thing_name)
        _drop(self.region_name, lambda i: i.thing == thing_name, "AUTH_ERROR")

    return delete_thing


def _prefix(thing: str, shadow: str | None) -> str:
    return f"$aws/things/{thing}/shadow" + (f"/name/{shadow}" if shadow else "")


def _token(payload: Any) -> dict:
    try:
        token = json.loads(payload).get("clientToken")
    except (ValueError, AttributeError):
        return {}
    return {"clientToken": token} if isinstance(token, str) else {}


def _update_shadow(original: Any) -> Any:
    def update_thing_shadow(
        self: IoTDataPlaneBackend, thing_name: str, payload: str, shadow_name: str | None
    ):
        previous = self.iot_backend.describe_thing(thing_name).thing_shadows.get(shadow_name)
        shadow = original(self, thing_name, payload, shadow_name)
        if (broker := _broker(self.region_name)) is None:
            return shadow
        base, now = _prefix(thing_name, shadow_name), int(time.time())
        broker.publish(f"{base}/update/accepted", {**shadow.to_response_dict(), **_token(payload)})
        before = (
            previous.to_dict(include_delta=False) if previous is not None and not previous.deleted else None
        )
        current = shadow.to_dict(include_delta=False)
        broker.publish(f"{base}/update/documents", {"previous": before, "current": current, "timestamp": now})
        delta = shadow.parse_payload(shadow.desired, shadow.reported)
        desired_changed = isinstance((json.loads(payload).get("state") or {}).get("desired"), dict)
        if delta and desired_changed:
            note = {"version": shadow.version, "timestamp": now, "state": delta, **_token(payload)}
            broker.publish(f"{base}/update/delta", note)
        return shadow

    return update_thing_shadow


def _delete_shadow(original: Any) -> Any:
    def delete_thing_shadow(self: IoTDataPlaneBackend, thing_name: str, shadow_name: str | None):
        shadow = original(self, thing_name, shadow_name)
        if (broker := _broker(self.region_name)) is not None:
            note = {"version": shadow.version, "timestamp": int(time.time())}
            broker.publish(f"{_prefix(thing_name, shadow_name)}/delete/accepted", note)
        return shadow

    return delete_thing_shadow


def _jobs_changed(account: str, region: str, thing: str) -> None:
    del account
    if (broker := _broker(region)) is not None:
        broker.jobs_changed(thing)


def install() -> None:
    """Patch moto in this process (idempotent); call after iot_gaps and iot_jobs are installed."""
    if getattr(IoTBackend, "mqtt_hooks", False):
        return
    IoTBackend.mqtt_hooks = True
    for name, wrap in {
        "update_certificate": _update_certificate,
        "delete_certificate": _delete_certificate,
        "update_ca_certificate": _update_ca_certificate,
        "detach_thing_principal": _detach_thing_principal,
        "delete_thing": _delete_thing,
    }.items():
        setattr(IoTBackend, name, wrap(getattr(IoTBackend, name)))
    IoTDataPlaneBackend.update_thing_shadow = _update_shadow(IoTDataPlaneBackend.update_thing_shadow)
    IoTDataPlaneBackend.delete_thing_shadow = _delete_shadow(IoTDataPlaneBackend.delete_thing_shadow)
    jobs_model.WATCHERS.append(_jobs_changed)
