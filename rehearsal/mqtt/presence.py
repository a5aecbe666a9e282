"""Lifecycle events and connectivity: what IoT Core publishes when a device connects or disconnects,
and what fleet indexing answers (`connectivity.connected`) through SearchIndex.

The connectivity of each thing lives on moto's IoT backend (`backend.connectivity`), so a reset of
the emulator forgets it with everything else; moto's SearchIndex answered every thing as connected,
it now answers the broker's truth and filters on `connectivity.connected:true|false`.
"""

from __future__ import annotations

import time
from typing import Any

from moto.iot.models import FakeThing

_VERSIONS: dict[str, int] = {}  # client id -> session version number (counts connects)


def _state(iot: Any) -> dict[str, dict]:
    if not hasattr(iot, "connectivity"):
        iot.connectivity = {}
    return iot.connectivity


def connected(iot: Any, client_id: str, identity: Any, address: str) -> tuple[str, dict]:
    now = int(time.time() * 1000)
    _VERSIONS[client_id] = _VERSIONS.get(client_id, 0) + 1
    if identity.thing:
        _state(iot)[identity.thing] = {"connected": True, "timestamp": now}
    return f"$aws/events/presence/connected/{client_id}", {
        "clientId": client_id,
        "timestamp": now,
        "eventType": "connected",
        "sessionIdentifier": f"{client_id}-{_VERSIONS[client_id]}",
        "principalIdentifier": identity.cert_id,
        "ipAddress": address,
        "versionNumber": _VERSIONS[client_id],
    }


def disconnected(iot: Any, client_id: str, identity: Any, reason: str) -> tuple[str, dict]:
    now = int(time.time() * 1000)
    if identity.thing:
        _state(iot)[identity.thing] = {"connected": False, "timestamp": now, "disconnectReason": reason}
    return f"$aws/events/presence/disconnected/{client_id}", {
        "clientId": client_id,
        "timestamp": now,
        "eventType": "disconnected",
        "sessionIdentifier": f"{client_id}-{_VERSIONS.get(client_id, 0)}",
        "principalIdentifier": identity.cert_id,
        "clientInitiatedDisconnect": reason == "CLIENT_INITIATED_DISCONNECT",
        "disconnectReason": reason,
        "versionNumber": _VERSIONS.get(client_id, 0),
    }


def connectivity(thing: FakeThing) -> dict:
    """A thing's fleet-indexing connectivity: never connected is `{"connected": false}`."""
    from moto.iot.models import iot_backends

    state = _state(iot_backends[thing.account_id][thing.region_name]).get(thing.thing_name)
    return dict(state) if state else {"connected": False}


def _to_dict(original: Any) -> Any:
    def to_dict(self: FakeThing, *args: Any, **kwargs: Any) -> dict:
        out = original(self, *args, **kwargs)
        if "connectivity" in out:
            out["connectivity"] = connectivity(self)
        return out

    return to_dict


def _single_query(original: Any) -> Any:
    def matches(self: FakeThing, query: str) -> bool:
        if query.startswith("connectivity.connected:"):
            wanted = query.split(":", 1)[1].lower() == "true"
            return connectivity(self)["connected"] is wanted
        return original(self, query)

    return matches


def install() -> None:
    """Patch moto's things to answer the broker's connectivity (idempotent)."""
    if getattr(FakeThing, "presence_installed", False):
        return
    FakeThing.presence_installed = True
    FakeThing.to_dict = _to_dict(FakeThing.to_dict)
    FakeThing._matches_single_query = _single_query(FakeThing._matches_single_query)
