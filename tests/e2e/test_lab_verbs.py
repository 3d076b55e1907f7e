"""`lab delete -f` needs only what `kubectl delete -f` needs: apiVersion, kind and name."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_delete_by_identity_alone(make_lab, tmp_path):
    lab = make_lab(["examples/cluster/demo.yaml"], "routed")
    lab.apply([str(ROOT / "examples" / "policies" / "allow-frontend-to-backend.yaml")], say=lambda s: None)
    src, dst = "app=unallowed", "app=backend"
    assert not any(lab.probe(src, dst, "TCP", 80, 0.4).allowed.values()), "the policy isolates backend"
    bare = tmp_path / "bare.yaml"
    bare.write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-frontend-to-backend}\n")
    assert lab.delete([str(bare)], say=lambda s: None) == 0
    assert all(lab.probe(src, dst, "TCP", 80, 0.4).allowed.values()), "deleting it reopens backend"
