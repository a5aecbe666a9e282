"""Pure pieces of the cutover: its input, the wave plan and the job document devices receive."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from core.config import CutoverPolicy, Quotas
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
    known_devices: int = 0  # the scope's size as last counted in its home (an emergency cannot count)
    quotas: Quotas = field(default_factory=Quotas)  # what the plan's wave times are computed from


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


JOB_ID_MAX = 64  # AWS IoT job IDs: 1-64 of [a-zA-Z0-9_-]


def job_id(deployment: str, epoch: int, wave: str) -> str:
    """`<deployment>-<epoch>-<wave>`, deterministic so a retried activity finds its job. A deployment
    name too long for the job ID limit is cut and followed by a hash of the whole name, so two long
    names that share a prefix still get distinct IDs."""
    full = f"{deployment}-{epoch}-{wave}"
    if len(full) <= JOB_ID_MAX:
        return full
    tail, digest = f"-{epoch}-{wave}", f"{zlib.crc32(deployment.encode()):08x}"
    return f"{deployment[: JOB_ID_MAX - len(tail) - len(digest) - 1]}-{digest}{tail}"


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
