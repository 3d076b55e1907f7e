"""A real Prometheus (Debian's `prometheus` package) in a cluster's fabric namespace, scraping
the agents the way the Prometheus Operator does for the chart's ServiceMonitor: the Service's
endpoints, kept by the ServiceMonitor's label selector and port name, and labelled as the
operator labels them (namespace, service, pod, container, node, job, endpoint), so the
chart's alert rules and dashboard queries see the series they will see under the operator.

Debian builds Prometheus without Kubernetes service discovery (`kubernetes_sd_configs` is
refused), so `endpoint_targets` does that discovery's part here: the cluster's Endpoints,
Services and Pods, read with kubectl, become the target groups `role: endpoints` would
produce, with the same `__meta_kubernetes_*` labels, in a file Prometheus reads
(`file_sd_configs`). The operator's relabelling then runs in Prometheus unchanged.

Listens on the fabric namespace's loopback only; its data lives in a temporary directory;
the process is stopped and reaped whatever happens."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from policyd.lab.netns import http_get

from .cluster import Cluster
from .processes import terminate

PORT = 19090  # in the fabric namespace, on its loopback


def _label(name: str) -> str:
    """A Kubernetes label key as service discovery names it (`app.kubernetes.io/name` →
    `app_kubernetes_io_name`)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def endpoint_targets(cluster: Cluster, namespaces: list[str]) -> list[dict[str, Any]]:
    """Kubernetes discovery's `role: endpoints` target groups for these namespaces: one
    target per endpoint address and port, with the meta labels Prometheus documents for it
    (the Service's labels, the port's name, the target's kind and name, the Pod's name, node
    and the container that declares the port)."""
    def items(kind: str, ns: str) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = json.loads(cluster.kubectl("get", kind, "-n", ns, "-o", "json").stdout)["items"]
        return got

    groups = []
    for ns in namespaces:
        services = {s["metadata"]["name"]: s for s in items("services", ns)}
        pods = {p["metadata"]["name"]: p for p in items("pods", ns)}
        for ep in items("endpoints", ns):
            svc = services.get(ep["metadata"]["name"])
            if svc is None:
                continue
            base = {"__meta_kubernetes_namespace": ns, "__meta_kubernetes_endpoints_name": ep["metadata"]["name"],
                    "__meta_kubernetes_service_name": svc["metadata"]["name"]}
            for k, v in (svc["metadata"].get("labels") or {}).items():
                base[f"__meta_kubernetes_service_label_{_label(k)}"] = v
                base[f"__meta_kubernetes_service_labelpresent_{_label(k)}"] = "true"
            for subset in ep.get("subsets") or []:
                for port in subset.get("ports") or []:
                    for addr in subset.get("addresses") or []:
                        labels = {**base, "__meta_kubernetes_endpoint_port_name": port.get("name", ""),
                                  "__meta_kubernetes_endpoint_port_protocol": port.get("protocol", "TCP"),
                                  "__meta_kubernetes_endpoint_ready": "true",
                                  "__meta_kubernetes_endpoint_node_name": addr.get("nodeName", "")}
                        ref = addr.get("targetRef") or {}
                        labels["__meta_kubernetes_endpoint_address_target_kind"] = ref.get("kind", "")
                        labels["__meta_kubernetes_endpoint_address_target_name"] = ref.get("name", "")
                        pod = pods.get(ref.get("name", "")) if ref.get("kind") == "Pod" else None
                        if pod is not None:
                            labels |= {"__meta_kubernetes_pod_name": pod["metadata"]["name"],
                                       "__meta_kubernetes_pod_node_name": pod["spec"].get("nodeName", ""),
                                       "__meta_kubernetes_pod_ip": pod["status"].get("podIP", "")}
                            for c in pod["spec"]["containers"]:
                                if any(cp["containerPort"] == port["port"] for cp in c.get("ports") or []):
                                    labels["__meta_kubernetes_pod_container_name"] = c["name"]
                        groups.append({"targets": [f"{addr['ip']}:{port['port']}"], "labels": labels})
    return groups


def operator_scrape_config(monitor: dict[str, Any], targets_file: Path) -> list[dict[str, Any]]:
    """The scrape jobs the Prometheus Operator generates for a ServiceMonitor (one per
    endpoint) with the relabelling its config generator writes; the discovery reads
    `targets_file` (see `endpoint_targets`)."""
    meta, spec = monitor["metadata"], monitor["spec"]
    jobs = []
    for i, ep in enumerate(spec["endpoints"]):
        keep = [{"action": "keep", "source_labels": [f"__meta_kubernetes_service_label_{_label(k)}",
                                                    f"__meta_kubernetes_service_labelpresent_{_label(k)}"],
                 "regex": f"({re.escape(v)});true"} for k, v in sorted(spec["selector"]["matchLabels"].items())]
        keep.append({"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": ep["port"]})
        relabel = [
            *keep,
            {"source_labels": ["__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"],
             "separator": ";", "regex": "Node;(.*)", "replacement": "${1}", "target_label": "node"},
            {"source_labels": ["__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"],
             "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}", "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
            {"target_label": "endpoint", "replacement": ep["port"]},
        ]
        jobs.append({"job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{i}",
                     "honor_labels": bool(ep.get("honorLabels", False)),
                     "scrape_interval": ep.get("interval", "30s"), "metrics_path": ep.get("path", "/metrics"),
                     "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
                     "relabel_configs": relabel})
    return jobs


@dataclass
class Prometheus:
    cluster: Cluster

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{PORT}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        code, body = http_get(self.cluster.layout.fabric, url)
        if code != 200:
            raise RuntimeError(f"prometheus {path} {params}: {code} {body[:500]}")
        doc: dict[str, Any] = json.loads(body)
        return doc

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on a query Prometheus refuses)."""
        doc = self.get("/api/v1/query", query=promql)
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.get("/api/v1/targets")["data"]["activeTargets"]
        return active

    def rules(self) -> list[dict[str, Any]]:
        return [r for g in self.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]


def monitored_namespaces(monitor: dict[str, Any]) -> list[str]:
    names: list[str] = monitor["spec"].get("namespaceSelector", {}).get("matchNames") or [monitor["metadata"]["namespace"]]
    return names


@contextlib.contextmanager
def running(cluster: Cluster, monitor: dict[str, Any], rule_files: list[Path], interval: str = "1s") -> Iterator[Prometheus]:
    """Prometheus scraping what `monitor` (a ServiceMonitor) selects, with these rule files,
    evaluating every `interval`."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is missing: scripts/setup.sh --test installs Debian's package")
    with tempfile.TemporaryDirectory(prefix="policyd-prom-") as tmp:
        targets = Path(tmp) / "targets.json"
        targets.write_text(json.dumps(endpoint_targets(cluster, monitored_namespaces(monitor))))
        jobs = operator_scrape_config(monitor, targets)
        config = Path(tmp) / "prometheus.yml"
        config.write_text(yaml.safe_dump({"global": {"scrape_interval": interval, "evaluation_interval": interval},
                                          "rule_files": [str(f) for f in rule_files], "scrape_configs": jobs}))
        log = Path(tmp) / "prometheus.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{cluster.layout.fabric}", "--", binary,
                                     f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
                                     f"--web.listen-address=127.0.0.1:{PORT}", "--log.level=warn"],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            prom = Prometheus(cluster)
            deadline = time.monotonic() + 30
            while http_get(cluster.layout.fabric, f"http://127.0.0.1:{PORT}/-/ready", timeout=1)[0] != 200:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"prometheus did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            yield prom
        finally:
            terminate(proc)
