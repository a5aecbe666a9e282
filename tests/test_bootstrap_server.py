"""The bootstrap service as the local stack runs it (one process per region), and the CLI over it."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import starter
from activities.bootstrap import BootstrapActivities, FlipBootstrapInput
from activities.context import Deployments
from cli import Exit
from core.config import DeploymentConfig
from rehearsal import faults, pki
from rehearsal.processes import free_port, spawn_python, wait_http
from tests.bootstrap_support import register_thing, with_device_endpoints, write_config
from tests.conftest import make_config

EAST, WEST = "us-east-1", "us-west-2"


def get(url: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310
            status, raw, kind = resp.status, resp.read(), resp.headers.get_content_type()
    except urllib.error.HTTPError as e:
        status, raw, kind = e.code, e.read(), e.headers.get_content_type()
    return status, json.loads(raw) if kind == "application/json" else raw.decode()


@pytest.fixture(scope="module")
def config(emulator_urls: dict[str, str], local_ca: pki.LocalCA, tmp_path_factory) -> DeploymentConfig:
    """One deployment for the module: its services start once (each test uses its own things)."""
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca_file.write_text(local_ca.cert_pem)
    for url in emulator_urls.values():
        faults.reset_emulator(url)
    cfg = make_config(emulator_urls, ca_file, deployment={"bootstrap_table": f"bt-{uuid.uuid4().hex[:8]}"})
    return with_device_endpoints(cfg)


@pytest.fixture(scope="module")
def served(config: DeploymentConfig, tmp_path_factory) -> Iterator[tuple[Path, dict[str, str]]]:
    """Both regions' services running from a config file, as `local up` starts them."""
    tmp_path = tmp_path_factory.mktemp("served")
    urls = {r: f"http://127.0.0.1:{free_port()}" for r in config.regions}
    path = write_config(config, tmp_path / "deployment.toml", urls)
    procs = [
        spawn_python(
            "bootstrap.server",
            ["--config", str(path), "--region", r, "--port", url.rsplit(":", 1)[1], "--cache-ttl", "0.5"],
            tmp_path / f"bootstrap-{r}.log",
        )
        for r, url in urls.items()
    ]
    try:
        for url, proc in zip(urls.values(), procs, strict=True):
            wait_http(f"{url}/healthz", timeout=30, proc=proc)
        yield path, urls
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)


def test_service_answers_over_http(config: DeploymentConfig, served: tuple[Path, dict[str, str]]) -> None:
    _, urls = served
    d = Deployments([config])
    register_thing(d.aws(config.name), "dev-http")
    BootstrapActivities(d).flip_bootstrap(FlipBootstrapInput(config.name, 2, WEST, [EAST, WEST]))
    time.sleep(0.6)  # the services' cache TTL (the flip is seen once it expires)
    for url in urls.values():
        status, body = get(f"{url}/v1/bootstrap/dev-http")
        assert status == 200 and body["epoch"] == 2 and body["endpoints"][0]["region"] == WEST
        assert get(f"{url}/v1/bootstrap/ghost")[0] == 404
        assert get(f"{url}/v1/bootstrap/bad%20name")[0] == 400
        status, health = get(f"{url}/healthz")
        assert status == 200 and health["status"] == "ok"
        status, metrics = get(f"{url}/metrics")
        assert status == 200 and "iotfailover_bootstrap_requests_total{region=" in metrics
        assert 'status="404"' in metrics and 'reason="thing_name"' in metrics


def test_regional_outage_answers_503(config: DeploymentConfig, served: tuple[Path, dict[str, str]]) -> None:
    _, urls = served
    register_thing(Deployments([config]).aws(config.name), "dev-outage")
    assert get(f"{urls[EAST]}/v1/bootstrap/dev-outage")[0] == 200
    faults.set_fault(config.regions[EAST].endpoint_url, "outage")
    try:
        time.sleep(1.5)  # the health probe runs every second
        status, body = get(f"{urls[EAST]}/v1/bootstrap/dev-outage")
        assert status == 503 and "unavailable" in body["error"]
        assert get(f"{urls[EAST]}/healthz")[0] == 503
        assert get(f"{urls[WEST]}/v1/bootstrap/dev-outage")[0] == 200
    finally:
        faults.set_fault(config.regions[EAST].endpoint_url, "clear")
    assert get(f"{urls[EAST]}/healthz")[0] == 200
    assert get(f"{urls[EAST]}/v1/bootstrap/dev-outage")[0] == 200


def test_cli_shows_each_region_and_fails_for_unknown_devices(
    config: DeploymentConfig, served: tuple[Path, dict[str, str]], tmp_path: Path, capsys, monkeypatch
) -> None:
    path, urls = served
    # structlog would keep capsys's stream for the rest of the session: leave logging as it is
    monkeypatch.setattr(starter.logs, "configure", lambda **_: None)
    register_thing(Deployments([config]).aws(config.name), "dev-cli")
    assert starter.main(["--config", str(path), "bootstrap", "show", "dev-cli"]) == 0
    out = capsys.readouterr().out
    assert all(f"{r} ({url}): HTTP 200" in out for r, url in urls.items())
    assert "primary" in out and "data/test/dev-cli/" in out

    assert starter.main(["--config", str(path), "bootstrap", "show", "ghost"]) == Exit.FAILED
    assert "unknown in every region" in capsys.readouterr().err

    no_services = write_config(config, tmp_path / "offline.toml")  # no bootstrap_url: the logic in process
    assert starter.main(["--config", str(no_services), "bootstrap", "show", "--json", "dev-cli"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["region"], x["status"]) for x in lines] == [(EAST, 200), (WEST, 200)]
    assert lines[0]["source"].startswith("service logic")
