"""Real-cluster tests: Kubernetes built from its module (scripts/k8s-build.sh), etcd,
containerd, runc and the CNI plugins from Debian, nodes as network namespaces with their
own mount namespaces (realcluster/). One cluster per CNI style for the whole session; every
test run uses fresh names, and teardown asserts that nothing is left: no
process, mount, cgroup, network namespace or state directory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.lab.netns import list_namespaces
from realcluster.cluster import Cluster, down
from realcluster.layout import Layout
from realcluster.processes import CGROUP_FS, mounts_under

if os.geteuid() != 0:  # pragma: no cover
    pytest.exit("real-cluster tests need root (namespaces, mounts, cgroups)", returncode=1)


def leftovers(layout: Layout) -> list[str]:
    """What of this cluster the machine still holds."""
    found = [f"netns {n}" for n in list_namespaces(layout.prefix + ".")]
    found += [f"mount {m}" for m in mounts_under(layout.state)]
    found += [f"cgroup {h}{n.cgroup_root}" for n in layout.nodes for h in CGROUP_FS.iterdir()
              if (h / n.cgroup_root.strip("/")).exists()]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(layout.state).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(f"pid {pid}")
        except OSError:
            continue
    if layout.state.exists():
        found.append(f"state {layout.state}")
    return found


def fresh_layout(cni: str) -> Layout:
    return Layout(f"t{uuid.uuid4().hex[:6]}", cni=cni)


@pytest.fixture(scope="session", params=["bridge", "ptp"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A two-node cluster in each CNI style: bridge (address dispatch), ptp (routed,
    interface dispatch), shared by every test of the session that takes it (pytest groups
    them by style, so each style is brought up once). Tests leave it as they found it."""
    layout = fresh_layout(request.param)
    cluster = Cluster(layout)
    try:
        cluster.up(say=lambda s: None)
        yield cluster
    finally:
        down(layout, say=lambda s: None)
        assert not leftovers(layout), f"cluster {layout.name} left {leftovers(layout)}"
