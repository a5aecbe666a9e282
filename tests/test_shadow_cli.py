"""`starter.py shadows parity|sync` as an operator runs them, against the emulators and a dev server."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.context import Deployments
from core.config import load_config
from rehearsal import pki
from starter import main
from tests.shadow_helpers import SOURCE, TARGET, fleet
from worker import build_worker


@pytest.fixture
def config_file(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path, temporal_env) -> Path:
    (tmp_path / "ca.pem").write_text(local_ca.cert_pem)
    address = temporal_env.client.service_client.config.target_host
    path = tmp_path / "deployment.toml"
    path.write_text(
        f"""
[deployment]
name = "cli-{uuid.uuid4().hex[:6]}"
mode = "active-passive"
ca_certificate = "ca.pem"
[regions.{SOURCE}]
role = "primary"
endpoint_url = "{emulators[SOURCE]}"
[regions.{TARGET}]
role = "standby"
endpoint_url = "{emulators[TARGET]}"
[fleet]
thing_group = "cli-fleet"
[quotas]
default_rps = 5000
per_api = {{ GetThingShadow = 5000, UpdateThingShadow = 5000, ShadowPerThing = 1000 }}
[temporal]
address = "{address}"
task_queue = "tq-{uuid.uuid4().hex[:8]}"
"""
    )
    return path


async def test_parity_fails_until_sync_then_passes(
    config_file: Path, temporal_env: WorkflowEnvironment, capsys: pytest.CaptureFixture
) -> None:
    cfg = load_config(config_file)
    fleet(Deployments([cfg]).aws(cfg.name), 8, group="cli-fleet")
    base = ["--config", str(config_file), "shadows"]

    assert main([*base, "parity", "--from", SOURCE, "--to", TARGET]) == 3
    out = capsys.readouterr().out
    assert "8 of 8 things (cli-fleet) have shadows in us-west-2 behind us-east-1" in out
    assert "python starter.py shadows sync --from us-east-1 --to us-west-2 --group cli-fleet" in out

    async with build_worker(temporal_env.client, cfg.temporal.task_queue, Deployments([cfg]), 4):
        code = await asyncio.to_thread(main, [*base, "sync", "--from", SOURCE, "--to", TARGET, "--wait"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"shadows-{cfg.name}-{SOURCE}-to-{TARGET}-cli-fleet" in out
    assert "/namespaces/default/workflows/shadows-" in out
    assert "things 8 · shadows copied 24 · merged 0 · unchanged 0 · failed 0" in out

    assert main([*base, "parity", "--from", SOURCE, "--to", TARGET]) == 0
    assert "up to date" in capsys.readouterr().out


def test_unknown_region_is_refused(config_file: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["--config", str(config_file), "shadows", "parity", "--from", SOURCE, "--to", "eu-west-9"]) == 1
    )
    assert "--to eu-west-9: not a region of" in capsys.readouterr().err
