"""`python -m chaos --runs N --seed S`: N runs with seeds S, S+1, ...; exit 0 only when every run held.

Each run's report is `<out>/<seed>/report.json` (and the raw samples in record.json); one line per
run is printed, and the last line says how many runs held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
from pathlib import Path

from chaos.run import RunOptions, run_once
from chaos.stack import Infra
from core import logs


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=None, help="first run's seed (default: from the clock)")
    p.add_argument("--fault-seconds", type=float, default=60.0, help="length of each run's fault phase")
    p.add_argument("--settle-seconds", type=float, default=180.0, help="bound of the settle phase")
    p.add_argument("--devices", type=int, default=12)
    p.add_argument(
        "--planned-only",
        action="store_true",
        help="the operator asks only for planned cutovers (automatic failover still runs emergency ones)",
    )
    p.add_argument("--out", type=Path, default=Path(".local/chaos"))
    return p.parse_args(argv)


def line(report: dict) -> str:
    head = f"seed {report['seed']}: {report['verdict']} in {report['seconds']}s"
    v = report.get("first_violation")
    return head + (f" — {v['invariant']}: {v['evidence'][:300]}" if v else "")


async def campaign(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    print(f"chaos: {args.runs} run(s) from seed {seed}; reports in {out}", flush=True)
    infra = Infra(out)
    held = 0
    try:
        await infra.start()
        for i in range(args.runs):
            opts = RunOptions(
                seed + i,
                args.fault_seconds,
                args.settle_seconds,
                args.devices,
                emergency=not args.planned_only,
            )
            folder = out / str(opts.seed)
            folder.mkdir(parents=True, exist_ok=True)
            try:
                report = await run_once(infra, opts, folder)
            except Exception as e:  # the run could not be played to its end: not a pass
                report = {"seed": opts.seed, "verdict": "error", "seconds": 0, "first_violation": {
                    "invariant": "run_completes", "evidence": f"{type(e).__name__}: {e}"}}  # fmt: skip
                (folder / "report.json").write_text(
                    json.dumps({**report, "traceback": traceback.format_exc()})
                )
            held += report["verdict"] == "held"
            print(line(report), flush=True)
    finally:
        await infra.stop()
    print(f"{held}/{args.runs} runs held", flush=True)
    return 0 if held == args.runs else 1


def main() -> None:
    logs.configure(level=os.environ.get("IOTFAILOVER_LOG_LEVEL", "WARNING"))
    code = asyncio.run(campaign(parse()))
    sys.stdout.flush()
    os._exit(code)  # temporalio can abort at interpreter exit (sdk-python issue 300): keep the code true


if __name__ == "__main__":
    main()
