"""What the bootstrap service takes from where it runs, checked when it starts.

Its AWS clients use the process's own credentials (the Lambda's execution role, the server's
environment), never the controller's `role_arn`: the function's role reads its own region's table
and registry and may not assume the controller's role. Every region's device endpoint comes from the
deployment config (`regions.<region>.iot_endpoint`) or from IOTFAILOVER_IOT_ENDPOINTS, never from
DescribeEndpoint, so the function needs no other permission and never calls another region.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from core.aws import AwsClients
from core.config import ConfigError, DeploymentConfig, Quotas
from core.metrics import BAD_INPUT

ENDPOINTS_ENV = "IOTFAILOVER_IOT_ENDPOINTS"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
# Read rates for the service unless the deployment config sets them: DynamoDB has no per-API TPS
# quota like IoT's, so the defaults are only there to bound a runaway loop.
_SERVICE_RATES = {"Scan": 1000.0, "GetItem": 1000.0, "DescribeTable": 100.0, "ListThingGroupsForThing": 100.0}
_HINT = (
    "set it to the endpointAddress of `aws iot describe-endpoint --endpoint-type iot:Data-ATS "
    f"--region {{region}}` (host name only), or pass {ENDPOINTS_ENV}=<region>=<host>,..."
)


def service_clients(cfg: DeploymentConfig) -> AwsClients:
    """The service's clients: its own credentials, and fail fast (a device waiting on a slow region
    is better served by its next endpoint)."""
    regions = {
        name: r.model_copy(update={"role_arn": None, "external_id": None}) for name, r in cfg.regions.items()
    }
    quotas = Quotas(default_rps=cfg.quotas.default_rps, per_api={**_SERVICE_RATES, **cfg.quotas.per_api})
    return AwsClients(
        cfg.model_copy(update={"regions": regions, "quotas": quotas}),
        max_pool_connections=64,
        max_attempts=2,
        read_timeout=5,
        retry_mode="standard",
    )


def endpoints_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The `region=host` pairs of IOTFAILOVER_IOT_ENDPOINTS (comma or space separated); {} unset."""
    pairs: dict[str, str] = {}
    problems: list[str] = []
    for entry in filter(None, re.split(r"[,\s]+", environ.get(ENDPOINTS_ENV, ""))):
        region, _, host = entry.partition("=")
        if region and host:
            pairs[region] = host
        else:
            problems.append(f"{entry!r} is not region=host")
    if problems:
        _count(len(problems))
        raise ConfigError(
            ENDPOINTS_ENV,
            [f"{p} (hint: e.g. us-east-1=abc123-ats.iot.us-east-1.amazonaws.com)" for p in problems],
        )
    return pairs


def device_endpoints(cfg: DeploymentConfig, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every region's device endpoint, the override before the config's.

    Raises ConfigError listing every region without a usable one, so a function deployed without
    them fails at its first request with the fix in the log, instead of answering devices with an
    endpoint list that silently lacks a region.
    """
    overrides = dict(overrides or {})
    problems = [
        f"{ENDPOINTS_ENV}: {region} is not a region of deployment {cfg.name} ({', '.join(cfg.regions)})"
        for region in overrides
        if region not in cfg.regions
    ]
    endpoints: dict[str, str] = {}
    for region, rc in cfg.regions.items():
        host = overrides.get(region) or rc.iot_endpoint
        if not host:
            problems.append(f"regions.{region}.iot_endpoint: not set; " + _HINT.format(region=region))
        elif not _HOST.match(host):
            problems.append(
                f"regions.{region}.iot_endpoint: {host!r} is not a host name; " + _HINT.format(region=region)
            )
        else:
            endpoints[region] = host
    if problems:
        _count(len(problems))
        raise ConfigError(cfg.source_path or cfg.name, problems)
    return endpoints


def _count(n: int) -> None:
    BAD_INPUT.labels(source="config", reason="iot_endpoint").inc(n)
