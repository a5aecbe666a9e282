"""The IDs of the controller's long-lived workflows, in one place: the worker starts them under these
names, the CLI, the activities and the other workflows find them by the same names.
"""

from __future__ import annotations


def deployment_id(deployment: str) -> str:
    return f"deployment-{deployment}"


def replication_id(deployment: str) -> str:
    return f"replication-{deployment}"


def health_id(deployment: str, region: str) -> str:
    return f"health-{deployment}-{region}"


def cutover_id(deployment: str, epoch: int) -> str:
    return f"cutover-{deployment}-{epoch}"


def drill_prefix(deployment: str) -> str:
    """Drills are numbered: `drill-<deployment>-<n>`, plus the scheduled ones."""
    return f"drill-{deployment}-"


def shadow_sync_id(deployment: str, source: str, target: str, scope: str | None = None) -> str:
    """A shadow sync started by an operator: shadows-<deployment>-<source>-to-<target>[-<scope>]."""
    return f"shadows-{deployment}-{source}-to-{target}" + (f"-{scope}" if scope else "")
