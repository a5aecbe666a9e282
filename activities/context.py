"""What every activity needs: the deployments this worker serves, with their AWS clients."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from core import logs
from core.aws import AwsClients
from core.config import DeploymentConfig

HEARTBEAT_SECONDS = 5.0  # a Keepalive heartbeats at least this often, whatever call it waits on


class Deployments:
    """The deployments a worker serves, by name; activities look theirs up from their input."""

    def __init__(
        self, configs: list[DeploymentConfig], max_pool_connections: int = 32, client: Client | None = None
    ):
        self.client = client  # for the few activities that steer other workflows (drills)
        self._configs = {c.name: c for c in configs}
        self._aws = {c.name: AwsClients(c, max_pool_connections) for c in configs}

    def config(self, name: str) -> DeploymentConfig:
        try:
            return self._configs[name]
        except KeyError:
            raise ApplicationError(
                f"deployment {name!r} is not served by this worker (it serves: {', '.join(self._configs)}); "
                "start the worker with --config for it",
                type="UnknownDeployment",
                non_retryable=True,
            ) from None

    def aws(self, name: str) -> AwsClients:
        self.config(name)
        return self._aws[name]

    def names(self) -> list[str]:
        return list(self._configs)


class Keepalive:
    """Heartbeats the latest details from a side thread while the activity blocks on AWS calls.

    botocore's tries of one call can take longer than a heartbeat timeout; this keeps a live
    worker visibly alive and lets a dead one be noticed within HEARTBEAT_SECONDS plus the timeout.
    """

    def __init__(self, *details: Any):
        self.details = details
        self._active = activity.in_activity()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._loop,), name="activity-keepalive", daemon=True
        )

    def beat(self, *details: Any) -> None:
        self.details = details
        if self._active:
            activity.heartbeat(*details)

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                activity.heartbeat(*self.details)
            except Exception as e:  # the worker is shutting down: the heartbeat timeout will tell
                logs.get("activities").warning("heartbeat failed", error=str(e))
                return

    def __enter__(self) -> Keepalive:
        if self._active:  # called outside a worker (the CLI, a bench): nothing to heartbeat
            activity.heartbeat(*self.details)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._active:
            self._thread.join()
