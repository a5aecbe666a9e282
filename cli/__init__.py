"""The starter's command groups, one module each; every module has register(subparsers)."""

from __future__ import annotations

import importlib


class CliError(Exception):
    """A failure the operator can act on: printed without a traceback, exits non-zero."""

    def __init__(self, message: str, code: int = 1):
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
