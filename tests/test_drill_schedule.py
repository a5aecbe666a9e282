"""`starter.py drill schedule`: a Temporal Schedule that starts DrillWorkflow on an interval."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

REPO = Path(__file__).resolve().parent.parent


async def test_drill_schedule_creates_an_interval_schedule(
    temporal_env: WorkflowEnvironment, local_ca, tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_text(local_ca.cert_pem)
    text = (REPO / "deploy/local/deployment.toml").read_text()
    config = tmp_path / "deployment.toml"
    config.write_text(text.replace('"../../.local/ca/ca.pem"', f'"{tmp_path / "ca.pem"}"'))
    env = {**os.environ, "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host}

    def run(*a):
        return subprocess.run(
            [sys.executable, "starter.py", "--config", str(config), *a],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    out = await asyncio.to_thread(run, "drill", "schedule", "--every", "7d", "--percent", "10")
    assert out.returncode == 0, out.stderr
    assert "schedule drill-demo-every-604800s created" in out.stdout
    desc = await temporal_env.client.get_schedule_handle("drill-demo-every-604800s").describe()
    assert desc.schedule.spec.intervals[0].every == timedelta(days=7)
    assert desc.schedule.action.workflow == "DrillWorkflow"
    again = await asyncio.to_thread(run, "drill", "schedule", "--every", "7d")
    assert again.returncode == 0 and "already exists" in again.stdout
    await temporal_env.client.get_schedule_handle("drill-demo-every-604800s").delete()
