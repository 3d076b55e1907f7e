"""The cluster command itself: `up` that fails half-way removes what it started, and `down`
works from what the kernel shows, without any record of the cluster (as after a crash)."""

from __future__ import annotations

import pytest

from realcluster import config
from realcluster.cluster import Cluster, ClusterError, down
from tests.cluster.conftest import fresh_layout, leftovers


def test_failed_up_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kubelet that refuses its flags (a real kubelet, exiting) fails `up`, which then
    takes down the control plane, containerd, mounts, cgroups and namespaces it made."""
    real = config.kubelet_args
    monkeypatch.setattr(config, "kubelet_args", lambda *a: [*real(*a), "--no-such-flag"])
    layout = fresh_layout("bridge")
    try:
        with pytest.raises(ClusterError, match="kubelet .* exited"):
            Cluster(layout).up(say=lambda s: None)
        assert not leftovers(layout)
    finally:
        down(layout, say=lambda s: None)


def test_down_after_a_crash_needs_no_records() -> None:
    """Everything started, then every record of it lost: `down` still finds and removes the
    processes (by namespace, cgroup, command line), mounts, cgroups and namespaces."""
    layout = fresh_layout("ptp")
    try:
        Cluster(layout).up(say=lambda s: None)
        for record in [layout.state / "cluster.json", *layout.state.glob("*/logs/*.pid")]:
            record.unlink()
        assert leftovers(layout)
        down(layout, say=lambda s: None)
        assert not leftovers(layout)
    finally:
        down(layout, say=lambda s: None)
