"""The cluster agent's own event → commit latency, through a real watch: the test API
server and `policyd run` share a throwaway network namespace (address dispatch, one local
pod, 1,000 remote pods); N policies are created at R per second through the `kubernetes`
client and the agent's `policyd_event_to_programmed_seconds` histogram is read back.

    .venv/bin/python bench/agent_events.py [--policies 200] [--rate 10]

Part of issue 6's scenario 1 (the probe-observed figure needs the lab; not here)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policyd.lab.netns import add_namespace, delete_namespaces, entered, ip  # noqa: E402
from tests.kubeapi.server import KubeAPI  # noqa: E402


def metrics(port: int, ns: str) -> dict[str, float]:
    with entered(ns):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("policyd_event_to_programmed_seconds_bucket") or line.startswith("policyd_event_to_programmed_seconds_count"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--remote-pods", type=int, default=1000)
    args = ap.parse_args()
    ns = f"pdb{uuid.uuid4().hex[:6]}.agent"
    add_namespace(ns)
    agent = None
    api = KubeAPI()
    try:
        ip("link", "set", "lo", "up", ns=ns)
        with entered(ns):
            sock = socket.create_server(("127.0.0.1", 0))
        url = api.serve(sock=sock)
        kc = Path(f"/tmp/{ns}.kubeconfig")
        kc.write_text(yaml.safe_dump(api.kubeconfig(url)))
        from kubernetes import client, config

        with entered(ns):
            c = config.new_client_from_config(str(kc))
            core, net = client.CoreV1Api(c), client.NetworkingV1Api(c)
            pods = [("local", "n1", "10.244.0.2")] + [(f"r{i}", "n2", str(ipaddress.ip_address("10.245.0.0") + i + 1)) for i in range(args.remote_pods)]
            for name, node, addr in pods:
                core.create_namespaced_pod("default", {"metadata": {"name": name, "labels": {"app": name if name == "local" else f"a{int(name[1:]) % 50}"}},
                                                       "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
                                                       "status": {"phase": "Running", "podIPs": [{"ip": addr}]}})
        port = 19808
        agent = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "policyd", "run", "--node-name", "n1",
                                  "--kubeconfig", str(kc), "--dispatch-mode", "address", "--metrics-port", str(port),
                                  "--metrics-address", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if metrics(port, ns).get("policyd_event_to_programmed_seconds_count", 0) > 0:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        base = metrics(port, ns)
        t0 = time.monotonic()
        with entered(ns):
            for i in range(args.policies):
                net.create_namespaced_network_policy("default", {
                    "metadata": {"name": f"p{i}"},
                    "spec": {"podSelector": {"matchLabels": {"app": "local"}},
                             "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"a{i % 50}"}}}],
                                          "ports": [{"port": 80 + i}]}]}})
                time.sleep(max(0.0, t0 + (i + 1) / args.rate - time.monotonic()))
        time.sleep(1.0)
        end = metrics(port, ns)
        count = end["policyd_event_to_programmed_seconds_count"] - base["policyd_event_to_programmed_seconds_count"]
        buckets = sorted((float(k.split('le="')[1].split('"')[0]), v - base.get(k, 0)) for k, v in end.items() if "le=" in k)
        print(f"{args.policies} policies at {args.rate}/s, {args.remote_pods} remote pods: {int(count)} events committed")
        for q in (0.5, 0.99):
            le = next(b for b, n in buckets if n >= q * count)
            print(f"  p{int(q * 100)} event → commit ≤ {le * 1e3:g} ms (histogram bucket bound)")
        print(json.dumps({"count": count, "buckets": buckets}))
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        api.stop()
        delete_namespaces(ns, exact=True)


if __name__ == "__main__":
    main()
