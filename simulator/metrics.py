"""The simulator's Prometheus metrics and its per-fleet totals (for the status file and the tests)."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Gauge

DEVICES = Gauge("iotfailover_sim_devices", "Simulated devices by region and state", ["region", "state"])
CONNECTIONS = Counter("iotfailover_sim_connections_total", "Successful device connections", ["region"])
FAILOVERS = Counter(
    "iotfailover_sim_failovers_total",
    "Devices that moved region on their own after exhausting their retries",
    ["source", "target"],
)
MIGRATIONS = Counter(
    "iotfailover_sim_migrations_total",
    "migrate-region jobs by outcome (succeeded, failed, stale, refused)",
    ["outcome"],
)
TELEMETRY = Counter("iotfailover_sim_telemetry_published_total", "Telemetry messages published", ["region"])
ERRORS = Counter("iotfailover_sim_errors_total", "Failed device calls by region and kind", ["region", "kind"])
BOOTSTRAPS = Counter("iotfailover_sim_bootstraps_total", "Bootstrap fetches by outcome", ["outcome"])


class Stats:
    """Totals of one fleet, mirrored into the process-wide counters above."""

    def __init__(self) -> None:
        self.totals: Tally[str] = Tally()

    def connected(self, region: str) -> None:
        self.totals["connections"] += 1
        CONNECTIONS.labels(region=region).inc()

    def failed_over(self, source: str, target: str) -> None:
        self.totals["failovers"] += 1
        FAILOVERS.labels(source=source, target=target).inc()

    def migration(self, outcome: str) -> None:
        self.totals[f"migrations_{outcome}"] += 1
        MIGRATIONS.labels(outcome=outcome).inc()

    def published(self, region: str) -> None:
        self.totals["telemetry_published"] += 1
        TELEMETRY.labels(region=region).inc()

    def error(self, region: str, kind: str) -> None:
        self.totals["errors"] += 1
        ERRORS.labels(region=region or "-", kind=kind).inc()

    def bootstrap(self, outcome: str) -> None:
        self.totals[f"bootstraps_{outcome}"] += 1
        BOOTSTRAPS.labels(outcome=outcome).inc()

    @staticmethod
    def publish_states(
        counts: dict[tuple[str, str], int], previous: set[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Set the devices gauge from (region, state) counts; zero the series that emptied."""
        for key in previous - counts.keys():
            DEVICES.labels(region=key[0], state=key[1]).set(0)
        for (region, state), n in counts.items():
            DEVICES.labels(region=region, state=state).set(n)
        return set(counts)
