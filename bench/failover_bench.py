"""Time to detect an outage and time to recover, as multiples of the health interval.

Runs outage drills on the local stack (as `make demo` leaves it: stack up, fleet provisioned and
running, deployment started) and prints, per run and on average:
  detection = outage to the automatic failover's start, / health interval
  recovery  = outage to 95% of devices confirmed in the target, / health interval
The floor for detection is `unhealthy_after` intervals (hysteresis); device-side failover can make
recovery shorter than detection, since devices move before the controller decides.

    python -m bench failover            # 2 drills
    BENCH_FAILOVER_RUNS=5 python -m bench failover
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics

from cli.common import client_for
from cli.drill import run_drill
from core.config import DEFAULT_CONFIG, load_config


async def _run(runs: int) -> None:
    cfg = load_config(os.environ.get("IOTFAILOVER_CONFIG", DEFAULT_CONFIG))
    client = await client_for(cfg)
    interval = cfg.health.interval_seconds
    detect, recover = [], []
    for i in range(runs):
        args = argparse.Namespace(kind="outage", scope=None, percent=None, wait=True)
        report = await run_drill(client, cfg, args)
        if report.detection_seconds is None or report.recovery_95_seconds is None:
            print(f"run {i + 1}: incomplete ({'; '.join(report.reasons)})")
            continue
        detect.append(report.detection_seconds / interval)
        recover.append(report.recovery_95_seconds / interval)
        print(
            f"run {i + 1}: detection {detect[-1]:.2f} intervals, recovery to 95% {recover[-1]:.2f} intervals "
            f"({report.moved}/{report.devices} devices)"
        )
    if detect:
        print(
            f"mean over {len(detect)} runs (interval {interval:g}s, unhealthy_after "
            f"{cfg.health.unhealthy_after}): detection {statistics.mean(detect):.2f} intervals, "
            f"recovery to 95% {statistics.mean(recover):.2f} intervals"
        )


def main() -> None:
    asyncio.run(_run(int(os.environ.get("BENCH_FAILOVER_RUNS", "2"))))
