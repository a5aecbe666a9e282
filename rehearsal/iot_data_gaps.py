"""The iot-data calls the controller relies on (shadows, publish), made to answer as AWS does.

Probed through boto3 against moto 5.2.5: ListNamedShadowsForThing listed deleted shadows and had no
timestamp; every update reset the metadata timestamp of every field (AWS keeps each field's last
update time); a conditional update (`version` in the payload) of a shadow that does not exist
answered 500; a shadow's state had no size limit (AWS: 8 KB, RequestEntityTooLargeException, the
shadow left as it was); Publish kept every payload forever. Fixed (the conditional update is a
ConflictException); publish keeps the last 10,000 messages. Named shadow update/get/delete and
`version` were right and are left alone.
"""

from __future__ import annotations

import copy
import json
import time
from collections import deque
from typing import Any

from moto.core.exceptions import JsonRESTError
from moto.iotdata.exceptions import ConflictException
from moto.iotdata.models import FakeShadow, IoTDataPlaneBackend
from moto.iotdata.responses import IoTDataPlaneResponse

from rehearsal.iot_gaps import page_of

PUBLISHED_KEPT = 10_000
SHADOW_STATE_BYTES = 8 * 1024  # AWS's limit on a shadow's desired and reported state


def _metadata(state: Any, previous: Any, update: Any, ts: int, fresh: Any) -> Any:
    """Shadow metadata: fields in `update` get `ts`, the others keep their previous timestamps."""
    if not isinstance(state, dict) or not isinstance(update, dict):
        return fresh(state, ts)
    out = {}
    for key, value in state.items():
        before = previous.get(key) if isinstance(previous, dict) else None
        if key in update or before is None:
            out[key] = _metadata(value, before, update.get(key, value), ts, fresh)
        else:
            out[key] = before
    return out


def _shadow_versions(original: Any) -> Any:
    def create_from_previous_version(
        cls: type, previous: FakeShadow | None, payload: dict | None
    ) -> FakeShadow:
        shadow = original(cls, previous, payload)
        state = (payload or {}).get("state")
        if previous is None or previous.deleted or not isinstance(state, dict):
            return shadow
        fresh = shadow._create_metadata_from_state
        for part in ("desired", "reported"):
            current = getattr(shadow, part)
            before = getattr(previous, f"metadata_{part}")
            meta = (
                _metadata(current, before, state.get(part) or {}, shadow.timestamp, fresh)
                if current
                else None
            )
            setattr(shadow, f"metadata_{part}", meta)
        return shadow

    return create_from_previous_version


def _conditional_update(original: Any) -> Any:
    def update_thing_shadow(
        self: IoTDataPlaneBackend, thing_name: str, payload: str, shadow_name: str | None
    ):
        shadow = self.iot_backend.describe_thing(thing_name).thing_shadows.get(shadow_name)
        try:
            version = json.loads(payload).get("version")
        except (ValueError, AttributeError):
            version = None  # moto answers the invalid payload
        if version is not None and (shadow is None or shadow.deleted):
            raise ConflictException("Version conflict")
        return original(self, thing_name, payload, shadow_name)

    return update_thing_shadow


class RequestEntityTooLarge(JsonRESTError):
    code = 413

    def __init__(self, message: str):
        super().__init__("RequestEntityTooLargeException", message)


def _shadow_size(original: Any) -> Any:
    def update_thing_shadow(
        self: IoTDataPlaneBackend, thing_name: str, payload: str, shadow_name: str | None
    ):
        shadows = self.iot_backend.describe_thing(thing_name).thing_shadows
        previous = copy.deepcopy(shadows.get(shadow_name))  # moto merges into the previous state in place
        shadow = original(self, thing_name, payload, shadow_name)
        state = json.dumps({"desired": shadow.desired, "reported": shadow.reported}, separators=(",", ":"))
        if len(state.encode()) > SHADOW_STATE_BYTES:
            if previous is None:
                shadows.pop(shadow_name, None)
            else:
                shadows[shadow_name] = previous
            raise RequestEntityTooLarge(
                f"The shadow state document exceeds {SHADOW_STATE_BYTES} bytes (got {len(state.encode())})"
            )
        return shadow

    return update_thing_shadow


def list_named_shadows_for_thing(self: IoTDataPlaneBackend, thing_name: str) -> list[str]:
    thing = self.iot_backend.describe_thing(thing_name)
    return [name for name, s in thing.thing_shadows.items() if name is not None and not s.deleted]


def list_named_shadows_response(self: IoTDataPlaneResponse) -> str:
    names = self.iotdata_backend.list_named_shadows_for_thing(self._get_param("thingName"))
    page, token = page_of(names, self._get_int_param("pageSize"), self._get_param("nextToken"))
    return json.dumps({"results": page, "nextToken": token, "timestamp": int(time.time())})


def publish(self: IoTDataPlaneBackend, topic: str, payload: bytes) -> None:
    if not isinstance(self.published_payloads, deque):
        self.published_payloads = deque(self.published_payloads, maxlen=PUBLISHED_KEPT)
    self.published_payloads.append((topic, payload))


def install(emulator: Any) -> None:
    """Patch moto's iot-data in this process (idempotent)."""
    del emulator
    if getattr(IoTDataPlaneBackend, "gaps_filled", False):
        return
    IoTDataPlaneBackend.gaps_filled = True
    FakeShadow.create_from_previous_version = classmethod(
        _shadow_versions(FakeShadow.create_from_previous_version.__func__)
    )
    IoTDataPlaneBackend.list_named_shadows_for_thing = list_named_shadows_for_thing
    IoTDataPlaneBackend.update_thing_shadow = _conditional_update(
        _shadow_size(IoTDataPlaneBackend.update_thing_shadow)
    )
    IoTDataPlaneBackend.publish = publish
    IoTDataPlaneResponse.list_named_shadows_for_thing = list_named_shadows_response
