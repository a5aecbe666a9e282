"""The client side of the local emulator's per-region fault switch (`/_emulator/...` on its endpoint).

In core/ so that the drill activities can flip a region's switch without importing rehearsal/ (the
emulator itself); the switch is rehearsal.faults.FaultSwitch, serving the same `Fault` shape.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from typing import Literal

FaultMode = Literal["clear", "outage", "latency", "throttle"]
MODES: tuple[str, ...] = ("clear", "outage", "latency", "throttle")


@dataclass
class Fault:
    mode: FaultMode = "clear"
    latency_ms: int = 0  # for "latency"
    rate: float = 1.0  # share of requests affected, for "throttle" and "outage"

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; use one of {', '.join(MODES)}")
        if not 0 <= self.rate <= 1:
            raise ValueError("rate is a share between 0 and 1")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")


def _control(endpoint_url: str, path: str, body: dict | None = None, timeout: float = 5) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        endpoint_url.rstrip("/") + path,
        data=data,
        method="POST" if data else "GET",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (local emulator only)
        return json.loads(resp.read() or b"{}")


def set_fault(endpoint_url: str, mode: str, latency_ms: int = 0, rate: float = 1.0) -> dict:
    Fault(mode=mode, latency_ms=latency_ms, rate=rate).validate()  # type: ignore[arg-type]
    return _control(endpoint_url, "/_emulator/fault", {"mode": mode, "latency_ms": latency_ms, "rate": rate})


def get_fault(endpoint_url: str) -> dict:
    return _control(endpoint_url, "/_emulator/health")["fault"]


def reset_emulator(endpoint_url: str) -> None:
    """Forget every resource in the emulator (tests call this between cases)."""
    _control(endpoint_url, "/_emulator/reset", {})
