"""A run's fault schedule, drawn from a seed: the same seed always gives the same steps.

Timed faults (outage, latency, throttle, a stopped worker) come as two steps, the fault and its
end, so the printed schedule says exactly what was on when; one region holds one fault at a time.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

EAST, WEST = "us-east-1", "us-west-2"
REGIONS = (EAST, WEST)


@dataclass
class Step:
    at: float  # seconds after the fault phase starts
    action: str
    args: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in sorted(self.args.items()))
        return f"t+{self.at:5.1f}s {self.action} {args}".rstrip()


def draw(
    seed: int, seconds: float = 60.0, regions: tuple[str, ...] = REGIONS, emergency: bool = True
) -> list[Step]:
    """About one step every 2-6 s over `seconds`; every timed fault ends before `seconds`.

    `emergency=False` asks only for planned cutovers (automatic failover still starts emergency
    ones), drawing the same random numbers, so the rest of a seed's schedule stays the same."""
    rng = random.Random(seed)
    steps: list[Step] = []
    busy = dict.fromkeys(regions, 0.0)  # a region's fault switch is free again at this time
    worker_free = 0.0
    t = rng.uniform(0.5, 2.0)
    while t < seconds - 2:
        kind = rng.choices(
            ["cutover", "concurrent", "control", "outage", "slow", "worker"], weights=[5, 2, 5, 2, 3, 1]
        )[0]
        left = seconds - 1 - t
        if kind == "cutover":
            steps.append(Step(t, "cutover", _cutover_args(rng, regions, emergency)))
        elif kind == "concurrent":
            steps.append(
                Step(
                    t, "concurrent", {"requests": [_cutover_args(rng, regions, emergency) for _ in range(3)]}
                )
            )
        elif kind == "control":
            steps.append(Step(t, rng.choice(["approve", "approve", "pause", "resume", "abort"])))
        elif kind in ("outage", "slow"):
            region = rng.choice(regions)
            if busy[region] <= t and left > 4:
                end = t + rng.uniform(4, min(15, left))
                if kind == "outage":
                    args = {"region": region, "tell_health": rng.random() < 0.7}
                    steps.append(Step(t, "outage", args))
                elif rng.random() < 0.5:
                    steps.append(Step(t, "latency", {"region": region, "ms": rng.choice([300, 800, 1500])}))
                else:
                    rate = rng.choice([0.2, 0.5, 0.9])
                    steps.append(Step(t, "throttle", {"region": region, "rate": rate}))
                steps.append(Step(end, "recover", {"region": region, "was": steps[-1].action}))
                busy[region] = end
        elif kind == "worker" and worker_free <= t and left > 3:
            end = t + rng.uniform(2, min(8, left))
            steps += [Step(t, "stop_worker"), Step(end, "start_worker")]
            worker_free = end
        t += rng.uniform(2, 6)
    return sorted(steps, key=lambda s: s.at)


def _cutover_args(rng: random.Random, regions: tuple[str, ...], emergency: bool) -> dict[str, Any]:
    target = "other" if rng.random() < 0.8 else rng.choice(regions)  # "other": not the active one
    mode = rng.choice(["planned", "planned", "emergency"])
    return {
        "target": target,
        "mode": mode if emergency else "planned",
        "approval": rng.choice(["none", "none", "canary", "every-wave"]),
    }


def as_json(steps: list[Step]) -> list[dict[str, Any]]:
    return [asdict(s) for s in steps]
