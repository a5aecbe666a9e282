"""`starter.py local up|status|fault|down` on free ports: everything starts, answers, and stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

from rehearsal.processes import free_port, port_open, tool_path
from tests.toml_files import write_toml

REPO = Path(__file__).resolve().parent.parent


def _write_config(tmp: Path) -> Path:
    raw = tomllib.loads((REPO / "deploy/local/deployment.toml").read_text())
    ports = {k: free_port() for k in ("east", "west", "beast", "bwest", "temporal", "ui", "metrics")}
    while port_open(ports["metrics"] + 1):  # the worker exports the SDK's metrics on the next port
        ports["metrics"] = free_port()
    raw["deployment"]["ca_certificate"] = str(tmp / "state" / "ca" / "ca.pem")
    raw["regions"]["us-east-1"].update(
        endpoint_url=f"http://127.0.0.1:{ports['east']}", bootstrap_url=f"http://127.0.0.1:{ports['beast']}"
    )
    raw["regions"]["us-west-2"].update(
        endpoint_url=f"http://127.0.0.1:{ports['west']}", bootstrap_url=f"http://127.0.0.1:{ports['bwest']}"
    )
    raw["temporal"] = {
        "address": f"127.0.0.1:{ports['temporal']}",
        "ui_url": f"http://127.0.0.1:{ports['ui']}",
    }
    raw["local"] = {
        "state_dir": str(tmp / "state"),
        "temporal_port": ports["temporal"],
        "temporal_ui_port": ports["ui"],
        "worker_metrics_port": ports["metrics"],
        "simulator_metrics_port": free_port(),
    }
    return write_toml(tmp / "deployment.toml", raw)


def _starter(config: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "starter.py", "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.e2e
def test_local_up_status_fault_down(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    cfg = tomllib.loads(config.read_text())
    try:
        up = _starter(config, "local", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert cfg["temporal"]["ui_url"] in up.stdout
        again = _starter(config, "local", "up")
        assert again.returncode == 0 and "already running" in again.stdout

        status = _starter(config, "local", "status")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("healthy") >= 4  # temporal, two emulators, worker (+ bootstrap services)

        # the Temporal CLI, a real client, sees the namespace
        listing = subprocess.run(
            [tool_path("temporal"), "workflow", "list", "--address", cfg["temporal"]["address"]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0, listing.stderr

        # each region's MQTT endpoint answers with a server certificate from the state folder's root
        mqtt = json.loads(
            urllib.request.urlopen(cfg["regions"]["us-east-1"]["endpoint_url"] + "/_emulator/mqtt").read()
        )
        assert mqtt["root_ca"] == (tmp_path / "state" / "pki" / "ca.pem").read_text()
        assert "MQTT (mTLS) us-east-1" in up.stdout

        fault = _starter(config, "local", "fault", "us-east-1", "outage")
        assert fault.returncode == 0 and "outage" in fault.stdout
        bad = _starter(config, "local", "fault", "eu-north-9", "outage")
        assert bad.returncode == 1 and "unknown region" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        pids = [json.loads(f.read_text())["pid"] for f in (tmp_path / "state" / "run").glob("*.json")]
        down = _starter(config, "local", "down")
    assert down.returncode == 0, down.stderr
    assert pids and not [p for p in pids if _alive(p)]
    assert not list((tmp_path / "state" / "run").glob("*.json"))
    # one consistent world: the emulators forgot everything, so Temporal's history went with them
    assert not (tmp_path / "state" / "temporal.db").exists()
    reset = _starter(config, "local", "reset")
    assert reset.returncode == 0 and not (tmp_path / "state").exists(), reset.stdout + reset.stderr


def test_bad_config_gives_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[deployment]\nname = "Bad Name"\nmode = "sideways"\n[regions.us-east-1]\nrole = "primary"\n'
    )
    out = _starter(bad, "local", "status")
    assert out.returncode == 3  # Exit.CONFIG
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("  - ")]
    assert len(lines) >= 3, out.stderr  # name, mode, fleet (and more), one per line
