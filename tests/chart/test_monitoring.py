"""The chart's monitoring pieces (values `monitoring`): the metrics Service, the
ServiceMonitor, the PrometheusRule and the Grafana dashboard, rendered by the real helm;
the alert rules checked and unit-tested by the real `promtool` (Debian's prometheus
package), and every dashboard query parsed by it. tests/cluster/test_agent.py scrapes real
agents through the ServiceMonitor's scrape configuration with a real Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.test_chart import CHART, helm, render

HERE = Path(__file__).parent
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
ALL_ON = ("monitoring.serviceMonitor.enabled=true", "monitoring.prometheusRule.enabled=true", "monitoring.dashboard.enabled=true")


def promtool(*args: str, cwd: Path = HERE) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: scripts/setup.sh --test installs Debian's prometheus package"
    r = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every panel's PromQL, with Grafana's `$__rate_interval` made a plain range."""
    return [t["expr"].replace("$__rate_interval", "1m") for p in dashboard["panels"] for t in p.get("targets", [])]


def test_the_alert_rules_pass_promtool_check_and_their_unit_tests():
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", str(ALERTS))
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yaml")
    tested = set(re.findall(r"alertname: (\w+)", (HERE / "alerts_test.yaml").read_text()))
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert alerts <= tested, f"alerts without a firing test: {alerts - tested}"
    for rule in (r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]):
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]


def test_every_dashboard_query_parses(tmp_path):
    """promtool parses each query as a recording rule's expression (no server needed)."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 15
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"policyd:dashboard:{i}", "expr": q} for i, q in enumerate(queries)]}]}
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(queries)} rules found" in promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])


def test_monitoring_is_off_by_default_and_on_by_value():
    assert not {"Service", "ServiceMonitor", "PrometheusRule", "ConfigMap"} & set(render())
    assert {"Service"} == {"Service", "ServiceMonitor", "PrometheusRule", "ConfigMap"} & set(render("monitoring.service=true"))
    objs = render(*ALL_ON, "monitoring.serviceMonitor.labels.release=kps", "monitoring.serviceMonitor.interval=15s")
    svc, sm, rule, cm, ds = objs["Service"], objs["ServiceMonitor"], objs["PrometheusRule"], objs["ConfigMap"], objs["DaemonSet"]
    # The Service selects the agents' pods and serves their metrics port by the name the
    # ServiceMonitor asks for; the ServiceMonitor selects the Service, in its namespace.
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9808, "targetPort": 9808, "protocol": "TCP"}]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["kube-system"]}
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert sm["metadata"]["labels"]["release"] == "kps"
    # The PrometheusRule carries files/alerts.yaml's groups unchanged ({{ $labels }} too).
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    # The dashboard ConfigMap, with the Grafana sidecar's default label.
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["policyd.json"]) == json.loads(DASHBOARD.read_text())
    assert render("monitoring.dashboard.enabled=true", "monitoring.dashboard.namespace=grafana")["ConfigMap"]["metadata"]["namespace"] == "grafana"


@pytest.mark.parametrize("values", [("monitoring.serviceMonitor.enabled=true", "metricsPort=0"), ("monitoring.service=true", "metricsPort=0")])
def test_a_monitor_without_metrics_is_refused(values):
    r = helm("template", "pd", str(CHART), *[a for v in values for a in ("--set", v)], check=False)
    assert r.returncode != 0 and "need metricsPort" in r.stderr, r.stderr
