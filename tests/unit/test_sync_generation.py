"""The kernel's ruleset generation, modelled by the fake backend: when it proves nothing was
changed, a full sync and the drift check list nothing; anything else lists, finds and
repairs. (The real kernel's generation is checked in tests/kernel/test_generation.py.)"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from policyd.dataplane.backend import ApplyError
from policyd.dataplane.config import DispatchMode, RenderConfig
from policyd.nft.fake import FakeBackend
from policyd.reconcile.syncer import Syncer
from policyd.whatif.world import load_world


@pytest.fixture
def synced():
    w = load_world(["examples/cluster", "examples/policies/allow-frontend-to-backend.yaml",
                    "examples/policies/default-deny-egress-allow-dns.yaml"])
    c = w.compile("node-1")
    fb = FakeBackend()
    fb.gen = 100
    s = Syncer(c, fb, RenderConfig(mode=DispatchMode.ADDRESS))
    s.sync()
    assert s.verified == fb.gen, "the first sync listed the kernel and was the only commit since"
    return w, c, s, fb


def peer_set(fb: FakeBackend) -> str:
    return next(n for n, st in fb.ruleset.sets.items() if not n.startswith("pod-") and len(st.elements) > 1)


def test_nothing_changed_nothing_listed(synced):
    _, _, s, fb = synced
    reads = len(fb.reads)
    r = s.sync(full=True, rebuild=True)
    assert r.full and r.ops == 0 and not r.listed
    assert s.check() == [] and s.check() == []
    assert len(fb.reads) == reads, "neither the full resync nor the checks listed anything"
    assert s.verified == fb.gen


def test_our_commits_keep_the_generation_known(synced):
    w, c, s, fb = synced
    pod = next(p for p in w.pods if p.node == "node-2")
    c.upsert_pod(replace(pod, name="new", ips=(ipaddress.ip_address("10.244.2.99"),)))
    reads = len(fb.reads)
    assert s.sync().ops > 0 and s.verified == fb.gen
    assert s.sync(full=True).ops == 0 and len(fb.reads) == reads


def test_an_element_swapped_behind_our_back_is_found_by_the_next_check(synced):
    _, _, s, fb = synced
    name = peer_set(fb)
    st = fb.ruleset.sets[name]
    first = sorted(st.elements, key=str)[0]
    fb.ruleset.sets[name] = replace(st, elements=(st.elements - {first}) | {"10.99.99.99"})  # same count
    fb.gen += 1  # the kernel numbers every commit, whoever makes it
    assert [str(d) for d in s.check()] == [f"set-elements {name}"]
    r = s.sync(full=True)
    assert r.listed and r.ops > 0 and fb.read().same_as(s.desired.ruleset)
    assert s.verified == fb.gen and s.check() == []


def test_a_foreign_commit_is_looked_at_once_then_trusted_again(synced):
    _, _, s, fb = synced
    fb.gen += 1  # another table's commit (kube-proxy's, say): nothing of ours changed
    reads = len(fb.reads)
    assert s.check() == [] and fb.reads[reads:] == [True], "one complete listing"
    assert s.verified == fb.gen
    assert s.check() == [] and s.sync(full=True).ops == 0 and len(fb.reads) == reads + 1


def test_a_foreign_commit_during_our_sync_leaves_the_generation_unknown(synced, monkeypatch):
    w, c, s, fb = synced
    real_apply = fb.apply

    def raced(tx):  # type: ignore[no-untyped-def]
        real_apply(tx)
        fb.gen += 1  # someone else committed right after us

    monkeypatch.setattr(fb, "apply", raced)
    pod = next(p for p in w.pods if p.node == "node-2")
    c.upsert_pod(replace(pod, name="new", ips=(ipaddress.ip_address("10.244.2.99"),)))
    s.sync()
    assert s.verified is None
    monkeypatch.setattr(fb, "apply", real_apply)
    assert s.sync(full=True).listed, "unknown: the next full sync lists the kernel"


def test_a_commit_of_ours_that_moved_nothing_is_not_trusted(synced, monkeypatch):
    """Had a batch of ours changed nothing (generation unmoved) while another commit moved
    it by one, counting would mistake theirs for ours: a mismatch is never trusted."""
    w, c, s, fb = synced
    real_apply = fb.apply

    def unmoved(tx):  # type: ignore[no-untyped-def]
        real_apply(tx)
        fb.gen -= 1  # as if the kernel had found nothing to change

    monkeypatch.setattr(fb, "apply", unmoved)
    pod = next(p for p in w.pods if p.node == "node-2")
    c.upsert_pod(replace(pod, name="new", ips=(ipaddress.ip_address("10.244.2.99"),)))
    s.sync()
    assert s.verified is None


def test_a_periodic_rebuild_writes_pending_changes_without_listing_or_false_drift(synced):
    """Pending element changes absorbed by the rebuild's comparison are still written, and
    not mistaken for drift (believed already shows them)."""
    w, c, s, fb = synced
    pod = next(p for p in w.pods if p.node == "node-2")
    c.upsert_pod(replace(pod, name="new", ips=(ipaddress.ip_address("10.244.2.99"),)))
    r = s.sync(full=True, rebuild=True)
    assert r.ops > 0 and not r.listed and not r.drift and s.divergences == 0
    assert fb.read().same_as(s.desired.ruleset)
    fb.gen += 1  # the same with the generation unknown: listed, still no drift reported
    c.delete_pod(f"{pod.namespace}/new")
    r = s.sync(full=True, rebuild=True)
    assert r.ops > 0 and r.listed and not r.drift, r.drift
    assert fb.read().same_as(s.desired.ruleset)


def test_after_a_failure_the_generation_is_unknown(synced):
    w, c, s, fb = synced
    fb.fail_next = True
    c.delete_policy("default/allow-frontend-to-backend")
    with pytest.raises(ApplyError):
        s.sync()
    assert s.verified is None
    r = s.sync()
    assert r.full and r.listed and s.verified == fb.gen


def test_the_idle_tick_is_done_without_the_worker_only_while_the_generation_holds(synced):
    """The agent's once-a-second check, taken on the event loop's thread (no hop to the
    worker) when the kernel's generation has not moved; anything else goes to run_once."""
    from policyd.reconcile.runner import SyncRunner

    w, c, s, fb = synced
    now = [1000.0]
    r = SyncRunner(s, resync_every=300, clock=lambda: now[0])
    r.requested = False
    r.next_full = now[0] + 300
    r.next_check = now[0]
    reads = len(fb.reads)
    assert r.idle_check(now[0]) and r.next_check == now[0] + 1 and len(fb.reads) == reads
    assert not r.idle_check(now[0] + 0.5), "not due yet"
    fb.gen += 1  # someone committed
    assert not r.idle_check(now[0] + 1), "the generation moved: run_once looks"
    fb.gen -= 1
    r.request()
    assert not r.idle_check(now[0] + 1), "a sync was asked for"
    r.requested = False
    s.verified = None
    assert not r.idle_check(now[0] + 1), "nothing verified yet"
