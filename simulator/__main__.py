"""Run the simulated fleet until SIGTERM/SIGINT.

python -m simulator --config deploy/local/deployment.toml [--simulator-config PATH] [--devices N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from core import logs, metrics
from core.config import ConfigError, load_config
from simulator.config import load_simulator_config
from simulator.fleet import Fleet, load_manifest, status_path


async def run(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, need_ca=False)
    sim = load_simulator_config(args.simulator_config, cfg)
    specs = load_manifest(sim.manifest_path(cfg), args.devices if args.devices is not None else sim.devices)
    metrics.serve(cfg.local.simulator_metrics_port if args.metrics_port is None else args.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fleet = Fleet(cfg, sim, specs, status_file=status_path(cfg))
    await fleet.start()
    await stop.wait()
    logs.get("simulator").info("stopping fleet", devices=len(fleet.devices))
    await fleet.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--config", required=True, help="deployment config")
    parser.add_argument("--simulator-config", help="simulator TOML (default: simulator.toml beside --config)")
    parser.add_argument("--devices", type=int, help="run only the first N devices of the manifest")
    parser.add_argument(
        "--metrics-port", type=int, help="Prometheus port (default: local.simulator_metrics_port)"
    )
    args = parser.parse_args(argv)
    logs.configure()
    try:
        asyncio.run(run(args))
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
