"""deploy/compose.yaml and deploy/k8s/: schema validation and the invariants that keep them working.

Kubernetes schemas come from `kubernetes-validate` (bundled, so no network); the ServiceMonitor is a
Prometheus Operator CRD with no bundled schema, so only its fields that matter are checked here.
compose.yaml is validated by `docker-compose config` when Debian's docker-compose is installed.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

import gateway.__main__ as cli
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.metrics import GatewayMetrics
from gateway.server import GOODBYE_TIMEOUT_S

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
SCHEMA_VERSIONS = ("1.29.0", "1.37.0")  # an old still-common cluster and kubernetes-validate's newest
NO_EXTRA = "the `deploy` extra is not installed (pip install -e '.[deploy]'; .ci/run's 3.13 venv has it)"
MISSING_VAR = re.compile(r"environment variable (\w+) is not set")


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), path
    return document


def manifest(kind: str) -> dict[str, Any]:
    found = [doc for doc in map(load, MANIFESTS) if doc["kind"] == kind]
    assert len(found) == 1, (kind, len(found))
    return found[0]


def required_env(config_path: Path) -> set[str]:
    """The variables a config cannot load without, as the gateway's own loader reports them."""
    with pytest.raises(ConfigError) as error:
        load_config(config_path, env={})
    return {m.group(1) for p in error.value.problems if (m := MISSING_VAR.search(p))}


def placeholder_env(names: set[str]) -> dict[str, str]:
    return {
        name: "https://gw.example.com" if name == "PUBLIC_URL" else f"placeholder-{name}" for name in names
    }


def drain_timeout_s(config_path: Path) -> float:
    config = load_config(config_path, env=placeholder_env(required_env(config_path)))
    return config.server.drain_timeout_s


def container() -> dict[str, Any]:
    containers = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


@pytest.fixture
def configmap_config(tmp_path: Path) -> Path:
    """The ConfigMap's agents.yaml, written out as the pod sees it at /config/agents.yaml."""
    path = tmp_path / "agents.yaml"
    path.write_text(manifest("ConfigMap")["data"]["agents.yaml"])
    return path


class TestKubernetesSchemas:
    @pytest.mark.parametrize("version", SCHEMA_VERSIONS)
    @pytest.mark.parametrize("path", [p for p in MANIFESTS if "servicemonitor" not in p.name], ids=str)
    def test_manifest_matches_the_kubernetes_schema(self, path: Path, version: str) -> None:
        """Every built-in resource passes strict validation (unknown fields are errors)."""
        kv = pytest.importorskip("kubernetes_validate", reason=NO_EXTRA)
        kv.validate(load(path), version, strict=True)

    def test_strict_validation_catches_a_misspelt_field(self) -> None:
        """The validator is live: a misspelt probe field in the Deployment is rejected."""
        kv = pytest.importorskip("kubernetes_validate", reason=NO_EXTRA)
        broken = copy.deepcopy(manifest("Deployment"))
        spec = broken["spec"]["template"]["spec"]["containers"][0]
        spec["readinesProbe"] = spec.pop("readinessProbe")
        with pytest.raises(kv.ValidationError):
            kv.validate(broken, SCHEMA_VERSIONS[-1], strict=True)

    def test_only_the_servicemonitor_has_no_bundled_schema(self) -> None:
        """The one manifest skipped above really is a CRD kubernetes-validate knows nothing about."""
        kv = pytest.importorskip("kubernetes_validate", reason=NO_EXTRA)
        with pytest.raises(kv.SchemaNotFoundError):
            kv.validate(manifest("ServiceMonitor"), SCHEMA_VERSIONS[-1], strict=True)


class TestDeployment:
    def test_probes_use_readyz_and_healthz_on_the_http_port(self) -> None:
        """Readiness is /readyz (503 while draining or full), liveness /healthz, both on port 8080."""
        spec = container()
        assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
        ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
        assert spec["readinessProbe"]["httpGet"]["port"] == spec["livenessProbe"]["httpGet"]["port"] == "http"
        assert ports["http"] == 8080

    def test_grace_period_outlasts_the_drain(self, configmap_config: Path) -> None:
        """terminationGracePeriodSeconds covers the preStop pause, the ConfigMap's drain_timeout_s and the
        goodbyes, or calls are cut without a hang-up."""
        pod = manifest("Deployment")["spec"]["template"]["spec"]
        [container] = pod["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        needed = float(command[1]) + drain_timeout_s(configmap_config) + GOODBYE_TIMEOUT_S
        assert pod["terminationGracePeriodSeconds"] > needed

    def test_configmap_config_passes_gateway_check(
        self, configmap_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`gateway check` accepts the ConfigMap's agents.yaml with placeholder secrets."""
        for name, value in placeholder_env(required_env(configmap_config)).items():
            monkeypatch.setenv(name, value)
        assert cli.main(["check", str(configmap_config)]) == 0, capsys.readouterr().err

    def test_every_variable_the_config_needs_is_set(self, configmap_config: Path) -> None:
        """Each ${VAR} the ConfigMap's config requires comes from the pod's env or the Secret's keys."""
        spec = container()
        secret = manifest("Secret")
        from_secret = {ref["secretRef"]["name"] for ref in spec["envFrom"]}
        assert from_secret == {secret["metadata"]["name"]}
        provided = {env["name"] for env in spec["env"]} | set(secret["stringData"])
        needed = required_env(configmap_config)
        assert needed, "the config reads no secrets from the environment"
        assert needed <= provided, sorted(needed - provided)

    def test_config_is_mounted_from_the_configmap_where_the_command_reads_it(self) -> None:
        """The ConfigMap is mounted at /config, and the container's --config names its agents.yaml."""
        pod = manifest("Deployment")["spec"]["template"]["spec"]
        spec = container()
        volumes = {v["name"]: v for v in pod["volumes"]}
        mount = next(m for m in spec["volumeMounts"] if "configMap" in volumes[m["name"]])
        assert volumes[mount["name"]]["configMap"]["name"] == manifest("ConfigMap")["metadata"]["name"]
        assert "agents.yaml" in manifest("ConfigMap")["data"]
        assert spec["args"] == ["run", "--config", f"{mount['mountPath']}/agents.yaml"]

    def test_runs_as_the_images_non_root_user(self) -> None:
        """runAsNonRoot with the Dockerfile's numeric USER, no privilege escalation, no capabilities."""
        pod = manifest("Deployment")["spec"]["template"]["spec"]
        user = next(
            line.split()[1]
            for line in (ROOT / "Dockerfile").read_text().splitlines()
            if line.startswith("USER ")
        )
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
        security = container()["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]

    def test_resources_are_requested(self) -> None:
        """CPU and memory requests and a memory limit are set, so the scheduler and HPA can reason."""
        resources = container()["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}
        assert "memory" in resources["limits"]


class TestServiceAndMonitor:
    def test_service_selects_the_pods_and_targets_the_http_port(self) -> None:
        """The Service's selector matches the pod labels, and its port targets the container's `http`."""
        service = manifest("Service")
        labels = manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]

    def test_servicemonitor_scrapes_metrics_through_the_service(self) -> None:
        """monitoring.coreos.com/v1: selects the Service by its labels and scrapes /metrics on its port."""
        monitor, service = manifest("ServiceMonitor"), manifest("Service")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        service_ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in service_ports
            assert endpoint["path"] == "/metrics"


class TestAutoscaling:
    def test_hpa_scales_the_deployment_on_a_gauge_the_gateway_exports(self, configmap_config: Path) -> None:
        """The HPA's per-pod metric is a gauge in gateway/metrics.py; its target is below the call cap."""
        hpa = manifest("HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == manifest("Deployment")["metadata"]["name"]
        [metric] = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods"
        name = metric["pods"]["metric"]["name"]
        registry = CollectorRegistry()
        GatewayMetrics(registry)
        gauges = {family.name for family in registry.collect() if family.type == "gauge"}
        assert name in gauges, sorted(gauges)
        config = load_config(configmap_config, env=placeholder_env(required_env(configmap_config)))
        assert 0 < int(metric["pods"]["target"]["averageValue"]) < config.server.max_concurrent_calls

    def test_adapter_rule_serves_the_hpa_metric(self) -> None:
        """The example prometheus-adapter rule exposes, per pod, exactly the metric the HPA asks for."""
        hpa_metric = manifest("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
        [rule] = load(K8S / "prometheus-adapter" / "values.yaml")["rules"]["custom"]
        assert rule["seriesQuery"].startswith(hpa_metric + "{")
        assert rule["name"]["as"] == hpa_metric
        assert re.fullmatch(rule["name"]["matches"], hpa_metric)
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)" in rule["metricsQuery"]


class TestCompose:
    compose = load(DEPLOY / "compose.yaml")

    def bind_mounts(self, service: str) -> dict[str, Path]:
        """container path -> host path (relative to deploy/, where compose.yaml lives)."""
        mounts = {}
        for volume in self.compose["services"][service].get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = (DEPLOY / source).resolve()
        return mounts

    def test_services_and_ports(self) -> None:
        """gateway on 8080, Prometheus on 9090, Grafana on 3000, the gateway built from the Dockerfile."""
        services = self.compose["services"]
        assert set(services) == {"gateway", "prometheus", "grafana"}
        assert services["gateway"]["ports"] == ["8080:8080"]
        assert services["prometheus"]["ports"] == ["9090:9090"]
        assert services["grafana"]["ports"] == ["3000:3000"]
        build = services["gateway"]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"

    def test_every_mounted_file_exists(self) -> None:
        """Each bind mount's source is a file or folder in the repository."""
        for service in self.compose["services"]:
            for target, source in self.bind_mounts(service).items():
                assert source.exists(), (service, target, source)

    def test_gateway_gets_its_config_and_every_variable_it_needs(self) -> None:
        """The mounted config lands on the image's /config/agents.yaml; its ${VAR}s pass through."""
        gateway = self.compose["services"]["gateway"]
        config = self.bind_mounts("gateway")["/config/agents.yaml"]
        assert required_env(config) <= set(gateway["environment"])
        grace_s = int(gateway["stop_grace_period"].removesuffix("s"))
        # docker's default of 10 s would cut a drain short
        assert grace_s > drain_timeout_s(config) + GOODBYE_TIMEOUT_S

    def test_prometheus_scrapes_the_gateway_service(self) -> None:
        """The mounted prometheus.yml scrapes gateway:8080/metrics: the compose service and its port."""
        scrape = load(self.bind_mounts("prometheus")["/etc/prometheus/prometheus.yml"])
        [job] = scrape["scrape_configs"]
        assert job["metrics_path"] == "/metrics"
        assert job["static_configs"][0]["targets"] == ["gateway:8080"]

    def test_grafana_provisions_the_dashboard_and_datasource(self) -> None:
        """The datasource is the prometheus service; the dashboard provider's folder holds gateway.json."""
        mounts = self.bind_mounts("grafana")
        datasources = mounts["/etc/grafana/provisioning/datasources"]
        [source] = [d for f in datasources.glob("*.yaml") for d in load(f)["datasources"]]
        assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
        dashboards = mounts["/etc/grafana/provisioning/dashboards"]
        [provider] = [p for f in dashboards.glob("*.yaml") for p in load(f)["providers"]]
        folder = provider["options"]["path"]
        provisioned = {target: source for target, source in mounts.items() if target.startswith(folder + "/")}
        assert DEPLOY / "grafana" / "gateway.json" in provisioned.values(), provisioned

    def test_docker_compose_accepts_the_file(self) -> None:
        """`docker-compose config -q` (Debian's docker-compose, no engine needed) validates the file."""
        compose = shutil.which("docker-compose")
        if compose is None:
            pytest.skip(
                "docker-compose is not installed (Debian package docker-compose; .ci/run installs it)"
            )
        result = subprocess.run(  # noqa: S603 - a fixed tool on a repository file
            [compose, "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stdout + result.stderr
