"""The Helm chart, with the real helm binary (scripts/kube-tools.sh): `helm lint --strict`,
`helm template` with default and non-default values, every rendered manifest validated
offline against the Kubernetes 1.32 schemas (kubernetes-validate, strict: unknown fields
fail), and the properties the agent relies on asserted on the rendered objects."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import HELM
from tests.helpers import ROOT

CHART = ROOT / "charts" / "policyd"
K8S = "1.32"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr + r.stdout
    return r


def render(*sets: str) -> dict[str, dict]:
    args = ["template", "pd", str(CHART), "--namespace", "kube-system", "--kube-version", K8S]
    for s in sets:
        args += ["--set", s]
    docs = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    for d in docs:
        if d["apiVersion"] != "monitoring.coreos.com/v1":  # not Kubernetes' kinds: test_monitoring.py checks them
            kubernetes_validate.validate(d, K8S, strict=True)  # raises on any schema violation
    return {d["kind"]: d for d in docs}


def test_lint_strict():
    out = helm("lint", "--strict", str(CHART)).stdout
    assert "0 chart(s) failed" in out


def test_default_render_is_valid_and_safe():
    objs = render()
    assert set(objs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}
    ds = objs["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["POLICYD_FAIL_MODE"]["value"] == "open" and env["POLICYD_DISPATCH_MODE"]["value"] == "auto"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"} and c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9808, "health": 9809}, "the probes do not depend on the metrics port"
    assert env["POLICYD_HEALTH_PORT"]["value"] == "9809" and env["POLICYD_METRICS_PORT"]["value"] == "9808"
    assert c["args"] == ["run"]
    # RBAC: read-only on pods, namespaces and policies; events are the only writes.
    for rule in objs["ClusterRole"]["rules"]:
        if "events" in rule["resources"]:
            assert set(rule["verbs"]) == {"create", "list"}
        else:
            assert set(rule["verbs"]) == {"get", "list", "watch"}
    assert objs["ClusterRoleBinding"]["subjects"][0]["name"] == objs["ServiceAccount"]["metadata"]["name"]


def test_values_reach_the_agent():
    objs = render("dispatchMode=interface", "interfacePrefixes={cali,lxc}", "failMode=closed", "logFormat=json",
                  "metricsPort=9100", "image.tag=test")
    c = objs["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["POLICYD_INTERFACE_PREFIXES"] == "cali,lxc" and env["POLICYD_FAIL_MODE"] == "closed"
    assert env["POLICYD_LOG_FORMAT"] == "json" and env["POLICYD_METRICS_PORT"] == "9100"
    assert c["ports"][0]["containerPort"] == 9100 and c["image"].endswith(":test")
    assert env["POLICYD_BACKEND"] == "nftables"
    assert "xtables-lock" not in {m["name"] for m in c["volumeMounts"]}
    assert env["POLICYD_DROP_LOG"] == "false" and env["POLICYD_RULE_COUNTERS"] == "false", "the drop log and counters are opt-in"
    c = render("dropLog.enabled=true", "dropLog.group=5", "dropLog.rate=3")["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (env["POLICYD_DROP_LOG"], env["POLICYD_DROP_LOG_GROUP"], env["POLICYD_DROP_LOG_RATE"]) == ("true", "5", "3")
    assert env["POLICYD_FLOWS"] == "0", "flow records are opt-in"


def test_flow_records_reach_the_agent_and_bad_limits_are_refused():
    c = render("flows.enabled=true", "flows.limit=500")["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in c["env"]}["POLICYD_FLOWS"] == "500"
    for bad, why in (("flows.limit=0", "flows.limit must be 1-1000000"), ("metricsPort=0", "metricsPort must be set")):
        out = helm("template", "pd", str(CHART), "--set", "flows.enabled=true", "--set", bad, check=False)
        assert out.returncode != 0 and why in out.stderr, out.stderr


def agent_settings(env: dict[str, str]):
    """What `policyd run` makes of the chart's environment (its own parser, nothing else)."""
    import argparse

    from policyd.kube import cli

    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            if k.startswith("POLICYD_") and v is not None:
                mp.setenv(k, v)
        parser = argparse.ArgumentParser()  # (the defaults are read from the environment here)
        cli.register(parser.add_subparsers())
        args = parser.parse_args(["run", "--node-name", "n1", "--dispatch-mode", "address", "--backend", "nftables"])
        return cli.settings_from(args)[0]


def test_domain_names_are_on_by_default_and_their_values_reach_the_agent():
    env = {e["name"]: e.get("value") for e in render()["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    st = agent_settings(env)
    assert st.fqdn is not None and (st.fqdn.queue, st.fqdn.fail_open) == (5300, True)
    assert (st.fqdn_limits.min_ttl, st.fqdn_limits.max_ttl, st.fqdn_limits.per_pod) == (30, 86400, 1000)
    c = render("fqdn.queue=77", "fqdn.failMode=closed", "fqdn.minTTL=5", "fqdn.maxTTL=600", "fqdn.maxPerPod=20")
    st = agent_settings({e["name"]: e.get("value") for e in c["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["env"]})
    assert st.fqdn is not None and (st.fqdn.queue, st.fqdn.fail_open) == (77, False)
    assert (st.fqdn_limits.min_ttl, st.fqdn_limits.max_ttl, st.fqdn_limits.per_pod) == (5, 600, 20)
    off = render("fqdn.enabled=false")["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert agent_settings({e["name"]: e.get("value") for e in off}).fqdn is None


def test_iptables_backend_shares_the_hosts_xtables_lock_and_gets_net_raw():
    """Legacy iptables opens a raw socket (without CAP_NET_RAW: 'Permission denied (you must
    be root)', seen on the real cluster); nftables does not need it and does not get it."""
    pod = render("backend=iptables")["DaemonSet"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert {e["name"]: e.get("value") for e in c["env"]}["POLICYD_BACKEND"] == "iptables"
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert {"name": "xtables-lock", "mountPath": "/run/xtables.lock"} in c["volumeMounts"]
    assert {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}} in pod["volumes"]


def test_env_names_match_the_agent_options():
    """Every POLICYD_* variable the chart sets is one `policyd run` reads."""
    from policyd.kube import cli

    source = Path(cli.__file__).read_text()
    c = render()["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    for e in c["env"]:
        if e["name"].startswith("POLICYD_"):
            name = e["name"][len("POLICYD_"):]
            assert f'env("{name}"' in source or f'env_or("{name}"' in source, e["name"]


@pytest.mark.parametrize("bad", ["dispatchMode=bridge", "backend=ebpf", "failMode=maybe", "failMode=closed,dispatchMode=address", "logFormat=xml",
                                 "healthPort=0", "dropLog.group=70000", "dropLog.rate=0",
                                 "fqdn.queue=70000", "fqdn.failMode=maybe", "fqdn.minTTL=0", "fqdn.minTTL=700,fqdn.maxTTL=600",
                                 "fqdn.maxPerPod=0", "revokeConnections.enabled=maybe", "revokeConnections.ctMark=0"])
def test_bad_values_are_refused(bad: str):
    r = helm("template", "pd", str(CHART), "--set", bad, check=False)
    assert r.returncode != 0 and ("must be" in r.stderr or "needs" in r.stderr), r.stderr


def test_metrics_off_keeps_the_probes_and_one_port_may_serve_both():
    c = render("metricsPort=0")["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    assert [p["name"] for p in c["ports"]] == ["health"] and c["readinessProbe"]["httpGet"]["port"] == "health"
    c = render("healthPort=9808")["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    assert c["ports"] == [{"name": "health", "containerPort": 9808, "protocol": "TCP"}]


def test_the_crd_ships_with_the_chart_and_is_the_pinned_modules():
    """A fresh clone installs the ClusterNetworkPolicy CRD with nothing built: it is in the
    chart (helm template --include-crds), and it is exactly the experimental-channel file of
    the network-policy-api release pinned in realcluster/npapi/go.mod."""
    import shutil

    out = helm("template", "pd", str(CHART), "--include-crds").stdout
    crds = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "CustomResourceDefinition"]
    assert [d["metadata"]["name"] for d in crds] == ["clusternetworkpolicies.policy.networking.k8s.io"]
    if shutil.which("go") is None:
        pytest.skip("Go is not installed: the CRD cannot be compared with the pinned module here")
    r = subprocess.run([str(ROOT / "scripts" / "chart-crd.sh"), "--check"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout


@pytest.mark.parametrize("backend,expect,absent", [
    ("nftables", "policyd cleanup --table policyd\n", "--backend iptables"),
    ("iptables", "policyd cleanup --table policyd --backend iptables", None),
    ("auto", "nftables: policyd cleanup --table policyd\n", None),
])
def test_notes_name_the_cleanup_of_the_backend_in_use(backend, expect, absent, tmp_path):
    # `helm template` skips NOTES.txt and `helm install --dry-run` wants a cluster (the chart
    # has a kubeVersion): a copy of the chart renders it through `tpl` into a ConfigMap.
    import shutil

    chart = tmp_path / "policyd"
    shutil.copytree(CHART, chart)
    shutil.copy(CHART / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n{{ tpl (.Files.Get "notes.txt") . | indent 4 }}\n')
    out = helm("template", "pd", str(chart), "--namespace", "kube-system", "--set", f"backend={backend}").stdout
    notes = next(d for d in yaml.safe_load_all(out) if d and d["metadata"]["name"] == "notes")["data"]["notes"]
    assert expect in notes, notes
    if absent is not None:
        assert absent not in notes, notes
    if backend == "auto":
        assert "iptables: policyd cleanup --table policyd --backend iptables" in notes, notes
