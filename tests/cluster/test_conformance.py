"""The upstream suites against policyd installed by its chart, on the session's real cluster:
bridge CNI with the nftables backend, ptp with iptables (the other two combinations are one
`scripts/conformance.sh` away; docs/conformance.md has all four).

* Kubernetes' NetworkPolicy e2e specs (`[sig-network] Netpol` of the pinned release, unchanged;
  realcluster/conformance.py): every spec of the focus must pass except the SCTP-connectivity
  ones, which this kernel cannot run (no SCTP sockets) and which are reported as skipped.
* network-policy-api's ClusterNetworkPolicy conformance tests (realcluster/cnp_conformance.py):
  every subtest of the claimed features must pass except those that probe SCTP.

Both clusters run their suites at the same time (one thread each, the NetworkPolicy suite
then the ClusterNetworkPolicy suite, the chart installed once for both): the suites mostly
wait for probe timeouts, so side by side they take little longer than one cluster's.

And they run in the background: `test_upstream_suites_start` starts them once every other
test of the clusters has run (tests/conftest.py orders it there), the tests that need no
cluster (unit, kernel, lab) run meanwhile, and `test_upstream_suites`, the session's last
test, awaits and judges them. Run alone, the one starts what the other awaits."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from realcluster import cnp_conformance, conformance
from realcluster.cluster import Cluster
from realcluster.conformance import Report
from realcluster.walkthrough import RELEASE, RELEASE_NS, install_chart, uninstall_chart
from tests.cluster.conftest import BACKGROUND

BACKEND = {"bridge": "nftables", "ptp": "iptables"}


def run_checked(cluster: Cluster, run: Callable[[str, Path, Callable[[str], None]], Report]) -> Report:
    """Run a suite against the installed chart (given the backend, an output directory and
    where to say progress); no subtest may have failed."""
    backend = BACKEND[cluster.layout.cni]
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="policyd-e2e-") as out:
        report = run(backend, Path(out), lines.append)
    failed = [f"{s.name}: {s.reason}" for s in report.specs if s.state == "failed"]
    if failed:  # what the agents said, while they still run: CI keeps nothing else
        lines += ["agent logs (last 60 lines of each):",
                  *cluster.kubectl("logs", "-n", RELEASE_NS, f"daemonset/{RELEASE}", "--all-pods", "--prefix",
                                   "--tail=60", check=False).stdout.splitlines()]
    assert not failed, "\n".join(failed + lines)
    return report


def netpol_suite(cluster: Cluster) -> None:
    lay = cluster.layout
    report = run_checked(cluster, lambda backend, out, say: conformance.run_suite(
        cluster, backend, out, conformance.command_line(lay.cni, backend, lay.proxy_mode), say=say))
    skipped = [s.name for s in report.specs if s.state == "skipped"]
    assert skipped and all(re.search("|".join(conformance.SKIPS), n) for n in skipped), skipped
    assert report.count("passed") >= 40, f"only {report.count('passed')} specs passed: did the focus still select the suite?"


def cluster_network_policy_suite(cluster: Cluster) -> None:
    lay = cluster.layout
    report = run_checked(cluster, lambda backend, out, say: cnp_conformance.run_suite(
        cluster, backend, out, cnp_conformance.command_line(lay.cni, backend, lay.proxy_mode), say=say))
    reasons = {s.reason for s in report.specs if s.state == "skipped"}
    assert all(r == cnp_conformance.NO_SCTP or r.startswith("not supported: ") for r in reasons), reasons
    assert report.count("passed") >= 50, f"only {report.count('passed')} subtests passed: did the suite still run?"


def both_suites(cluster: Cluster) -> list[str]:
    """The chart installed, both suites, the chart removed: every failure, with what
    installing and removing the chart said."""
    failures = []
    lines: list[str] = []
    backend = BACKEND[cluster.layout.cni]
    install_chart(cluster, backend, lines.append)  # once for both suites: each cleans up its own objects
    try:
        for suite in (netpol_suite, cluster_network_policy_suite):
            try:
                suite(cluster)
            except AssertionError as e:
                failures.append(f"{suite.__name__} on {cluster.layout.cni}/{backend}: {e}")
    finally:
        uninstall_chart(cluster, backend, lines.append)
    return [f"{f}\n" + "\n".join(lines) for f in failures]


def every_cluster(clusters: dict[str, Cluster]) -> list[str]:
    with ThreadPoolExecutor(len(clusters)) as pool:
        return [f for result in pool.map(both_suites, clusters.values()) for f in result]


def start(clusters: dict[str, Cluster]) -> Future[list[str]]:
    if "upstream" not in BACKGROUND:
        BACKGROUND["upstream"] = ThreadPoolExecutor(1, thread_name_prefix="upstream-suites").submit(every_cluster, clusters)
    return BACKGROUND["upstream"]


def test_upstream_suites_start(clusters: dict[str, Cluster]) -> None:
    """Starts both suites on both clusters; test_upstream_suites judges them."""
    start(clusters)


def test_upstream_suites(clusters: dict[str, Cluster]) -> None:
    """Both suites on each cluster (bridge/nftables, ptp/iptables), the clusters side by
    side; every failure of every run is reported."""
    failures = start(clusters).result()
    BACKGROUND.pop("upstream", None)
    assert not failures, "\n\n".join(failures)
