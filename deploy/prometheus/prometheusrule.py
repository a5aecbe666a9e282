"""Writes deploy/k8s/base/prometheusrule.yaml from alerts.yml: one source for both Prometheus setups.

    python deploy/prometheus/prometheusrule.py

alerts.yml is the source (compose mounts it, promtool tests it); tests/test_deploy_runtime.py fails
when the PrometheusRule's groups differ from it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
TARGET = HERE.parent / "k8s" / "base" / "prometheusrule.yaml"
HEADER = """\
# Generated from deploy/prometheus/alerts.yml by `python deploy/prometheus/prometheusrule.py`: edit
# alerts.yml and run it again. The alerts for a prometheus-operator Prometheus (docs/operating.md);
# its ruleSelector must match these labels (kube-prometheus-stack: add release: <its release>).
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the longer expressions) stay block literals, as in alerts.yml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def prometheus_rule() -> dict:
    groups = yaml.safe_load((HERE / "alerts.yml").read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "iotfailover-alerts",
            "namespace": "iot-failover",
            "labels": {
                "app.kubernetes.io/name": "iotfailover-worker",
                "app.kubernetes.io/part-of": "iot-failover",
            },
        },
        "spec": {"groups": groups},
    }


def render() -> str:
    return HEADER + yaml.dump(prometheus_rule(), Dumper=_Dumper, sort_keys=False, width=1000)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
