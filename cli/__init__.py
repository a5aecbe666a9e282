"""The starter's command groups, one module each; every module has register(subparsers)."""

from __future__ import annotations

import importlib


class Exit:
    """The exit codes of every command, so scripts can tell what happened."""

    OK = 0
    FAILED = 1  # the command ran and found a problem or the work failed (drift, a failed drill)
    USAGE = 2  # a bad flag or argument (argparse's own code)
    CONFIG = 3  # the deployment config is missing or invalid
    REFUSED = 4  # the controller refused the request (a safety rule, nothing to approve)
    UNREACHABLE = 5  # Temporal, a workflow or a region could not be reached


class CliError(Exception):
    """A failure the operator can act on: printed without a traceback, exits with its code."""

    def __init__(self, message: str, code: int = Exit.FAILED):
        super().__init__(message)
        self.code = code


_NAMES = [
    "local",
    "deployment",
    "cutover",
    "drill",
    "health",
    "bootstrap",
    "shadows",
    "fleet",
    "replicate",
    "parity",
    "preflight",
    "demo",
]

COMMAND_MODULES = [importlib.import_module(f"cli.{n}") for n in _NAMES]
