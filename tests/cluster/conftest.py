"""Real-cluster tests: Kubernetes built from its module (scripts/k8s-build.sh), etcd,
containerd, runc and the CNI plugins from Debian, nodes as network namespaces with their
own mount namespaces (realcluster/). One cluster per CNI style for the whole session, both
brought up side by side (the upstream suites then run on both at once: they mostly wait for
probe timeouts); every test run uses fresh names, and teardown asserts that nothing is
left: no process, mount, cgroup, network namespace or state directory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import pytest

from policyd.lab.netns import list_namespaces
from realcluster.cluster import Cluster, down
from realcluster.images import build_all
from realcluster.layout import Layout
from realcluster.processes import CGROUP_FS, mounts_under


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


CNI_STYLES = ("bridge", "ptp")
# Work started on the clusters by one test and awaited by a later one (the upstream suites:
# tests/cluster/test_conformance.py); the clusters are not torn down under it.
BACKGROUND: dict[str, Future[list[str]]] = {}


@pytest.fixture(scope="session")
def clusters() -> Iterator[dict[str, Cluster]]:
    """A two-node cluster in each CNI style: bridge (address dispatch), ptp (routed,
    interface dispatch), up at the same time for the whole session. Tests leave them as they
    found them."""
    layouts = {cni: fresh_layout(cni) for cni in CNI_STYLES}
    made = {cni: Cluster(lay) for cni, lay in layouts.items()}
    try:
        build_all(lambda s: None)  # once, before both clusters load them
        with ThreadPoolExecutor(len(made)) as pool:
            ups = [pool.submit(c.up, lambda s: None) for c in made.values()]
            for f in ups:
                f.result()
        yield made
    finally:
        wait(BACKGROUND.values())  # a started suite still uses the clusters
        BACKGROUND.clear()
        for lay in layouts.values():
            down(lay, say=lambda s: None)
        left = {lay.name: leftovers(lay) for lay in layouts.values()}
        assert not any(left.values()), f"clusters left {left}"


@pytest.fixture(scope="session", params=CNI_STYLES)
def cluster(request: pytest.FixtureRequest, clusters: dict[str, Cluster]) -> Cluster:
    """One of the session's clusters, for tests that run once per CNI style."""
    return clusters[request.param]
