"""Cluster DNS on the real cluster, and hosts outside it to resolve names to.

* CoreDNS (the `coredns` image: images.py, built from its Go module) as the cluster's
  `kube-dns`: a Deployment labelled `k8s-app: kube-dns` and a Service of that name in
  kube-system, serving examples/fqdn/zone.db (the names the domainNames walkthrough
  resolves) as one zone of the root, as the lab does (policyd/lab/dns.py).
* External hosts: the zone's addresses of the cluster's families on the fabric's bridge,
  where every node's default route leads, with a busybox httpd answering on port 80 of all of
  them: what a pod reaches outside the cluster. Removed again on exit, even on failure.

Pods ask the Service's address; kube-proxy DNATs the query to the CoreDNS pod, so the answer
crosses the client's node from the CoreDNS pod's address and port 53, the reply direction of
the pod's own query: where policyd's forward hook queues it (docs/fqdn.md).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from policyd.lab import dns as labdns

from .cluster import Cluster, ClusterError, rollout
from .images import coredns_name
from .paths import ROOT

Say = Callable[[str], None]
ZONE = ROOT / "examples" / "fqdn" / "zone.db"
NAMESPACE, NAME = "kube-system", "kube-dns"


def manifest(zone: labdns.Zone) -> str:
    """ConfigMap, Deployment and Service (JSON documents kubectl applies as a List)."""
    labels = {"k8s-app": "kube-dns"}
    objs = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": NAMESPACE},
         "data": {"Corefile": ". {\n    file /etc/coredns/db.root .\n    errors\n}\n", "db.root": zone.text}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": NAMESPACE, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                 "name": "coredns", "image": coredns_name(), "imagePullPolicy": "Never", "args": ["-conf", "/etc/coredns/Corefile"],
                 "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}, {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
                 "readinessProbe": {"tcpSocket": {"port": 53}, "periodSeconds": 1},
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}]}],
                 "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
         "spec": {"selector": labels, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                                {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}},
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})


def deploy(cluster: Cluster, say: Say) -> str:
    """CoreDNS up and serving; returns the kube-dns Service's address."""

    say(f"cluster DNS: CoreDNS ({coredns_name()}) as {NAMESPACE}/{NAME}, serving {ZONE.relative_to(ROOT)}")
    cluster.kubectl("apply", "-f", "-", input=manifest(labdns.read_zone(str(ZONE))))
    rollout(cluster, "deployment/coredns", NAMESPACE, say)
    return cluster.kubectl("get", "service", NAME, "-n", NAMESPACE, "-o", "jsonpath={.spec.clusterIP}").stdout.strip()


def remove(cluster: Cluster) -> None:
    cluster.kubectl("delete", "-f", "-", "--wait=true", "--ignore-not-found", input=manifest(labdns.read_zone(str(ZONE))), timeout=120)


def external_addresses(cluster: Cluster) -> list[str]:
    """The zone's addresses of the cluster's families."""
    return [a for a in labdns.read_zone(str(ZONE)).addresses if ipaddress.ip_address(a).version in cluster.layout.families]


@contextmanager
def external_hosts(cluster: Cluster) -> Iterator[list[str]]:
    """The zone's addresses on the fabric with an HTTP server on port 80; removed on exit."""
    fabric = cluster.layout.fabric
    addresses = external_addresses(cluster)
    added: list[str] = []
    proc = None
    with tempfile.TemporaryDirectory(prefix="pdext-") as www:
        (Path(www) / "index.html").write_text("policyd external host\n")
        try:
            for a in addresses:
                prefix = 128 if ":" in a else 32
                subprocess.run(["ip", "-n", fabric, "addr", "add", f"{a}/{prefix}", "dev", "fab", *(["nodad"] if prefix == 128 else [])],
                               check=True, capture_output=True)
                added.append(a)
            proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{fabric}", "--", "busybox", "httpd", "-f", "-p", "80", "-h", www],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 10
            while not subprocess.run(["ip", "netns", "exec", fabric, "ss", "-Hltn", "sport", "=", ":80"],
                                     capture_output=True, text=True).stdout.strip():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ClusterError(f"the external hosts' httpd did not listen on port 80 in {fabric}")
                time.sleep(0.05)
            yield addresses
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
            for a in added:
                subprocess.run(["ip", "-n", fabric, "addr", "del", f"{a}/{128 if ':' in a else 32}", "dev", "fab"], capture_output=True)
