"""Process-wide Prometheus metrics shared by every capability, and the exporter.

Capability-specific metrics live next to the code that owns them; all names start with
`iotfailover_`.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

AWS_CALLS = Counter(
    "iotfailover_aws_calls_total", "AWS API calls made by the controller", ["region", "api", "outcome"]
)
AWS_LATENCY = Histogram(
    "iotfailover_aws_call_seconds",
    "AWS API call latency",
    ["region", "api"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
AWS_THROTTLES = Counter(
    "iotfailover_aws_throttles_total", "AWS throttling responses seen, per region and API", ["region", "api"]
)
BAD_INPUT = Counter(
    "iotfailover_bad_input_total",
    "Rejected input (config, events, certificates, signals, requests), by where it came from and why",
    ["source", "reason"],
)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose the default registry on http://addr:port/metrics (no-op for port 0)."""
    if port:
        start_http_server(port, addr=addr)
