"""The advise loop on the real cluster (ptp CNI, iptables backend): the walkthrough
application's traffic (frontend → backend, to the pods and through the Service) recorded by
the agents (the chart's flows.enabled) → `policyd advise` against the live cluster → applied
in audit mode: nothing dropped, no audit record for the traffic seen, one for an unobserved
probe → enforced: the walkthrough's own expectation for allow-frontend-to-backend holds
(frontend → backend TCP answers, the rest times out) and an unobserved ping is denied."""

from __future__ import annotations

import json
import sys
import time

import yaml

from policyd.lab.netns import http_get
from realcluster.cluster import Cluster, rollout
from realcluster.walkthrough import (
    RELEASE_NS,
    WORKLOADS,
    Probe,
    check_phase,
    cleanup_nodes,
    helm_uninstall,
    install_chart,
    pods_of,
    probe,
)

BACKEND = "iptables"


def agent_flows(c: Cluster) -> list[dict]:
    records = []
    for node in c.layout.nodes:
        code, body = http_get(c.layout.fabric, f"http://{node.ip}:9808/flows")
        assert code == 200, body
        doc = json.loads(body)
        assert (doc["kind"], doc["version"], doc["nodes"]) == ("FlowRecords", 1, [node.name])
        records += doc["records"]
    return records


def agent_logs(c: Cluster) -> str:
    pods = json.loads(c.kubectl("get", "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=policyd", "-o", "json").stdout)
    return "\n".join(c.kubectl("logs", "-n", RELEASE_NS, p["metadata"]["name"], check=False).stdout for p in pods["items"])


def test_advise_from_the_agents_flows_audit_then_enforce(clusters: dict[str, Cluster]) -> None:
    c = clusters["ptp"]
    say: list[str] = []
    install_chart(c, BACKEND, say.append, values=("flows.enabled=true", "dropLog.enabled=true"))
    try:
        c.kubectl("apply", "-f", str(WORKLOADS))
        for app in ("backend", "frontend", "unallowed"):
            rollout(c, f"deployment/{app}", "default", say.append)
        pods = pods_of(c)
        backends = [p for p in pods if p["app"] == "backend"]
        frontends = [p for p in pods if p["app"] == "frontend"]
        service_ip = c.kubectl("get", "service", "backend", "-o", "jsonpath={.spec.clusterIP}").stdout.strip()

        # The application's traffic: each frontend to each backend pod and to the Service.
        traffic = [Probe(f["name"], "frontend", f["node"], f"pod {b['name']}", b["node"], b["ip"], "TCP") for f in frontends for b in backends]
        traffic += [Probe(f["name"], "frontend", f["node"], "service backend", "", service_ip, "TCP") for f in frontends]
        assert all(probe(c, p) for p in traffic), "no policy yet: the application works"
        want = {(f"default/{f['name']}", f"default/{b['name']}") for f in frontends for b in backends}
        deadline = time.monotonic() + 10
        while True:
            seen = {(r["src"], r["dst"]) for r in agent_flows(c) if (r["protocol"], r["port"]) == ("TCP", 80)}
            if want <= seen or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert want <= seen, f"recorded {seen}, want {want}"
        assert not any(dst == service_ip for _, dst in seen), "a Service connection is recorded at the pod that answered"

        advise = [sys.executable, "-m", "policyd", "advise", "--kubeconfig", str(c.layout.kubeconfig), "-n", "default"]
        audit = c.run_in_fabric([*advise, "--audit"], check=False)
        enforced = c.run_in_fabric(advise, check=False)  # the same proposal, from the same flows
        assert audit.returncode == 0 and enforced.returncode == 0, audit.stderr + enforced.stderr
        assert "every one stays allowed" in audit.stderr, audit.stderr
        policies = [d for d in yaml.safe_load_all(enforced.stdout) if d]
        assert sorted(p["metadata"]["name"] for p in policies) == ["advise-backend", "advise-frontend", "advise-unallowed"]
        backend_policy = next(p for p in policies if p["metadata"]["name"] == "advise-backend")
        assert backend_policy["spec"]["ingress"] == [
            {"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}], "ports": [{"protocol": "TCP", "port": "http"}]}]

        c.kubectl("apply", "-f", "-", input=audit.stdout)
        assert not check_phase(c, "advised, audit mode", lambda p: True, say.append), "audit mode drops nothing"
        time.sleep(2)
        logs = agent_logs(c)
        assert "audit ingress default/backend" in logs and "← default/unallowed" in logs, "an unobserved probe is an audit record"
        assert not [x for x in logs.splitlines() if x.startswith("audit ") and "← default/frontend" in x and "TCP/80" in x], \
            "no audit record for the traffic seen"

        c.kubectl("apply", "-f", "-", input=enforced.stdout)
        failures = check_phase(c, "advised, enforced", lambda p: p.source_app == "frontend" and p.protocol == "TCP", say.append)
        assert not failures, failures
        other = next(f for f in frontends if f["name"] != frontends[0]["name"])
        ping = Probe(frontends[0]["name"], "frontend", frontends[0]["node"], f"pod {other['name']}", other["node"], other["ip"], "ICMP")
        assert not probe(c, ping), "an unobserved ping between frontends is denied"
    finally:
        c.kubectl("delete", "networkpolicy", "-n", "default", "-l", "policyd.io/advised=true", check=False)
        c.kubectl("delete", "-f", str(WORKLOADS), "--wait=true", timeout=120, check=False)
        helm_uninstall(c)
        cleanup_nodes(c, BACKEND)
