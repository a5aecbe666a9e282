"""Temporal wiring shared by the worker, the starter and the tests.

One data converter (pydantic, so config models and dataclasses both travel), the search attributes
that make cutovers filterable in the UI, and a connect() that works against the local dev server, a
self-hosted cluster with mTLS, or Temporal Cloud with an API key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from temporalio.client import Client, TLSConfig
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

DATA_CONVERTER = pydantic_data_converter

SA_DEPLOYMENT = SearchAttributeKey.for_keyword("IotDeployment")
SA_SOURCE = SearchAttributeKey.for_keyword("IotSourceRegion")
SA_TARGET = SearchAttributeKey.for_keyword("IotTargetRegion")
SA_PHASE = SearchAttributeKey.for_keyword("IotPhase")
SA_MODE = SearchAttributeKey.for_keyword("IotMode")
SEARCH_ATTRIBUTES = [SA_DEPLOYMENT, SA_SOURCE, SA_TARGET, SA_PHASE, SA_MODE]


# This project's first names for the TLS files, still honoured; the Temporal CLI's win when both are set.
LEGACY_TLS_VARIABLES = {
    "TEMPORAL_TLS_CERT": "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_KEY": "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_CA": "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
}
CLOUD_UI = "https://cloud.temporal.io"


@dataclass
class TemporalConnection:
    """How to reach Temporal: the deployment config's [temporal] values, overridden exactly as the
    Temporal CLI overrides its own (temporalio.envconfig): a profile of its config file
    (`TEMPORAL_CONFIG_FILE`, `TEMPORAL_PROFILE`), then the `TEMPORAL_*` variables (`TEMPORAL_ADDRESS`,
    `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS_CLIENT_CERT_PATH`, ...)."""

    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    api_key: str | None = None
    tls: TLSConfig | bool = False
    rpc_metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls,
        address: str | None = None,
        namespace: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> TemporalConnection:
        env = dict(os.environ if environ is None else environ)
        for old, new in LEGACY_TLS_VARIABLES.items():
            if env.get(old) and not env.get(new):
                env[new] = env[old]
        profile = ClientConfigProfile.load(profile=env.get("TEMPORAL_PROFILE") or None, override_env_vars=env)
        given = profile.to_client_connect_config()
        return cls(
            address=given.get("target_host") or address or cls.address,
            namespace=given.get("namespace") or namespace or cls.namespace,
            api_key=given.get("api_key"),
            tls=given.get("tls", False),
            rpc_metadata=dict(given.get("rpc_metadata", {})),
        )

    @property
    def is_cloud(self) -> bool:
        return self.address.split(":")[0].endswith(".tmprl.cloud")

    def ui_base(self, configured: str, default: str) -> str:
        """The UI for links: the configured one, or Temporal Cloud's when the config kept the local
        default while the connection goes to Cloud."""
        return CLOUD_UI if self.is_cloud and configured == default else configured.rstrip("/")


_runtime: Runtime | None = None


def runtime_with_metrics(port: int | None) -> Runtime | None:
    """One Runtime per process exporting the SDK's own metrics (create before the first client)."""
    global _runtime
    if port and _runtime is None:
        _runtime = Runtime(
            telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"0.0.0.0:{port}"))
        )
    return _runtime


async def connect(conn: TemporalConnection, runtime: Runtime | None = None) -> Client:
    return await Client.connect(
        conn.address,
        namespace=conn.namespace,
        api_key=conn.api_key,
        tls=conn.tls,
        rpc_metadata=conn.rpc_metadata,
        data_converter=DATA_CONVERTER,
        runtime=runtime or _runtime,
    )
