"""Where things live: the pinned Kubernetes version and its binaries, cached images, and
each cluster's state directory."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools"
GO_MOD = ROOT / "realcluster" / "k8s" / "go.mod"
IMAGE_CACHE = TOOLS / "images"
STATE_ROOT = Path("/var/lib/policyd-cluster")
HELM = TOOLS / "bin" / "helm"
K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")


def k8s_version() -> str:
    """The Kubernetes release pinned in realcluster/k8s/go.mod (e.g. v1.36.3)."""
    m = re.search(r"^require k8s\.io/kubernetes (v\S+)$", GO_MOD.read_text(), re.M)
    if not m:
        raise RuntimeError(f"{GO_MOD}: no 'require k8s.io/kubernetes vX.Y.Z' line")
    return m.group(1)


def k8s_bin(name: str) -> Path:
    """A Kubernetes binary built by scripts/k8s-build.sh; a clear error if it is missing."""
    path = TOOLS / "k8s" / k8s_version() / name
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: run scripts/k8s-build.sh")
    return path
