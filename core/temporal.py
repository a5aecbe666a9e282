"""Temporal wiring shared by the worker, the starter and the tests.

One data converter (pydantic, so config models and dataclasses both travel), the search attributes
that make cutovers filterable in the UI, and a connect() that works against the local dev server, a
self-hosted cluster with mTLS, or Temporal Cloud with an API key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from temporalio.client import Client, TLSConfig
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

DATA_CONVERTER = pydantic_data_converter

SA_DEPLOYMENT = SearchAttributeKey.for_keyword("IotDeployment")
SA_SOURCE = SearchAttributeKey.for_keyword("IotSourceRegion")
SA_TARGET = SearchAttributeKey.for_keyword("IotTargetRegion")
SA_PHASE = SearchAttributeKey.for_keyword("IotPhase")
SA_MODE = SearchAttributeKey.for_keyword("IotMode")
SEARCH_ATTRIBUTES = [SA_DEPLOYMENT, SA_SOURCE, SA_TARGET, SA_PHASE, SA_MODE]


@dataclass
class TemporalConnection:
    """How to reach Temporal; every field can come from a flag or the TEMPORAL_* environment."""

    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    api_key: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None

    @classmethod
    def from_env(cls, address: str | None = None, namespace: str | None = None) -> TemporalConnection:
        """TEMPORAL_* variables win over the given (config) values, as with the Temporal CLI."""
        env = os.environ
        return cls(
            address=env.get("TEMPORAL_ADDRESS") or address or cls.address,
            namespace=env.get("TEMPORAL_NAMESPACE") or namespace or cls.namespace,
            api_key=env.get("TEMPORAL_API_KEY") or None,
            tls_cert=env.get("TEMPORAL_TLS_CERT") or None,
            tls_key=env.get("TEMPORAL_TLS_KEY") or None,
            tls_ca=env.get("TEMPORAL_TLS_CA") or None,
        )

    def tls(self) -> TLSConfig | bool:
        if self.tls_cert and self.tls_key:
            from pathlib import Path

            read = lambda p: Path(p).read_bytes()  # noqa: E731
            return TLSConfig(
                client_cert=read(self.tls_cert),
                client_private_key=read(self.tls_key),
                server_root_ca_cert=read(self.tls_ca) if self.tls_ca else None,
            )
        return bool(self.api_key)


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
        tls=conn.tls(),
        data_converter=DATA_CONVERTER,
        runtime=runtime or _runtime,
    )
