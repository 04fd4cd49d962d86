"""The shipped Grafana dashboard and Prometheus config only use what the gateway exports."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartGateway
from tests.test_cost_metrics import AGENT, hang_up, scripted_call

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "gateway.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


class TestDashboard:
    async def test_every_metric_the_dashboard_queries_is_exported(self, start_gateway: StartGateway) -> None:
        """Each gateway_* series named in a dashboard query is one the gateway's /metrics exposes."""
        gw = await start_gateway(agent=AGENT)
        call, _ = await scripted_call(gw)
        await hang_up(call)
        async with gw.http.get(gw.url + "/metrics") as response:
            text = await response.text()
        exported = {
            family.name + suffix
            for family in text_string_to_metric_families(text)
            for suffix in SUFFIXES.get(family.type, ("",))
        }
        used = {name for expr in dashboard_exprs() for name in re.findall(r"gateway_[a-z0-9_]+", expr)}
        assert used, "the dashboard queries nothing"
        assert used <= exported, sorted(used - exported)

    def test_dashboard_covers_what_operators_ask(self) -> None:
        """Cost per model, cost per call quantiles, calls active, turn latency p99, barge-ins, errors."""
        exprs = "\n".join(dashboard_exprs())
        needles = (
            "sum by (model) (increase(gateway_cost_usd_total",
            "gateway_call_cost_usd_bucket",
            "gateway_calls_active",
            "histogram_quantile(0.99, sum by (le) (rate(gateway_turn_latency",
            "gateway_barge_ins_total",
            "gateway_engine_errors_total",
        )
        for needle in needles:
            assert needle in exprs, needle

    async def test_queries_are_valid_promql(self, tmp_path: Path) -> None:
        """Every dashboard query parses as PromQL (checked by `promtool check rules`)."""
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(dashboard_exprs())
        ]}]}  # fmt: skip
        path = tmp_path / "rules.yml"
        path.write_text(yaml.safe_dump(rules))
        process = await asyncio.create_subprocess_exec(
            promtool, "check", "rules", str(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, (out + err).decode()

    async def test_prometheus_config_is_valid(self) -> None:
        """deploy/prometheus.yml passes `promtool check config` and scrapes the gateway's /metrics."""
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        job = config["scrape_configs"][0]
        assert job["metrics_path"] == "/metrics"
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
        process = await asyncio.create_subprocess_exec(
            promtool, "check", "config", str(DEPLOY / "prometheus.yml"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, (out + err).decode()
