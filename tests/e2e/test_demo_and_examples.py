"""The README demo and every example policy, on real packets, in both topologies."""

from __future__ import annotations

import pytest

from policyd.backends import BACKENDS as BACKENDS
from policyd.lab.check import run_check
from policyd.lab.demo import run_demo
from policyd.lab.lab import Lab
from tests.helpers import ROOT

EXAMPLES = sorted(p.name for p in (ROOT / "examples" / "policies").glob("*.yaml"))


def test_every_example_has_a_header_comment():
    for name in EXAMPLES:
        first = (ROOT / "examples" / "policies" / name).read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 20, f"{name}: first line should say what it does"
    assert len(EXAMPLES) >= 7


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("topology", ["routed", "bridge"])
def test_demo(topology, backend, capsys, monkeypatch, tmp_path, leftovers):
    import policyd.lab.demo as demo

    monkeypatch.setattr(demo, "Lab", lambda name: Lab(name, root=tmp_path))
    assert run_demo("e2edemo", topology, backend=backend) == 0
    out = capsys.readouterr().out
    assert "demo: every observation matched" in out and "FAIL" not in out
    assert not leftovers(Lab("e2edemo", root=tmp_path))


# One variant: the learning itself runs on both backends and topologies in
# tests/kernel/test_domain_names_conformance.py; this is the walk-through as users run it.
@pytest.mark.parametrize(("topology", "backend", "family"), [("routed", "nftables", "dual")])
def test_fqdn_demo(topology, backend, family, capsys, monkeypatch, tmp_path, leftovers):
    """`lab demo --fqdn`: CoreDNS answers, the agents learn, the pods connect by name."""
    import policyd.lab.fqdn_demo as fqdn_demo

    monkeypatch.setattr(fqdn_demo, "Lab", lambda name: Lab(name, root=tmp_path))
    assert fqdn_demo.run_fqdn_demo("e2efqdn", topology, backend=backend, ip_family=family) == 0
    out = capsys.readouterr().out
    assert "all observations as expected" in out and "FAIL" not in out
    assert not leftovers(Lab("e2efqdn", root=tmp_path))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("topology", ["routed", "bridge"])
def test_every_example_policy_matches_the_engine(make_lab, topology, backend):
    """Each example applied alone to the demo cluster: every probe (ICMP, TCP 80 and 9090,
    UDP 53) equals `policyd matrix`; deleting it reopens everything."""
    lab = make_lab(["examples/cluster/demo.yaml"], topology, backend=backend)
    said: list[str] = []
    for name in EXAMPLES:
        lab.apply([str(ROOT / "examples" / "policies" / name)], say=said.append)
        assert run_check(lab, None, None, 0.4, say=said.append) == 0, f"{name}:\n" + "\n".join(said)
        # and the policy really changed something (otherwise the check proves little)
        with_policy = lab.expected("TCP", 80, *_everyone(lab))
        lab.delete([str(ROOT / "examples" / "policies" / name)], say=said.append)
        reopened = lab.probe(None, None, "TCP", 80, 0.4)
        assert all(len(v) == len(reopened.pods) for v in reopened.allowed.values()), f"{name}: deleting it must reopen TCP 80"
        if name != "endport-range.yaml":  # it allows TCP 80-90 everywhere: nothing on 80 changes
            assert with_policy.allowed != reopened.allowed, f"{name}: expected to block something on TCP 80"


def _everyone(lab: Lab):
    keys = sorted(lab.load().pods)
    return keys, keys


def test_down_after_a_crash_removes_everything(make_lab, leftovers):
    """The lab's record is gone and its agents were killed: `lab down` still removes every
    namespace and process of this lab, and only of this lab."""
    import os
    import signal

    lab = make_lab(["examples/cluster/demo.yaml"])
    other = make_lab(["examples/cluster/demo.yaml"])
    rec = lab.load()
    for n in rec.nodes.values():
        os.kill(n.agent_pid, signal.SIGKILL)
    (lab.dir / "lab.json").unlink()
    assert leftovers(lab), "namespaces and pod processes are still there"
    lab.down(quiet=True)
    assert not leftovers(lab)
    assert other.status()["nodes"][0]["agent"]["running"] and len(leftovers(other)) > 0, "the other lab is untouched"
    assert other.probe(None, None, "TCP", 80).allowed, "and still works"


def test_status_reports_nodes_pods_and_agents(make_lab):
    lab = make_lab(["examples/cluster/demo.yaml"], "bridge")
    st = lab.status()
    assert st["topology"] == "bridge" and st["dispatch"] == "address"
    assert [n["name"] for n in st["nodes"]] == ["node-1", "node-2"]
    assert all(n["agent"]["healthy"] and n["agent"]["generation"] == st["generation"] for n in st["nodes"])
    backend = next(p for p in st["pods"] if "/backend-" in p["pod"])
    assert backend["running"] and backend["tcp"] == [80, 9090] and backend["udp"] == [53]
    assert backend["interface"].startswith("veth") and backend["ips"][0].startswith("10.244.")
