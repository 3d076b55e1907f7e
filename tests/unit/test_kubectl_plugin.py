"""`kubectl policyd` (the kubectl-policyd plugin): the cluster of the chosen kubeconfig
context, names in the context's namespace or -n, the namespace's pods unless -A; the same
answers as `policyd explain/matrix` from the API (the test API server, harness/kubeapi)."""

from __future__ import annotations

import json

import yaml

from harness.kubeapi.server import KubeAPI
from policyd.kubectl import build_parser, main, policyd_args
from tests.helpers import EXAMPLE_POLICY

POLICY = EXAMPLE_POLICY


def test_plugin_reads_the_chosen_context_in_its_namespace(tmp_path, capsys):
    api = KubeAPI()
    url = api.serve()
    try:
        doc = api.kubeconfig(url)
        # The current context points nowhere: only --context reaches the server; its namespace is `shop`.
        doc["clusters"].append({"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}})
        doc["contexts"] = [{"name": "test", "context": {"cluster": "nowhere", "user": "test"}},
                           {"name": "shop", "context": {"cluster": "test", "user": "test", "namespace": "shop"}}]
        kc = tmp_path / "kubeconfig"
        kc.write_text(yaml.safe_dump(doc))
        from kubernetes import client, config

        c = config.new_client_from_config(str(kc), context="shop")
        core, net = client.CoreV1Api(c), client.NetworkingV1Api(c)
        for ns in ("shop", "other"):
            core.create_namespace({"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})
        for ns, name, app, ip in (("shop", "fe", "frontend", "10.0.0.1"), ("shop", "be", "backend", "10.0.0.2"),
                                  ("shop", "un", "unallowed", "10.0.0.3"), ("other", "x", "frontend", "10.0.0.4")):
            core.create_namespaced_pod(ns, {"metadata": {"name": name, "labels": {"app": app}},
                                            "spec": {"containers": [{"name": "c", "image": "x"}]},
                                            "status": {"podIPs": [{"ip": ip}], "phase": "Running"}})
        policy = yaml.safe_load(POLICY.read_text())
        policy["metadata"]["namespace"] = "shop"
        net.create_namespaced_network_policy("shop", policy)

        base = ["--kubeconfig", str(kc), "--context", "shop"]
        assert main(["explain", "fe", "be", *base]) == 0, "frontend reaches backend in the context's namespace"
        assert main(["explain", "un", "be", *base]) == 1
        assert main(["explain", "other/x", "be", *base]) == 1, "the policy admits frontend pods of its own namespace only"
        assert main(["explain", "10.0.0.1", "10.0.0.2", *base]) == 0
        capsys.readouterr()
        assert main(["matrix", "-o", "json", "--by", "pod", *base]) == 0
        m = json.loads(capsys.readouterr().out)
        assert m["kind"] == "PodMatrix" and m["pods"] == ["shop/be", "shop/fe", "shop/un"], "the namespace's pods"
        assert "shop/be" in m["allowed"]["shop/fe"] and "shop/be" not in m["allowed"]["shop/un"]
        assert main(["matrix", "-A", "-o", "json", "--by", "pod", *base]) == 0
        m = json.loads(capsys.readouterr().out)
        assert "other/x" in m["pods"] and "shop/be" not in m["allowed"]["other/x"]
        assert main(["matrix", "-n", "other", "-o", "json", "--by", "pod", *base]) == 0
        assert json.loads(capsys.readouterr().out)["pods"] == ["other/x"]
        assert main(["explain", "fe", "be", "--kubeconfig", str(kc), "--context", "missing"]) == 2
        assert "no context named 'missing'" in capsys.readouterr().err
    finally:
        api.stop()


def test_arguments_follow_kubectls_conventions(tmp_path):
    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump({"current-context": "a", "contexts": [{"name": "a", "context": {"namespace": "web"}}]}))
    parse = build_parser().parse_args
    assert policyd_args(parse(["explain", "fe", "db/x", "--kubeconfig", str(kc)])) == [
        "explain", "--kubeconfig", str(kc), "--protocol", "TCP", "--port", "80", "--from", "web/fe", "--to", "db/x"]
    assert policyd_args(parse(["matrix", "-n", "ops", "--kubeconfig", str(kc), "-o", "json"]))[-2:] == ["--namespace", "ops"]
    assert "--namespace" not in policyd_args(parse(["matrix", "-A", "--kubeconfig", str(kc)]))
