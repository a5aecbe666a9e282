"""What every activity needs: the deployments this worker serves, with their AWS clients."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from core.aws import AwsClients
from core.config import DeploymentConfig


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
