"""The drop log on real packets, both CNI styles and both backends: every dropped probe
comes back from NFLOG as one record naming the pod whose chain dropped it, the direction,
the peer, the port, and the policies that isolate the pod there (or the ClusterNetworkPolicy
rule that denied), written here from the manifests, not computed by policyd."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from policyd.dataplane.droplog import DropLog
from policyd.lab.netns import entered
from policyd.observe.droplog import CompiledSource, DropLogger
from tests.kernel.conftest import ALLOW_FRONTEND, VARIANTS, kernel_cluster

ALSO_OPS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: also-ops, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: ops}}}]
"""
U1_EGRESS_IPBLOCK = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: u1-to-node-2, namespace: default}
spec:
  podSelector: {matchLabels: {app: unallowed}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.244.1.0/24, except: [10.244.1.11/32]}}]
"""
DNS_ONLY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-only, namespace: other}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: dns, protocol: UDP}]
"""
DENY_U1 = json.dumps({
    "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": "no-unallowed"},
    "spec": {"tier": "Admin", "priority": 3, "subject": {"namespaces": {}},
             "ingress": [{"name": "keep-out", "action": "Deny",
                          "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "unallowed"}}}}]}]}})


@contextmanager
def logging_cluster(variant: str, drop_log: DropLog) -> Iterator[tuple]:
    """A kernel cluster with this drop log, and a drop logger bound in node-1's namespace."""
    with kernel_cluster(variant, drop_log) as cluster:
        lines: list[str] = []
        agent = cluster.agent
        logger = DropLogger(drop_log.group, "node-1", CompiledSource(agent.compiler, pods=lambda: agent.syncer.desired.pods),
                            lines.append, fmt="json")
        with entered(agent.netns):  # the socket is bound in node-1's namespace, where the rules are
            logger.start()
        try:
            yield cluster, lines, logger
        finally:
            logger.stop()


@pytest.fixture(params=VARIANTS)
def logged(request):
    with logging_cluster(request.param, DropLog(group=7, rate=50, burst=50)) as got:
        yield got


@pytest.fixture(params=VARIANTS)
def accepts_logged(request):
    with logging_cluster(request.param, DropLog(group=7, rate=50, burst=50, accepts=50)) as got:
        yield got


def wait_for(lines: list[str], start: int = 0, **want: object) -> dict:
    """The first record from `lines[start]` on with every field of `want`."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for line in lines[start:]:
            r = json.loads(line)
            if all(r.get(k) == v for k, v in want.items()):
                return r
        time.sleep(0.05)
    raise AssertionError(f"no drop record with {want}; got {[json.loads(x) for x in lines]}")


def barrier(lines: list[str], send: Callable[[], object], **want: object) -> None:
    """Send a packet that is logged and wait for its record: the records of every packet
    sent before it are in `lines` by then (one NFLOG group, read and written in order), so
    what is missing now was never logged. No fixed sleep decides that nothing happened."""
    start = len(lines)
    send()
    wait_for(lines, start, **want)


def test_each_drop_names_its_cause(logged):
    cluster, lines, logger = logged
    cluster.apply(ALLOW_FRONTEND, DNS_ONLY)
    assert cluster.sync(full=True).ops == 0, "the log rules read back as written: a full sync changes nothing"

    # Ingress isolation: u1 → b1 (both on node-1).
    assert not cluster.can("u1", "b1", "TCP", 80)
    r = wait_for(lines, pod="default/b1", direction="ingress", src="default/u1")
    assert r["dst"] == "default/b1" and r["protocol"] == "TCP" and r["port"] == 80 and r["node"] == "node-1"
    assert r["tier"] == "NetworkPolicy" and r["policies"] == ["default/allow-frontend"]
    assert r["srcIP"] == cluster.ip("u1") and r["dstIP"] == cluster.ip("b1")

    # Egress isolation by an ipBlock with an except: u1 → b2 (10.244.1.11, excepted) is dropped at
    # u1's egress; a remote pod is still named.
    cluster.apply(ALLOW_FRONTEND, DNS_ONLY, U1_EGRESS_IPBLOCK)
    assert cluster.ip("b2") == "10.244.1.11"
    assert not cluster.can("u1", "b2", "UDP", 80)
    r = wait_for(lines, pod="default/u1", direction="egress", dst="default/b2")
    assert r["protocol"] == "UDP" and r["port"] == 80 and r["policies"] == ["default/u1-to-node-2"]
    assert cluster.can("u1", "f2"), "the rest of the block is allowed"

    # A named port: o1 allows only UDP dns; TCP 80 from f1 is dropped at o1's ingress.
    assert not cluster.can("f1", "o1", "TCP", 80)
    r = wait_for(lines, pod="other/o1", direction="ingress", src="default/f1")
    assert r["policies"] == ["other/dns-only"] and r["port"] == 80

    # Nothing is logged for what is allowed.
    assert cluster.can("f1", "b1") and cluster.can("f1", "o1", "UDP", 53)
    barrier(lines, lambda: cluster.can("u1", "b1", "TCP", 80), src="default/u1", dst="default/b1")
    allowed = [json.loads(x) for x in lines if json.loads(x).get("src") == "default/f1" and json.loads(x).get("dst") == "default/b1"]
    assert not allowed, allowed
    assert logger.counters.unattributed == 0 and logger.counters.queue_full == 0


def test_several_isolating_policies_and_an_admin_deny(logged):
    cluster, lines, logger = logged
    cluster.apply(ALLOW_FRONTEND, ALSO_OPS)
    assert not cluster.can("u1", "b1")
    r = wait_for(lines, pod="default/b1", direction="ingress", src="default/u1")
    assert r["policies"] == ["default/allow-frontend", "default/also-ops"], "every policy that isolates b1, sorted"
    assert "isolated by 2 NetworkPolicies" in r["cause"]

    cluster.apply(ALLOW_FRONTEND, ALSO_OPS, DENY_U1)
    lines.clear()
    assert not cluster.can("u1", "f1"), "f1 is isolated too (also-ops), but the Admin Deny comes first"
    r = wait_for(lines, pod="default/f1", direction="ingress", src="default/u1")
    assert r["tier"] == "Admin" and r["policies"] == ["no-unallowed"]
    assert r["rule"] == "Admin ClusterNetworkPolicy no-unallowed, ingress rule 0 'keep-out'"
    assert r["cause"] == "denied by " + r["rule"]
    assert cluster.sync(full=True).ops == 0
    assert logger.counters.by_direction.get("ingress", 0) >= 2


def test_without_a_drop_log_there_is_no_log_rule(cluster):
    cluster.apply(ALLOW_FRONTEND)
    dump = cluster.agent.dump()
    assert "pd-" not in dump and "NFLOG" not in dump and " log " not in dump


TRY_DEFAULT_DENY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: try-frontend-only, namespace: default, annotations: {policyd.io/audit: "true"}}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
"""
TRY_ALLOW_ALL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: try-allow-all, namespace: default, annotations: {policyd.io/audit: "true"}}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress: [{}]
"""


def test_audit_mode_logs_what_it_would_drop_and_enforces_nothing(logged):
    cluster, lines, _ = logged
    cluster.apply(TRY_DEFAULT_DENY)
    assert cluster.can("u1", "b1") and cluster.can("u1", "b1", "UDP", 80), "an audited policy narrows nothing"
    r = wait_for(lines, pod="default/b1", direction="ingress", src="default/u1", tier="Audit")
    assert r["msg"] == "packet would be dropped (audit mode)" and r["policies"] == ["default/try-frontend-only"]
    assert cluster.can("f1", "b1")
    barrier(lines, lambda: cluster.can("u1", "b1"), pod="default/b1", src="default/u1", tier="Audit")
    assert not [x for x in lines if json.loads(x).get("src") == "default/f1"], "what its rules allow is not logged"
    assert cluster.sync(full=True).ops == 0

    # Audited next to an enforced policy: it widens nothing either, and says nothing (enforcing
    # it too could only allow more).
    cluster.apply(ALLOW_FRONTEND, TRY_ALLOW_ALL)
    lines.clear()
    assert not cluster.can("u1", "b1")
    r = wait_for(lines, pod="default/b1", direction="ingress", src="default/u1")
    assert r["tier"] == "NetworkPolicy" and r["policies"] == ["default/allow-frontend"]
    assert not [x for x in lines if json.loads(x)["tier"] == "Audit"]


def test_audit_mode_without_the_drop_log_changes_nothing(cluster):
    cluster.apply(TRY_DEFAULT_DENY)
    assert cluster.can("u1", "b1") and cluster.can("f1", "b1")
    assert cluster.sync(full=True).ops == 0


def test_sampled_accept_logging_names_the_rule_that_allowed(accepts_logged):
    cluster, lines, _ = accepts_logged
    cluster.apply(ALLOW_FRONTEND, DENY_U1)
    assert cluster.sync(full=True).ops == 0
    assert cluster.can("f1", "b1")
    r = wait_for(lines, pod="default/b1", direction="ingress", src="default/f1", accepted=True)
    assert r["msg"] == "packet accepted (sampled)" and r["cause"] == "allowed by default/allow-frontend ingress[0] from[0]"
    assert r["policies"] == ["default/allow-frontend"] and r["tier"] == "NetworkPolicy"
    assert not cluster.can("u1", "b1")
    r = wait_for(lines, pod="default/b1", src="default/u1")
    assert r["accepted"] is False and r["tier"] == "Admin", "drops are still logged as drops"
