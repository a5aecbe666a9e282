"""The per-region fault switch: outage, added latency or throttling, flipped by drills and tests.

The switch lives in the emulator process (`FaultSwitch`); the client side (`set_fault`, `get_fault`,
`reset_emulator`...) and the `Fault` it serves are core.fault_switch, re-exported here for
`starter.py local fault` and the tests.
"""

from __future__ import annotations

import threading
from dataclasses import asdict

from core.fault_switch import MODES, Fault, FaultMode, get_fault, reset_emulator, set_fault

__all__ = [
    "MODES",
    "Fault",
    "FaultMode",
    "FaultSwitch",
    "get_fault",
    "reset_emulator",
    "set_fault",
]


class FaultSwitch:
    def __init__(self) -> None:
        self._fault = Fault()
        self._lock = threading.Lock()
        self._seen = 0  # requests the current fault has been asked about

    def set(self, fault: Fault) -> None:
        fault.validate()
        if fault.mode == "latency" and not fault.latency_ms:
            fault.latency_ms = 1500
        with self._lock:
            self._fault, self._seen = fault, 0

    def get(self) -> Fault:
        with self._lock:
            return Fault(**asdict(self._fault))

    def hits(self, mode: str) -> bool:
        """Whether this request is affected by the current fault of kind `mode`.

        `rate` is the share affected, spread evenly (every 1/rate-th request), not drawn at random:
        a test of a 3% throttle then always sees its throttles.
        """
        with self._lock:
            if self._fault.mode != mode:
                return False
            self._seen += 1
            rate = self._fault.rate
            return int(self._seen * rate) > int((self._seen - 1) * rate)
