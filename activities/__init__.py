"""Every side effect, one module per concern, all through core.aws's per-region client factory."""

from __future__ import annotations

from collections.abc import Callable

from activities.context import Deployments


def all_activities(deployments: Deployments) -> list[Callable]:
    """The activities the worker registers; each concern contributes its own."""
    found: list[Callable] = []
    for module in _MODULES:
        found += module.activities(deployments)
    return found


def _load() -> list:
    import importlib

    names = [
        # each concern adds its module here
        "jobs",
        "drill",
        "health",
        "bootstrap",
        "routing",
        "shadows",
        "certificates",
        "registry",
        "peers",
    ]
    return [importlib.import_module(f"activities.{n}") for n in names]


_MODULES = _load()
