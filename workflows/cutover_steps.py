"""Pure pieces of the cutover: its input, the wave plan and the job document devices receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config import CutoverPolicy
from core.models import CutoverMode


@dataclass
class CutoverInput:
    deployment: str
    cutover_id: str
    epoch: int
    source: str
    target: str
    mode: CutoverMode
    scope: str  # the thing group that moves (the fleet group for a whole-fleet cutover)
    bootstrap_scope: str  # "default" for the whole fleet, else "group:<scope>"
    regions: list[str]  # every region of the deployment
    policy: CutoverPolicy
    approval: str = "none"
    application: str = "app"
    active_active: bool = False
    dns: bool = False
    reason: str = ""
    requested_by: str = ""
    forced: bool = False
    automatic: bool = False
    health: dict[str, str] = field(default_factory=dict)


def wave_sizes(total: int, canary: int, growth: float, cap: int) -> list[int]:
    """Canary first, then waves growing by `growth` up to `cap`, covering `total` devices.

    A few extra waves are planned past `total` so devices added during the cutover are not missed;
    the wave loop stops at the end of the scope's listing.
    """
    sizes, covered, size = [], 0, max(1, canary)
    while covered < total:
        sizes.append(size)
        covered += size
        size = min(cap, max(size + 1, int(size * growth)))
    return [*sizes, cap, cap] if total else [max(1, canary)]


def bootstrap_order(regions: list[str], primary: str) -> list[str]:
    """The endpoint order devices get: the new primary first, then the others as configured."""
    return [primary, *[r for r in regions if r != primary]]


def job_document(inp: CutoverInput, epoch: int, target: str) -> dict[str, Any]:
    """The `migrate-region` job document of the device contract (endpoints come from bootstrap)."""
    return {
        "operation": "migrate-region",
        "epoch": epoch,
        "targetRegion": target,
        "regions": bootstrap_order(inp.regions, target),
        "cutoverId": inp.cutover_id,
    }
