"""The recovery point (RPO) of losing a region, device by device, from their shadows (pure, no I/O).

A region lost at time T loses, for each device, the shadow writes (leaves) its source copy holds
and the standby's copy lacks: source leaves newer than the standby's (or missing there), per the
shadow metadata timestamps and the leaf-by-leaf rule of activities/shadow_merge.py. The device's
recovery point is how far back that loss reaches: T minus the timestamp of its oldest lost write,
0 when the standby had everything. The scope's recovery point is the distribution of that span over
every device of the scope (p50, p95, max), with the count of devices that lost anything.

Spans are whole seconds (shadow timestamps are), rounded down; a span of 1000 s or more is kept to 3
significant digits (under 1%), so a heartbeated tally stays small for any fleet size. The maximum
is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from activities.shadow_merge import StaleLeaf

SAMPLE = 20


def lost_writes(stale: list[StaleLeaf], as_of: float) -> list[StaleLeaf]:
    """The leaves a merge found stale in the standby (shadow_merge.merge_shadow) that the source had by
    `as_of`: what a loss of the source at `as_of` would lose. Later writes are after the loss."""
    return [s for s in stale if s.source_timestamp is not None and s.source_timestamp <= as_of]


def bucket(seconds: float) -> int:
    """Whole seconds, rounded down (never above the exact span); 3 significant digits from 1000 s on."""
    whole = max(0, int(seconds))
    step = 10 ** max(0, len(str(whole)) - 3)
    return whole - whole % step


def histogram_percentile(counts: dict[int, int], q: float) -> float | None:
    """Nearest-rank percentile (the ceil(q*n)-th smallest value) of a {value: count} histogram."""
    n = sum(counts.values())
    if not n:
        return None
    rank = max(1, math.ceil(q * n - 1e-9))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return float(value)
    return float(max(counts))


@dataclass
class DeviceLoss:
    """One device: its oldest lost write (None: nothing lost), how many leaves, and a line for people."""

    oldest: float | None = None
    leaves: int = 0
    detail: str = ""  # "thing[#shadow]: N leaves lost (first path)" or "thing: cannot compare: ..."
    unreadable: bool = False


@dataclass
class RecoveryTally:
    """The scope so far: a histogram of device spans, committed page by page (heartbeat details)."""

    as_of: float
    spans: dict[int, int] = field(default_factory=dict)
    max_seconds: float = 0.0
    devices_lost: int = 0
    leaves_lost: int = 0
    unreadable: int = 0
    sample: list[str] = field(default_factory=list)

    def add(self, loss: DeviceLoss) -> None:
        if loss.unreadable:
            self.unreadable += 1
        else:
            span = 0.0 if loss.oldest is None else max(0.0, self.as_of - loss.oldest)
            key = bucket(span)
            self.spans[key] = self.spans.get(key, 0) + 1
            self.max_seconds = max(self.max_seconds, span)
            if loss.oldest is not None:
                self.devices_lost += 1
                self.leaves_lost += loss.leaves
        if loss.detail and len(self.sample) < SAMPLE:
            self.sample.append(loss.detail)


@dataclass
class RecoveryPoint:
    """What losing `source` at `as_of` would have cost the scope's devices (activity result)."""

    source: str
    standby: str
    scope: str
    as_of: datetime
    devices: int = 0  # devices of the scope measured
    devices_lost: int = 0  # devices whose standby lacked at least one source write
    leaves_lost: int = 0
    p50_seconds: float | None = None  # over every device measured, 0 for those that lost nothing
    p95_seconds: float | None = None
    max_seconds: float | None = None
    unreadable: int = 0  # devices that could not be compared (reasons in the sample)
    sample: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, tally: RecoveryTally, source: str, standby: str, scope: str) -> RecoveryPoint:
        devices = sum(tally.spans.values())
        return cls(
            source=source,
            standby=standby,
            scope=scope,
            as_of=datetime.fromtimestamp(tally.as_of, UTC),
            devices=devices,
            devices_lost=tally.devices_lost,
            leaves_lost=tally.leaves_lost,
            p50_seconds=histogram_percentile(tally.spans, 0.50),
            p95_seconds=histogram_percentile(tally.spans, 0.95),
            max_seconds=round(tally.max_seconds, 3) if devices else None,
            unreadable=tally.unreadable,
            sample=list(tally.sample),
        )
