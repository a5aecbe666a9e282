"""Prometheus rules and the Grafana dashboard: valid, about metrics that exist, each alert with a runbook."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "iot-failover.json"
OPERATING = ROOT / "docs" / "operating.md"

# The controller's metrics (names agreed across the capabilities; each is defined next to its code)
# and the Temporal SDK's, as the worker's Runtime exports them (counters without _total, durations
# in milliseconds). Histograms also have _bucket/_sum/_count series.
APP_METRICS = {
    "iotfailover_region_health_state": "gauge",
    "iotfailover_region_health_score": "gauge",
    "iotfailover_probe_seconds": "histogram",
    "iotfailover_failover_decisions_total": "counter",
    "iotfailover_cutovers_total": "counter",
    "iotfailover_cutover_phase_seconds": "histogram",
    "iotfailover_devices_migrated_total": "counter",
    "iotfailover_replication_lag_seconds": "gauge",
    "iotfailover_replication_dead_letters_total": "counter",
    "iotfailover_aws_throttles_total": "counter",
    "iotfailover_aws_calls_total": "counter",
    "iotfailover_aws_call_seconds": "histogram",
    "iotfailover_bad_input_total": "counter",
    "iotfailover_bootstrap_requests_total": "counter",
    "iotfailover_shadows_synced_total": "counter",
    "iotfailover_sim_devices": "gauge",
}
SDK_METRICS = {
    "temporal_workflow_completed": "counter",
    "temporal_workflow_failed": "counter",
    "temporal_activity_execution_failed": "counter",
    "temporal_activity_execution_latency": "histogram",
    "temporal_activity_schedule_to_start_latency": "histogram",
    "temporal_workflow_task_schedule_to_start_latency": "histogram",
    "temporal_worker_task_slots_available": "gauge",
}
METRIC = re.compile(r"\b((?:iotfailover|temporal)_[a-z0-9_]+)")


@cache
def _code_metrics() -> dict[str, str]:
    """iotfailover_* metrics defined with prometheus_client anywhere in the code."""
    kinds = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "histogram"}
    found = {}
    folders = [d for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "tests"]
    for path in (p for d in folders for p in d.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) in kinds
            ):
                name = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
                if isinstance(name, str) and name.startswith("iotfailover_"):
                    kind = kinds[node.func.id if isinstance(node.func, ast.Name) else node.func.attr]
                    found[name + ("_total" if kind == "counter" and not name.endswith("_total") else "")] = (
                        kind
                    )
    return found


@cache
def known_series() -> frozenset[str]:
    series = set()
    for name, kind in {**APP_METRICS, **SDK_METRICS, **_code_metrics()}.items():
        series.add(name)
        if kind == "histogram":
            series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return frozenset(series)


def unknown_metrics(expr: str) -> set[str]:
    return set(METRIC.findall(expr)) - known_series()


def test_code_defined_metrics_agree_with_the_catalog() -> None:
    for name, kind in _code_metrics().items():
        if name in APP_METRICS:
            assert APP_METRICS[name] == kind, f"{name} is a {kind} in the code"


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_alerts_cover_the_issues_and_use_known_metrics() -> None:
    names = {r["alert"] for r in alert_rules()}
    assert {
        "IotRegionUnhealthy",
        "IotAutomaticFailoverTaken",
        "IotAutomaticFailoverRefused",
        "IotReplicationLagHigh",
        "IotAwsThrottlingSustained",
        "IotWorkflowTaskBacklog",
    } <= names
    for rule in alert_rules():
        assert not unknown_metrics(rule["expr"]), (rule["alert"], unknown_metrics(rule["expr"]))
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]


def test_every_alert_has_a_runbook_section() -> None:
    headings = {line[4:].strip() for line in OPERATING.read_text().splitlines() if line.startswith("### ")}
    for rule in alert_rules():
        assert rule["annotations"]["runbook"] == f"docs/operating.md#{rule['alert'].lower()}"
        assert rule["alert"] in headings, f"docs/operating.md has no '### {rule['alert']}' runbook"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """A new alert without promtool cases in alerts_test.yml fails here, not in production."""
    doc = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    cases = [case for test in doc["tests"] for case in test.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = {r["alert"] for r in alert_rules()}
    assert len(names) == len(alert_rules()), "alert names must be unique"
    assert not names - firing, f"alerts_test.yml never sees these fire: {sorted(names - firing)}"
    assert not names - quiet, f"alerts_test.yml never sees these stay quiet: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, f"tests of unknown alerts: {sorted((firing | quiet) - names)}"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],
    ],
    ids=lambda a: " ".join(a),
)
def test_promtool(args: list[str]) -> None:
    result = subprocess.run([_promtool(), *args], cwd=PROM, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rate(iotfailover_cutovers_total[5m]\n"
    )
    result = subprocess.run(
        [_promtool(), "check", "rules", "bad.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


def test_dashboard_is_valid_and_every_query_names_known_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = []
    for p in panels(dashboard):
        assert p["title"] and {"h", "w", "x", "y"} <= set(p["gridPos"]), p.get("title")
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"] == DATASOURCE_REF, p["title"]
            assert not unknown_metrics(t["expr"]), (p["title"], unknown_metrics(t["expr"]))
            exprs.append(t["expr"])
    used = set(METRIC.findall(" ".join(exprs)))
    wanted = {
        "iotfailover_region_health_state",
        "iotfailover_devices_migrated_total",
        "iotfailover_sim_devices",
        "iotfailover_replication_lag_seconds",
        "iotfailover_aws_throttles_total",
        "iotfailover_cutovers_total",
        "temporal_workflow_completed",
        "temporal_activity_execution_failed",
        "temporal_workflow_task_schedule_to_start_latency_bucket",
    }
    assert wanted <= used, f"dashboard lacks {wanted - used}"


DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}


def _datasource_refs(node: object) -> list[object]:
    """Every `datasource` reference in the dashboard (panels, targets, variables, annotations)."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "datasource"] + [
            ref for k, v in node.items() if k != "datasource" for ref in _datasource_refs(v)
        ]
    if isinstance(node, list):
        return [ref for v in node for ref in _datasource_refs(v)]
    return []


def test_dashboard_picks_its_prometheus_through_a_datasource_variable() -> None:
    """Imported into any Grafana (not only the compose stack's, uid `prometheus`), the dashboard
    asks which Prometheus to read instead of naming a uid that does not exist there."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    refs = _datasource_refs(dashboard)
    queried = [p for p in panels(dashboard) if p["type"] != "row"]
    assert len(refs) > len(queried) > 20
    for ref in refs:
        # the alert list's options.datasource filters rule sources by name; Grafana takes no variable there
        assert ref == DATASOURCE_REF or ref == "Prometheus", ref
    for p in queried:
        assert p["datasource"] == DATASOURCE_REF, p["title"]
    provisioned = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert [d["name"] for d in provisioned["datasources"] if d["type"] == "prometheus"] == ["Prometheus"]


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in panels(json.loads(DASHBOARD.read_text())):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_unknown_metric_is_caught() -> None:
    assert unknown_metrics("rate(iotfailover_made_up_total[5m]) + temporal_workflow_completed") == {
        "iotfailover_made_up_total"
    }
