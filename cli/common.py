"""What every command needs: the config, a Temporal client, links into the UI, async running."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from temporalio.client import Client

from core.config import LOCAL_UI_URL, DeploymentConfig, load_config
from core.temporal import TemporalConnection, connect


def config_of(args: argparse.Namespace, need_ca: bool = True) -> DeploymentConfig:
    return load_config(args.config, need_ca=need_ca)


def connection_of(cfg: DeploymentConfig) -> TemporalConnection:
    return TemporalConnection.from_env(cfg.temporal.address, cfg.temporal.namespace)


async def client_for(cfg: DeploymentConfig) -> Client:
    conn = connection_of(cfg)
    try:
        return await connect(conn)
    except RuntimeError as e:
        from cli import CliError, Exit

        raise CliError(
            f"cannot reach Temporal at {conn.address} ({e}); start the local stack with "
            "`python starter.py local up` or set TEMPORAL_ADDRESS",
            code=Exit.UNREACHABLE,
        ) from None


def ui_link(cfg: DeploymentConfig, workflow_id: str | None = None) -> str:
    """A link into the UI of the namespace the commands connect to (TEMPORAL_NAMESPACE included)."""
    conn = connection_of(cfg)
    ui = conn.ui_base(cfg.temporal.ui_url, LOCAL_UI_URL)
    base = f"{ui}/namespaces/{quote(conn.namespace)}/workflows"
    return f"{base}/{quote(workflow_id)}" if workflow_id else base


def run_async(fn: Callable[..., Awaitable[Any]]) -> Callable[[argparse.Namespace], Any]:
    """Adapt an async command handler to argparse."""

    def handler(args: argparse.Namespace) -> Any:
        return asyncio.run(fn(args))

    return handler
