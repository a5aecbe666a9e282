"""The operator CLI: the local stack, the fleet, the deployment, cutovers and drills.

python starter.py --help
python starter.py [--config PATH] <command> --help
"""

from __future__ import annotations

import argparse
import os
import sys

from cli import COMMAND_MODULES, CliError
from core import logs
from core.config import DEFAULT_CONFIG, ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="starter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="deployment config (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(json=False, level=os.environ.get("IOTFAILOVER_LOG_LEVEL", "WARNING"))
    try:
        return int(args.handler(args) or 0)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # temporalio/sdk-python#300: avoid an abort at interpreter exit
