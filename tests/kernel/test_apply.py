"""Diff/apply guarantees on the real kernel: zero-op no-change sync, atomic failure,
adoption after an agent restart with traffic running, anti-spoofing, cleanup."""

from __future__ import annotations

import threading
import time

import pytest

from harness.node_agent import NodeAgent
from harness.tampering import drop_family
from policyd.dataplane.backend import ApplyError
from policyd.ipt.spell import IptTransaction
from policyd.lab.netns import sh
from policyd.nft.spell import Transaction
from tests.helpers import EXAMPLE_POLICY

POLICY = EXAMPLE_POLICY.read_text()


def test_unchanged_state_sends_zero_operations(cluster):
    cluster.apply(POLICY)
    assert cluster.sync().ops == 0, "partial sync with nothing touched"
    assert cluster.sync(full=True).ops == 0, "full sync: the kernel's table reads back equal"


def test_failed_transaction_leaves_ruleset_intact_and_next_sync_is_full(cluster, monkeypatch):
    cluster.apply(POLICY)
    before = cluster.agent.dump()
    backend = cluster.agent.backend
    real_apply = backend.apply

    def broken(tx: Transaction | IptTransaction) -> None:
        # The real transaction plus one command the kernel refuses: all or nothing.
        if isinstance(tx, IptTransaction):
            tx.rules[4].append("-X POLICYD-NO-SUCH-CHAIN")
        else:
            tx.add("delete", {"chain": {"family": "inet", "table": "policyd", "name": "no-such-chain"}})
        real_apply(tx)

    monkeypatch.setattr(backend, "apply", broken)
    cluster.agent.compiler.delete_policy("default/allow-frontend-to-backend")
    with pytest.raises(ApplyError):
        cluster.sync()
    assert cluster.agent.dump() == before, "nothing of the batch was applied"
    assert not cluster.can("u1", "b1"), "the previous policy is still enforced"
    monkeypatch.setattr(backend, "apply", real_apply)
    result = cluster.sync()
    assert result.full and result.ops > 0, "after a failure the next sync is a full one"
    assert cluster.can("u1", "b1")


def test_a_deleted_pods_chain_is_unreferenced_then_gone_within_two_syncs(cluster):
    """kube-proxy's order: the sync that removes a pod's dispatch entry only flushes its
    chain (no transaction deletes a chain an entry it removes pointed at); the chain is
    deleted by a sync at least a second later, which the agent's runner makes due."""
    from policyd.lab.netns import entered

    cluster.apply(POLICY)
    mine = [n for n, c in cluster.agent.syncer.desired.ruleset.chains.items()
            if any(getattr(r, "origin", None) is not None and r.origin.role.startswith("default/b1 ") for r in c.rules)]
    assert mine, "b1's chains"
    cluster.agent.compiler.delete_pod(cluster.pods["b1"].key)
    first = cluster.sync()
    dump = cluster.agent.dump()
    assert all(n in dump for n in mine), "flushed, still there"
    with entered(cluster.agent.netns):
        held = cluster.agent.backend.read()
    assert held is not None and all(not held.chains[n].rules for n in mine)
    assert not any(target in mine for m in held.maps.values() for _, target in m.elements), "nothing points at them"
    assert first.ops > 0 and cluster.agent.syncer.deletion_due() is not None
    assert cluster.sync().ops == 0, "not before its second"
    second = cluster.settle()
    assert second.ops == len(mine) and not any(n in cluster.agent.dump() for n in mine), "gone at the second sync"
    assert cluster.agent.syncer.deletion_due() is None and cluster.sync(full=True).ops == 0


def test_restart_adopts_the_table_without_a_gap(cluster):
    cluster.apply(POLICY)
    results: list[tuple[bool, bool]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            results.append((cluster.can("f1", "b1"), cluster.can("u1", "b1")))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.5)
        old = cluster.agent
        # The agent goes away (its table stays), a new one starts with fresh state.
        new = NodeAgent(old.netns, "node-1", old.syncer.cfg.mode, backend=old.kind)
        new.load(cluster.namespaces, cluster.pods.values(), cluster.policies.values())
        first = new.sync()
        cluster.agent = new
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()
    assert first.full and first.ops == 0, f"adoption applies only the diff, here none ({first.ops} ops)"
    assert len(results) >= 3
    assert all(allowed and not denied for allowed, denied in results), results


@pytest.mark.parametrize("cluster", ["routed-nftables", "routed-iptables"], indirect=True)
def test_anti_spoofing_in_interface_mode(cluster):
    """A packet from a pod's interface must carry that pod's address. Counted where it
    would arrive (a counter in the destination pod's own namespace), with a control run
    without our table showing the spoofed packet does get through otherwise."""
    f1 = cluster.topo.pod(cluster.pods["f1"].key)
    o1 = cluster.topo.pod(cluster.pods["o1"].key)
    fake = "10.244.0.99"
    sh("ip", "addr", "add", f"{fake}/32", "dev", "eth0", ns=f1.netns)
    sh("nft", "add table inet probe; add chain inet probe in { type filter hook input priority 0; };"
       f" add rule inet probe in ip saddr {fake} counter", ns=o1.netns)

    def count() -> int:
        text = sh("nft", "list", "chain", "inet", "probe", "in", ns=o1.netns).stdout
        return int(text.split("packets ")[1].split()[0])

    def arrived() -> int:
        before = count()
        sh("ping", "-c1", "-W1", "-I", fake, cluster.ip("o1"), ns=f1.netns, check=False)
        return count() - before

    cluster.agent.remove_all()
    assert arrived() >= 1, "control: without policyd the spoofed packet is forwarded"
    assert cluster.sync(full=True).ops > 0
    # The control's flow got a reply and is now an established conntrack entry, which
    # (like any established flow) would pass; only new flows are checked.
    sh("conntrack", "-F", ns=cluster.agent.netns)
    assert arrived() == 0, "with policyd it is dropped at the pod's interface"
    assert cluster.can("f1", "o1", "ICMP"), "the pod's own address still works"


def test_cleanup_removes_what_policyd_owns_only(cluster):
    node = cluster.agent.netns
    cluster.apply(POLICY)
    assert not cluster.can("u1", "b1"), "enforced before cleanup"
    import sys

    if cluster.backend == "iptables":
        sh("iptables-legacy", "-N", "SOMEONE-ELSE", ns=node)
        sh("iptables-legacy", "-A", "FORWARD", "-j", "SOMEONE-ELSE", ns=node)
        sh("ipset", "create", "someone-else", "hash:ip", ns=node)
        # Foreign objects under our prefix, made after the agent's last sync: not ours by
        # name, so cleanup leaves them (it once removed anything POLICYD-* / policyd-*).
        sh("iptables-legacy", "-N", "POLICYD-FOO", ns=node)
        sh("iptables-legacy", "-A", "FORWARD", "-j", "POLICYD-FOO", ns=node)
        sh("ipset", "create", "policyd-foo", "hash:ip", ns=node)
        out = sh(sys.executable, "-m", "policyd", "cleanup", "--backend", "iptables", ns=node).stdout
        assert "removed iptables-legacy chains POLICYD-* and ipsets policyd-*" in out
        rules = sh("iptables-legacy-save", ns=node).stdout + sh("ip6tables-legacy-save", ns=node).stdout
        assert "-A FORWARD -j SOMEONE-ELSE" in rules and "-A FORWARD -j POLICYD-FOO" in rules
        assert [line for line in rules.splitlines() if "POLICYD" in line] == [":POLICYD-FOO - [0:0]", "-A FORWARD -j POLICYD-FOO"]
        sets = sh("ipset", "list", "-n", ns=node).stdout.split()
        assert sorted(sets) == ["policyd-foo", "someone-else"], sets
        sh("iptables-legacy", "-D", "FORWARD", "-j", "POLICYD-FOO", ns=node)
        sh("iptables-legacy", "-X", "POLICYD-FOO", ns=node)
        sh("ipset", "destroy", "policyd-foo", ns=node)
    else:
        sh("nft", "add", "table", "inet", "someone-else", ns=node)
        out = sh(sys.executable, "-m", "policyd", "cleanup", ns=node).stdout
        assert "removed table inet policyd" in out
        tables = sh("nft", "list", "tables", ns=node).stdout
        assert "someone-else" in tables and "policyd" not in tables
    assert cluster.can("u1", "b1"), "cleanup lifted the isolation"
    out = sh(sys.executable, "-m", "policyd", "cleanup", "--backend", cluster.backend, ns=node).stdout
    assert out.startswith("nothing to remove"), out


def test_cleanup_refuses_what_policyd_did_not_make(cluster):
    """`--table NAME` names what to remove, but only what carries policyd's mark goes:
    another program's table or chains of that name stay, with a clear refusal (exit 2)."""
    import subprocess
    import sys

    node = cluster.agent.netns
    if cluster.backend == "iptables":
        sh("iptables-legacy", "-N", "KUBE-FORWARD", ns=node)
        sh("iptables-legacy", "-A", "KUBE-FORWARD", "-j", "ACCEPT", ns=node)
        args, listing = ["--backend", "iptables", "--table", "kube"], ["iptables-legacy-save"]
    else:
        sh("nft", "add", "table", "inet", "filter", ns=node)
        args, listing = ["--table", "filter"], ["nft", "list", "tables"]
    proc = subprocess.run(["ip", "netns", "exec", node, sys.executable, "-m", "policyd", "cleanup", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not removing" in proc.stderr, (proc.returncode, proc.stderr)
    after = sh(*listing, ns=node).stdout
    assert ("KUBE-FORWARD" in after) if cluster.backend == "iptables" else ("table inet filter" in after)
    bad = subprocess.run([sys.executable, "-m", "policyd", "cleanup", "--table", "x y"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--table 'x y'" in bad.stderr


HOLDER = """
import sys, time
from policyd.reconcile.presence import wait_to_claim
claim = wait_to_claim(sys.argv[1], "policyd", lambda line: print(line, flush=True), every=0.5)
print("claimed", flush=True)
time.sleep(120)
"""


def test_cleanup_refuses_while_an_agent_runs_and_a_second_agent_waits(cluster):
    """An agent would re-create at once what cleanup removes (CI once ran cleanup while a
    terminating DaemonSet pod still synced): cleanup refuses while an agent holds the
    ruleset in this namespace, --force overrides; a second agent for the same ruleset waits
    for the first to end (even killed with SIGKILL), and an agent in another namespace or
    for another backend does not count. The holders here use the agents' own claim
    (`policyd run` and the lab agent call wait_to_claim first); the real agent is checked
    on the real cluster (tests/cluster/test_agent.py)."""
    import select
    import subprocess
    import sys

    node, kind = cluster.agent.netns, cluster.agent.kind
    other = "iptables" if kind == "nftables" else "nftables"
    cluster.apply(POLICY)

    def holder(backend: str, ns: str = node) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", HOLDER, backend],
                                stdout=subprocess.PIPE, text=True)

    def cleanup(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", node, sys.executable, "-m", "policyd", "cleanup", "--backend", kind,
                               *extra], capture_output=True, text=True)

    def line(p: subprocess.Popen[str]) -> str:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 10)
        assert ready, "no line within 10 s"
        return p.stdout.readline().strip()

    first = holder(kind)
    unrelated = [holder(other), holder(kind, ns=cluster.topo.nodes["node-2"].netns)]
    second = None
    try:
        assert line(first) == "claimed"
        for p in unrelated:
            assert line(p) == "claimed", "another backend or namespace"
        refused = cleanup()
        assert refused.returncode == 2 and "a policyd agent running in this network namespace" in refused.stderr, refused
        assert not cluster.can("u1", "b1"), "the ruleset is still in place"

        second = holder(kind)
        assert "waiting for it to end" in line(second)
        first.kill()
        first.wait()
        while (said := line(second)).startswith("another policyd agent"):
            pass
        assert said == "claimed", "the claim is free once its holder is gone"
        assert cleanup().returncode == 2, "the second agent holds it now"
        forced = cleanup("--force")
        assert forced.returncode == 0 and forced.stdout.startswith("removed"), forced
        assert cluster.can("u1", "b1")
    finally:
        for p in (first, second, *unrelated):
            if p is not None:
                p.kill()
                p.wait()
    assert cleanup().stdout.startswith("nothing to remove"), "no holder left: cleanup runs"


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("variant", ["routed-iptables", "bridge-iptables"])
def test_chains_lost_in_one_family_are_recreated(variant, family):
    """Every POLICYD-* chain gone from one family only (the other family, the ipsets and
    the empty egress dispatch chain's twin still there): the one-second check names it, a
    full sync re-creates it, and an agent started on such a node programs it too. It once
    read the missing empty dispatch chain as present and empty, and every sync failed."""
    from tests.kernel.conftest import kernel_cluster

    with kernel_cluster(variant) as cluster:
        cluster.apply(POLICY)
        netns = cluster.agent.netns
        assert not cluster.can("u1", "b1", family=family)
        drop_family(netns, family)
        assert cluster.can("u1", "b1", family=family), "the tamper opened the node (else this test proves nothing)"
        drift = [str(d) for d in cluster.agent.check()]
        assert any(f"(IPv{family})" in d for d in drift), drift
        repaired = cluster.sync(full=True)
        assert repaired.ops > 0 and repaired.drift
        assert cluster.agent.check() == []
        assert cluster.sync(full=True).ops == 0, "the repaired kernel reads back equal to desired"
        for fam in (4, 6):
            assert not cluster.can("u1", "b1", family=fam) and cluster.can("f1", "b1", family=fam)

        # An agent starting on a node left that way programs it.
        drop_family(netns, family)
        old = cluster.agent
        new = NodeAgent(old.netns, "node-1", old.syncer.cfg.mode, backend=old.kind)
        new.load(cluster.namespaces, cluster.pods.values(), cluster.policies.values())
        assert new.sync().ops > 0
        cluster.agent = new
        assert cluster.sync(full=True).ops == 0
        assert not cluster.can("u1", "b1", family=family) and cluster.can("f1", "b1", family=family)


@pytest.mark.parametrize("logged", [False, True])
def test_random_policy_changes_edit_chains_in_place_and_the_kernel_holds_desired(logged):
    """The in-place chain edits (deletes by handle, appends; handles read by a raw netlink
    dump of the one chain) against the real kernel: after each of 120 random policy changes
    a full sync that lists the table finds nothing to do."""
    import uuid

    from policyd.lab.netns import add_namespace, delete_namespaces, entered
    from policyd.nft.backend import NftBackend
    from tests.chain_edits import run

    prefix = f"pde{uuid.uuid4().hex[:6]}"
    try:
        add_namespace(f"{prefix}-n")
        with entered(f"{prefix}-n"):
            backend = NftBackend()
            transactions: list[Transaction] = []
            apply = backend.apply

            def recorded(tx: Transaction) -> None:
                transactions.append(tx)
                apply(tx)

            backend.apply = recorded  # type: ignore[method-assign]
            backend.transactions = transactions  # type: ignore[attr-defined]
            out = run(backend, 120, seed=11, logged=logged)
        assert out.edited > 40 and out.refilled < out.edited, out
    finally:
        delete_namespaces(prefix)
