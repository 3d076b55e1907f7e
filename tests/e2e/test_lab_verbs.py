"""`lab delete -f` needs only what `kubectl delete -f` needs: apiVersion, kind and name."""

from __future__ import annotations

from tests.helpers import ROOT


def test_delete_by_identity_alone(make_lab, tmp_path):
    lab = make_lab(["examples/cluster/demo.yaml"], "routed")
    lab.apply([str(ROOT / "examples" / "policies" / "allow-frontend-to-backend.yaml")], say=lambda s: None)
    src, dst = "app=unallowed", "app=backend"
    assert not any(lab.probe(src, dst, "TCP", 80, 0.4).allowed.values()), "the policy isolates backend"
    bare = tmp_path / "bare.yaml"
    bare.write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-frontend-to-backend}\n")
    assert lab.delete([str(bare)], say=lambda s: None) == 0
    assert all(lab.probe(src, dst, "TCP", 80, 0.4).allowed.values()), "deleting it reopens backend"

    # The API server never deletes default, kube-system or kube-public; nor does the lab
    # (and nothing named beside them in the same files is deleted either).
    import pytest

    from policyd.lab.lab import LabError

    pods = len(lab.load().pods)
    for ns in ("default", "kube-system", "kube-public"):
        doomed = tmp_path / f"{ns}.yaml"
        doomed.write_text(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n{bare.read_text()}")
        with pytest.raises(LabError, match="this namespace may not be deleted"):
            lab.delete([str(doomed)], say=lambda s: None)
    assert len(lab.load().pods) == pods


def test_a_dead_agent_stops_changes_before_they_are_written(make_lab):
    """`lab label` (and apply, delete) with an agent down writes nothing and says how to
    recover; `lab restart-agent` brings the agent back and the change then goes through."""
    import os
    import signal

    import pytest

    from policyd.lab.cli import LabError

    lab = make_lab(["examples/cluster/demo.yaml"], "routed")
    rec = lab.load()
    node, pod = "node-1", next(k for k, p in rec.pods.items() if p.node == "node-1")
    os.kill(rec.nodes[node].agent_pid, signal.SIGKILL)
    import time

    from policyd.lab.lab import alive

    deadline = time.monotonic() + 5
    while alive(rec.nodes[node].agent_pid) and time.monotonic() < deadline:  # SIGKILL takes a moment
        time.sleep(0.01)
    before = lab.read_object("Pod", pod)
    with pytest.raises(LabError, match=f"restart-agent {node}"):
        lab.label("pod", pod, ["extra=1"], say=lambda s: None)
    assert lab.read_object("Pod", pod) == before, "nothing was written"
    lab.restart_agent(node)
    lab.label("pod", pod, ["extra=1"], say=lambda s: None)
    assert lab.read_object("Pod", pod)["metadata"]["labels"]["extra"] == "1"


def test_lab_logs_shows_the_drop_log(make_lab, capsys, monkeypatch):
    """`policyd lab logs --drops`: the lab's agents log every drop with the policy that made it,
    and a drop that cannot happen (an allowed probe) is never logged."""
    import argparse
    import time

    import policyd.lab.cli as cli

    lab = make_lab(["examples/cluster/demo.yaml"], "bridge")
    lab.apply([str(ROOT / "examples" / "policies" / "allow-frontend-to-backend.yaml")], say=lambda s: None)
    assert not any(lab.probe("app=unallowed", "app=backend", "TCP", 80, 0.4).allowed.values())
    assert all(lab.probe("app=frontend", "app=backend", "TCP", 80, 0.4).allowed.values())
    monkeypatch.setattr(cli, "_lab", lambda name: lab)
    deadline = time.monotonic() + 3
    while True:
        assert cli.cmd_logs(argparse.Namespace(name=lab.name, node=None, drops=True, lines=200)) == 0
        out = capsys.readouterr().out
        drops = [line for line in out.splitlines() if line.startswith("drop ")]
        if len(drops) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert drops and all("default/unallowed-" in d and "allow-frontend-to-backend" in d for d in drops), out
    assert not any("← default/frontend-" in d for d in drops), "allowed traffic is never logged"
    assert "--- node-1" in out and "--- node-2" in out


def test_lab_counters_and_explain_with_hits(make_lab, capsys, monkeypatch):
    """`policyd lab counters` and `policyd explain --lab`: the probes sent are the packets the
    deciding rules counted, on the node of the pod that decided (each new connection's SYN
    reaches the pod chain; the rest is established traffic)."""
    import policyd.lab.lab as lab_module
    from policyd.cli import main
    from policyd.observe.counters import RuleKey

    lab = make_lab(["examples/cluster/demo.yaml"], "routed")
    lab.apply([str(ROOT / "examples" / "policies" / "allow-frontend-to-backend.yaml")], say=lambda s: None)
    rec = lab.load()
    backends = {k: p.node for k, p in rec.pods.items() if "/backend-" in k}
    assert sorted(backends.values()) == ["node-1", "node-2"], "one backend per node"
    assert not any(lab.probe("app=unallowed", "app=backend", "TCP", 80, 0.4).allowed.values())  # 2 × 2 probes
    assert all(lab.probe("app=frontend", "app=backend", "TCP", 80, 0.4).allowed.values())  # 2 × 2 probes
    allow = RuleKey("allow", "default", "allow-frontend-to-backend", "ingress", "0")
    drop = RuleKey("drop", "default", "default/allow-frontend-to-backend", "ingress", "")
    for node in ("node-1", "node-2"):
        got = lab.counters(node).by_rule
        assert got[allow].packets == 2 and got[drop].packets == 2, (node, got)

    monkeypatch.setattr(lab_module, "Lab", lambda name: lab)
    src = next(k for k in rec.pods if "/unallowed-" in k)
    dst = next(k for k, n in backends.items() if n == "node-2")
    assert main(["explain", "--lab", lab.name, "--from", src, "--to", dst]) == 1
    out = capsys.readouterr().out
    assert "DENIED" in out and "counted on node-2: ingress isolation of default pods by default/allow-frontend-to-backend: 2 packets" in out


def test_concurrent_changes_to_one_lab_all_land(make_lab):
    """Two `lab label` at once (separate Lab objects, as two processes would be): each
    lands, none fails. They once shared a generation and temporary file names."""
    import threading

    from policyd.lab.lab import Lab

    lab = make_lab(["examples/cluster/demo.yaml"], "routed")
    pod = next(iter(lab.load().pods))
    errors: list[BaseException] = []

    def label(k: int) -> None:
        try:
            Lab(lab.name, root=lab.dir.parent).label("pod", pod, [f"k{k}=v"], say=lambda s: None)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=label, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    labels = lab.read_object("Pod", pod)["metadata"]["labels"]
    assert all(labels.get(f"k{k}") == "v" for k in range(6)), labels
