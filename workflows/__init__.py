"""Orchestration only: deterministic workflows, no I/O, no clocks but workflow.now()."""

from __future__ import annotations


def all_workflows() -> list[type]:
    """The workflow classes the worker registers; each workflow module adds itself here."""
    import importlib

    names: list[tuple[str, str]] = [
        # (module, class)
        ("deployment", "DeploymentWorkflow"),
        ("cutover", "CutoverWorkflow"),
        ("drill", "DrillWorkflow"),
        ("health", "RegionHealthWorkflow"),
        ("shadow_sync", "ShadowSyncWorkflow"),
        ("replication", "RegistryReplicationWorkflow"),
    ]
    return [getattr(importlib.import_module(f"workflows.{m}"), c) for m, c in names]
