"""Each region's MQTT broker in this process, by region: amqtt's plugin and the moto hooks find theirs here.

A module of its own so that they need not import broker.py, which imports them.
"""

from __future__ import annotations

from typing import Any

BROKERS: dict[str, Any] = {}  # region -> its broker.RegionBroker, registered before it starts
