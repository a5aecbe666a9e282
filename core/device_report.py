"""A device's own report of where it is connected: the one reader of `reported.connectivity`.

Verification (activities/jobs.py), drill arrival times (activities/drill.py) and the heartbeats
probe (activities/health.py) all read it here, with one rule for its times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.metrics import BAD_INPUT

# A time above this is in epoch milliseconds: as seconds it would be the year 5138, as milliseconds
# it is 1973, before any device reported. Devices report seconds (simulator/device.py).
MILLISECONDS_ABOVE = 1e11


def seconds(value: Any) -> float | None:
    """A reported time as epoch seconds: from epoch seconds, epoch milliseconds or ISO 8601."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value / 1000 if value > MILLISECONDS_ABOVE else float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class DeviceReport:
    """A device's own report of where it is connected (device contract: `reported.connectivity`)."""

    region: str | None = None
    epoch: int = -1
    since: Any = None  # when the device connected there, as it wrote it (see `seconds`)
    reported_at: float = 0.0  # AWS's newest metadata timestamp of the report: when the device last spoke

    @classmethod
    def parse(cls, payload: bytes | str) -> DeviceReport:
        """The report in a shadow document; an unreadable one is counted and confirms nothing."""
        try:
            doc = json.loads(payload)
            conn = doc.get("state", {}).get("reported", {}).get("connectivity") or {}
            meta = doc.get("metadata", {}).get("reported", {}).get("connectivity") or {}
            if conn.get("region") is None:
                return cls()  # no report yet: nothing wrong
            region, epoch, reported_at = conn["region"], int(conn.get("epoch", -1)), _newest(meta)
            # 1e11 s is the year 5138; the comparisons also refuse inf and NaN
            sane = (
                isinstance(region, str) and bool(region) and -1 <= epoch < 2**63 and 0 <= reported_at < 1e11
            )
        except (ValueError, TypeError, AttributeError, OverflowError, RecursionError):  # e.g. epoch 1e400
            sane = False
        if not sane:
            BAD_INPUT.labels(source="device_report", reason="unreadable").inc()
            return cls()
        return cls(region, epoch, conn.get("since"), reported_at)

    @property
    def since_seconds(self) -> float | None:
        return seconds(self.since)

    @property
    def last_heard(self) -> float | None:
        """The latest of when it connected and when it last wrote its report (epoch seconds)."""
        stamps = [t for t in (self.reported_at or None, self.since_seconds) if t is not None]
        return max(stamps) if stamps else None

    def confirms(self, region: str, epoch: int, fresh_since: float | None = None) -> bool:
        """In `region` under at least `epoch`, or (emergency) heard from there since `fresh_since`.

        Devices that fail over on their own before the flip keep their older epoch: in an
        emergency what proves them served is a live report from the target.
        """
        if self.region != region:
            return False
        return self.epoch >= epoch or (fresh_since is not None and self.reported_at >= fresh_since)


def _newest(meta: Any) -> float:
    if isinstance(meta, dict):
        if isinstance(meta.get("timestamp"), int | float):
            return float(meta["timestamp"])
        return max((_newest(v) for v in meta.values()), default=0.0)
    return 0.0
