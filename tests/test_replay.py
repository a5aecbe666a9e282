"""Every recorded workflow history replays against today's code (tests/histories/README.md).

A change to a workflow that would make a running workflow take another path than its history
says (a new activity, a timer, a child, another order) fails here unless it is behind
`workflow.patched(...)` (workflows/versions.py), so rolling the worker never breaks a running
cutover, deployment or drill.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from core.temporal import DATA_CONVERTER
from workflows import all_workflows

HISTORIES = Path(__file__).parent / "histories"


def recorded() -> list[Path]:
    return sorted(HISTORIES.glob("*/*.json.gz"))


def load(path: Path) -> WorkflowHistory:
    workflow_id = path.name.removesuffix(".json.gz").split("--")[1]
    return WorkflowHistory.from_json(workflow_id, gzip.decompress(path.read_bytes()).decode())


def test_histories_are_recorded_for_every_workflow_type() -> None:
    types = {p.name.split("--")[0] for p in recorded()}
    assert types >= {c.__name__ for c in all_workflows()}, types


@pytest.mark.parametrize("path", recorded(), ids=lambda p: f"{p.parent.name}/{p.name.split('--')[1]}")
async def test_recorded_history_replays(path: Path) -> None:
    replayer = Replayer(workflows=all_workflows(), data_converter=DATA_CONVERTER)
    await replayer.replay_workflow(load(path))
