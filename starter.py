"""The operator CLI: the local stack, the fleet, the deployment, cutovers and drills.

python starter.py --help            (installed: iotfailover --help)
python starter.py <command> --help
--config PATH goes anywhere on the line; without it, $IOTFAILOVER_CONFIG, then deploy/local/deployment.toml.
Exit codes: 0 ok, 1 failed, 2 usage, 3 config, 4 refused, 5 unreachable.
"""

from __future__ import annotations

import argparse
import os
import sys

from cli import COMMAND_MODULES, CliError, Exit
from core import logs
from core.config import CONFIG_ENV, DEFAULT_CONFIG, ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="starter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG),
        help=f"deployment config, anywhere on the line (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def config_first(argv: list[str]) -> list[str]:
    """`--config PATH` (or `--config=PATH`) moved before the command, wherever it was written."""
    rest, config = [], []
    it = iter(argv)
    for arg in it:
        if arg == "--":
            rest += [arg, *it]
        elif arg == "--config":
            config = [arg, next(it, "")]
        elif arg.startswith("--config="):
            config = [arg]
        else:
            rest.append(arg)
    return config + rest


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(config_first(sys.argv[1:] if argv is None else argv))
    logs.configure(json=False, level=os.environ.get("IOTFAILOVER_LOG_LEVEL", "WARNING"))
    try:
        return int(args.handler(args) or 0)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return Exit.CONFIG
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


def run() -> None:
    """The `iotfailover` console script and `python starter.py`."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # temporalio/sdk-python#300: avoid an abort at interpreter exit


if __name__ == "__main__":
    run()
