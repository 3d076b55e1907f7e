"""`policyd lab up --ip-family ipv6|dual`: pods get IPv6 (or both) addresses, real IPv6
packets cross the lab's nodes, and `lab check` compares probes with the engine on every
family the lab has. The expectations below are written by hand: an ipBlock of the IPv4
pod range admits a pod's IPv4 address and never its IPv6 one."""

from __future__ import annotations

import ipaddress

import pytest

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend-from-ipv4-range-or-frontend, namespace: default}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
    - from: [{ipBlock: {cidr: 10.244.0.0/16}}]
      ports: [{port: 80}]
    - from: [{podSelector: {matchLabels: {app: frontend}}}]
      ports: [{port: 80}]
"""


@pytest.mark.parametrize(("family", "topology", "backend"), [
    ("dual", "bridge", "iptables"),
    ("ipv6", "routed", "nftables"),
])
def test_ipv6_and_dual_stack_labs_enforce_each_family(make_lab, tmp_path, family, topology, backend):
    lab = make_lab(["examples/cluster/demo.yaml"], topology, backend=backend, ip_family=family)
    versions = {"dual": [4, 6], "ipv6": [6]}[family]
    st = lab.status()
    assert st["ip_family"] == family
    for p in st["pods"]:
        assert [ipaddress.ip_address(a).version for a in p["ips"]] == versions, p
    for n in st["nodes"]:
        assert [ipaddress.ip_network(c).version for c in n["podCIDRs"]] == versions, n
    assert len({n["node"] for n in st["pods"]}) == 2, "pods on both nodes: cross-node IPv6 is routed"

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    lab.apply([str(policy)], say=lambda s: None)
    for version in versions:
        frontend = lab.probe("app=frontend", "app=backend", "TCP", 80, 0.4, version=version)
        unallowed = lab.probe("app=unallowed", "app=backend", "TCP", 80, 0.4, version=version)
        assert all(len(v) == 2 for v in frontend.allowed.values()), f"IPv{version}: frontend reaches backend"
        if version == 4:
            assert all(len(v) == 2 for v in unallowed.allowed.values()), "IPv4: the ipBlock admits every pod's IPv4 address"
        else:
            assert not any(unallowed.allowed.values()), "IPv6: an IPv4 ipBlock admits no IPv6 address"

    lines: list[str] = []
    from policyd.lab.check import run_check

    assert run_check(lab, "TCP", 80, 0.4, say=lines.append) == 0, lines
    assert [line.strip().split(":")[0] for line in lines] == [f"TCP/80 over IPv{v}" for v in versions]


def test_a_pod_applied_later_gets_the_labs_families_and_bad_input_is_refused(make_lab, tmp_path):
    from policyd.lab.lab import LabError

    lab = make_lab(["examples/cluster/demo.yaml"], "routed", ip_family="dual")
    used = {a for p in lab.status()["pods"] for a in p["ips"]}
    pod = tmp_path / "pod.yaml"
    pod.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: default, labels: {app: late}}\n"
                   "spec: {nodeName: node-2, containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}\n")
    lab.apply([str(pod)], say=lambda s: None)
    late = next(p for p in lab.status()["pods"] if p["pod"] == "default/late")
    v4, v6 = (ipaddress.ip_address(a) for a in late["ips"])
    assert v4 in ipaddress.ip_network("10.244.1.0/24") and v6 == ipaddress.ip_address(f"fd00:10:244:1::{v4.packed[3]}")
    assert not used & set(late["ips"])
    for version in (4, 6):
        assert lab.probe("app=frontend", "default/late", "TCP", 80, 0.4, version=version).allowed, f"IPv{version}"

    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: pinned, namespace: default}\n"
                   "spec: {nodeName: node-1, containers: [{name: c, image: x}]}\n"
                   "status: {podIPs: [{ip: 10.244.0.40}, {ip: 'fd00:10:244::41'}]}\n")
    with pytest.raises(LabError, match="its mirror"):
        lab.apply([str(bad)], say=lambda s: None)
    with pytest.raises(LabError, match="--node-prefix 25: --ip-family ipv6 needs 24"):
        make_lab(["examples/cluster/demo.yaml"], "routed", ip_family="ipv6", node_prefix=25)


def test_an_ipv4_lab_has_no_ipv6_to_probe(make_lab):
    from policyd.lab.lab import LabError

    lab = make_lab(["examples/cluster/demo.yaml"], "routed")
    with pytest.raises(LabError, match="is ipv4: its pods have no IPv6 addresses"):
        lab.probe(None, None, "TCP", 80, 0.4, version=6)
