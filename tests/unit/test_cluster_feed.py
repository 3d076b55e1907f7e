"""The cluster agent's pure parts: CNI detection, settings checks, the feed's readiness
gate, relist repair and findings; and the test API server's watch semantics as the
`kubernetes` client sees them (list, watch from a resourceVersion, 410 after compaction)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.kubeapi.server import KubeAPI, merge_patch, strategic_merge
from policyd.compile.engine import Compiler
from policyd.dataplane.cni import detect_dispatch
from policyd.dataplane.config import DispatchMode, RenderConfig
from policyd.dataplane.render import LayoutRenderer
from policyd.kube.feed import ClusterFeed, ref_of
from policyd.kube.settings import AgentSettings, FailMode
from policyd.model.events import Delete
from policyd.nft.layout import LAYOUT


def cni(tmp: Path, name: str, conf: dict) -> None:
    (tmp / name).write_text(json.dumps(conf))


def test_a_listing_that_overlaps_ours_is_skipped_and_never_rolls_back():
    """The agent lists every kind itself, then kopf lists again: objects seen at the same or
    a newer resourceVersion are skipped (no work, no event), newer versions apply."""
    c = Compiler("n1")
    feed = ClusterFeed(c)
    assert feed.observe("Pod", None, pod("a", "x", rv=10)) is not None
    assert feed.observe("Pod", None, pod("a", "x", rv=10)) is None
    assert feed.observe("Pod", None, pod("a", "old", rv=9)) is None
    assert c.store.pods["default/a"].labels == {"app": "x"}
    assert feed.observe("Pod", "MODIFIED", pod("a", "y", rv=11)) is not None
    assert c.store.pods["default/a"].labels == {"app": "y"}
    assert feed.observe("Pod", "DELETED", pod("a", "y", rv=12)) is not None
    assert "default/a" not in c.store.pods


def test_a_node_status_update_is_not_a_change():
    """Every node's kubelet updates its status every few seconds and every agent receives it:
    only labels and addresses matter (nodes peers), so a status-only update asks for no sync."""
    def node(rv: int, labels: dict, ready: str, ip: str = "10.0.0.9") -> dict:
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n9", "labels": labels, "resourceVersion": str(rv)},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                           "conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": f"2026-12-05T00:00:{rv:02d}Z"}]}}

    c = Compiler("n1")
    feed = ClusterFeed(c)
    assert feed.observe("Node", None, node(1, {"zone": "a"}, "True")) is not None
    assert feed.observe("Node", "MODIFIED", node(2, {"zone": "a"}, "False")) is None
    assert feed.observe("Node", "MODIFIED", node(3, {"zone": "b"}, "False")) is not None
    assert feed.observe("Node", "MODIFIED", node(4, {"zone": "b"}, "False", ip="10.0.0.10")) is not None
    assert feed.observe("Node", "MODIFIED", node(3, {"zone": "a"}, "False")) is None, "older than what is held"
    assert c.store.nodes["n9"].labels == {"zone": "b"}
    # A Node is cluster-scoped: its deletion removes it (and its addresses from nodes peers).
    assert feed.observe("Node", "DELETED", node(5, {"zone": "b"}, "False")) is not None
    assert "n9" not in c.store.nodes


def test_an_update_that_changes_nothing_the_model_keeps_is_not_a_change():
    """A Pod's conditions or a policy's annotations a later version adds: same model, no sync."""
    c = Compiler("n1")
    feed = ClusterFeed(c)
    assert feed.observe("Pod", None, pod("a", "x", rv=10)) is not None
    ready = pod("a", "x", rv=11)
    ready["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert feed.observe("Pod", "MODIFIED", ready) is None
    assert feed.observe("Pod", "MODIFIED", pod("a", "y", rv=12)) is not None


def incarnation(body: dict, uid: str) -> dict:
    body["metadata"]["uid"] = uid
    return body


@pytest.mark.parametrize("with_uids", [True, False])
def test_a_late_delete_of_an_earlier_incarnation_never_removes_the_new_object(with_uids):
    """kopf handles each uid on its own worker, so an object deleted and re-created under the
    same name (a StatefulSet pod; the conformance suite's Baseline policy `default`, applied
    again by the next test) may reach the feed as: new ADDED, then old DELETED. The
    old delete must not remove the new object. Without uids, resourceVersions decide."""
    def tag(body: dict, uid: str) -> dict:
        return incarnation(body, uid) if with_uids else body

    c = Compiler("n1")
    feed = ClusterFeed(c)
    feed.observe("Pod", "ADDED", tag(pod("web-0", "old", rv=100), "u1"))
    assert feed.observe("Pod", "ADDED", tag(pod("web-0", "new", rv=102, ip="10.0.0.2"), "u2")) is not None
    assert feed.observe("Pod", "DELETED", tag(pod("web-0", "old", rv=101), "u1")) is None
    assert c.store.pods["default/web-0"].labels == {"app": "new"}
    assert feed.stats.stale_deletes == 1
    # the old incarnation's late MODIFIED is older than what we hold: skipped too
    assert feed.observe("Pod", "MODIFIED", tag(pod("web-0", "old2", rv=100), "u1")) is None
    assert c.store.pods["default/web-0"].labels == {"app": "new"}
    # the new incarnation's own delete still deletes
    assert feed.observe("Pod", "DELETED", tag(pod("web-0", "new", rv=103), "u2")) is not None
    assert "default/web-0" not in c.store.pods


def test_a_cluster_network_policy_recreated_under_its_name_survives_the_old_delete():
    """The exact sequence the ClusterNetworkPolicy conformance suite produced in CI: Baseline
    `default` (subject ravenclaw) created and deleted by one test, `default` (subject
    gryffindor) created by the next; kopf handled the new ADDED before the old DELETED."""
    def cnp(subject: str, rv: int, uid: str) -> dict:
        return {"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
                "metadata": {"name": "default", "resourceVersion": str(rv), "uid": uid},
                "spec": {"tier": "Baseline", "priority": 10,
                         "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": subject}}},
                         "egress": [{"name": "deny", "action": "Deny",
                                     "to": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}]}]}}

    c = Compiler("n1")
    feed = ClusterFeed(c)
    feed.observe("ClusterNetworkPolicy", "ADDED", cnp("ravenclaw", 10, "u1"))
    feed.observe("ClusterNetworkPolicy", "ADDED", cnp("gryffindor", 12, "u2"))
    feed.observe("ClusterNetworkPolicy", "DELETED", cnp("ravenclaw", 11, "u1"))
    held = c.store.cluster_policies["default"]
    assert held.namespace_selector.matches({"kubernetes.io/metadata.name": "gryffindor"})


def test_agent_is_ready_after_its_own_lists_and_posts_findings_for_listed_policies():
    """Readiness comes from the agent's own lists (kopf's index gate is quadratic in the
    number of objects); a policy kopf lists afterwards still gets its findings."""
    import asyncio

    from policyd.kube.agent import ClusterAgent
    from policyd.nft.fake import FakeBackend

    listed = {"Namespace": [], "Pod": [pod("b1", "b", ports=[{"name": "http", "containerPort": 80}])],
              "NetworkPolicy": [policy("named", rv=3, port="metrics")], "ClusterNetworkPolicy": [], "Node": []}
    calls = []

    async def lister(kind):
        calls.append(kind)
        if len(calls) == 1:
            raise OSError("API not reachable yet")
        for item in listed[kind]:  # one page per object
            yield [item], 5

    agent = ClusterAgent(AgentSettings("n1", dispatch_mode=DispatchMode.ADDRESS), DispatchMode.ADDRESS,
                         backend=FakeBackend(), lister=lister)
    assert not agent.feed.ready
    asyncio.run(agent.initial_lists(max_delay=0.01))
    assert agent.feed.ready and calls == ["Namespace", "Namespace", "Pod", "NetworkPolicy", "ClusterNetworkPolicy", "Node"]
    agent.sync_once()
    assert agent.ready
    findings = agent.observe("NetworkPolicy", None, policy("named", rv=3, port="metrics"))
    assert [f.reason for f in findings] == ["NamedPortUnresolved"]
    assert agent.observe("NetworkPolicy", None, policy("named", rv=3, port="metrics")) == []  # posted once


def test_rejected_objects_are_exported_and_the_record_of_posted_findings_is_bounded(monkeypatch):
    import asyncio

    from prometheus_client import generate_latest

    from policyd.kube import agent as agent_module
    from policyd.kube.agent import ClusterAgent
    from policyd.nft.fake import FakeBackend

    async def lister(kind):
        yield [], 5

    agent = ClusterAgent(AgentSettings("n1", dispatch_mode=DispatchMode.ADDRESS), DispatchMode.ADDRESS, backend=FakeBackend(), lister=lister)
    asyncio.run(agent.initial_lists())
    broken = pod("bad", "b", rv=7)
    broken["spec"]["containers"] = "not a list"
    agent.observe("Pod", "ADDED", broken)
    agent.sync_once()
    agent.sync_once()  # counted once, not again on every sync
    assert "policyd_rejected_objects_total 1.0" in generate_latest(agent.metrics.registry).decode()

    monkeypatch.setattr(agent_module, "MAX_POSTED", 3)
    agent.observe("Pod", None, pod("b1", "b", ports=[{"name": "http", "containerPort": 80}]))
    for rv in range(10, 16):
        agent.observe("NetworkPolicy", None, policy("named", rv=rv, port="metrics"))
    assert len(agent.posted) == 3 and max(k[1] for k in agent.posted) == "15"


@pytest.mark.quiet  # a 0.2 s bound on the event loop's stalls
def test_a_slow_commit_runs_off_the_event_loop_and_loses_no_event():
    """The kernel work of a sync runs on a worker thread: while a commit takes a second, the
    event loop (kopf's watches, /healthz, /readyz) keeps running, an event that arrives
    meanwhile is taken in, and the next sync programs it."""
    import asyncio
    import threading
    import time

    from aiohttp.test_utils import make_mocked_request

    from policyd.kube.agent import ClusterAgent
    from policyd.kube.http import http_apps
    from policyd.nft.fake import FakeBackend

    class SlowBackend(FakeBackend):
        def __init__(self) -> None:
            super().__init__()
            self.committing = threading.Event()

        def apply(self, tx) -> None:  # noqa: ANN001 - the fake's own transaction type
            self.committing.set()
            time.sleep(1.0)
            super().apply(tx)
            self.committing.clear()

    async def lister(kind):
        if kind == "Pod":
            yield [pod("b1", "b")], 5

    backend = SlowBackend()
    agent = ClusterAgent(AgentSettings("n1", dispatch_mode=DispatchMode.ADDRESS), DispatchMode.ADDRESS,
                         backend=backend, lister=lister)

    async def scenario() -> tuple[float, int, bool]:
        await agent.initial_lists()
        readyz = http_apps(agent)[agent.settings.health_port].router
        sync = asyncio.create_task(agent.sync_in_worker())
        deadline = time.monotonic() + 5
        while not backend.committing.is_set():
            assert time.monotonic() < deadline and not sync.done(), "the event loop never ran while the commit was under way"
            await asyncio.sleep(0.005)
        gaps, last, answered = [], time.monotonic(), 0
        while backend.committing.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            match = await readyz.resolve(make_mocked_request("GET", "/readyz"))
            answered += (await match.handler(make_mocked_request("GET", "/readyz"))).status in (200, 503)
            if len(gaps) == 5:  # an event in the middle of the commit
                agent.observe("NetworkPolicy", "ADDED", policy("late", rv=6))
        await sync
        before = set(backend.read().chains)
        agent.runner.min_interval = 0.0
        await agent.sync_in_worker()
        return max(gaps), answered, before

    worst_gap, answered, before = asyncio.run(scenario())
    assert worst_gap < 0.2, f"the event loop stalled for {worst_gap:.2f} s during the commit"
    assert answered >= 20, "/readyz did not answer during the commit"
    new = set(backend.read().chains) - before
    assert any(name.startswith("pod-in") for name in new), f"the policy that came during the commit was not programmed next: {new}"


def test_cni_detection_takes_the_first_file_in_lexical_order(tmp_path):
    cni(tmp_path, "10-calico.conflist", {"name": "k8s-pod-network", "plugins": [{"type": "calico"}, {"type": "portmap"}]})
    cni(tmp_path, "20-bridge.conf", {"type": "bridge"})
    d = detect_dispatch(tmp_path)
    assert d.mode is DispatchMode.INTERFACE and d.prefixes == ("cali",) and "10-calico.conflist" in d.reason
    (tmp_path / "10-calico.conflist").unlink()
    cni(tmp_path, "05-flannel.conflist", {"plugins": [{"type": "flannel"}]})
    assert detect_dispatch(tmp_path).mode is DispatchMode.ADDRESS


@pytest.mark.parametrize("files,why", [({}, "no CNI configuration"), ({"a.conf": "{"}, "not readable JSON"),
                                       ({"a.conf": json.dumps({"type": "mystery"})}, "not known to policyd")])
def test_cni_detection_refuses_to_guess(tmp_path, files, why):
    for n, text in files.items():
        (tmp_path / n).write_text(text)
    with pytest.raises(ValueError, match=why):
        detect_dispatch(tmp_path)


def test_settings_problems():
    ok = AgentSettings("n1", dispatch_mode=DispatchMode.INTERFACE, interface_prefixes=("cali",), fail_mode=FailMode.CLOSED)
    assert ok.problems() == []
    assert AgentSettings("n1", dispatch_mode=DispatchMode.ADDRESS, fail_mode=FailMode.CLOSED).problems()
    assert AgentSettings("n1", interface_prefixes=('ca"li',)).problems()


def test_fail_closed_rules_render_only_for_interface_dispatch():
    from policyd.nft.spell import rule_json

    def skeleton(cfg: RenderConfig) -> str:
        _, _, chains = LayoutRenderer(cfg, LAYOUT).skeleton()
        return json.dumps([rule_json(r) for c in chains for r in c.rules])

    text = skeleton(RenderConfig(closed_prefixes=("cali",)))
    assert "cali*" in text and "@pod-ifaces" in text
    assert "cali*" not in skeleton(RenderConfig())
    with pytest.raises(ValueError):
        skeleton(RenderConfig(closed_prefixes=('x" accept',)))


def pod(name: str, app: str, node: str = "n1", rv: int = 1, ip: str = "10.0.0.1", ports=()) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": app},
                                                           "resourceVersion": str(rv)},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": list(ports)}]},
            "status": {"podIPs": [{"ip": ip}]}}


def policy(name: str, rv: int = 1, port=80) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv)},
            "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{"ports": [{"port": port}]}]}}


def test_gate_opens_when_every_listed_object_was_observed():
    feed = ClusterFeed(Compiler("n1"))
    feed.observe("Pod", None, pod("a", "b"))
    feed.open_gate([("Pod", "default/a"), ("Pod", "default/b"), ("NetworkPolicy", "default/p")])
    assert not feed.ready
    feed.observe("Pod", None, pod("b", "b", ip="10.0.0.2"))
    assert not feed.ready
    feed.observe("NetworkPolicy", "DELETED", policy("p"))  # deleted before we saw it: fine
    assert feed.ready


def test_relist_deletes_what_is_gone_but_keeps_newer_objects():
    feed = ClusterFeed(Compiler("n1"))
    feed.open_gate([])
    feed.observe("NetworkPolicy", None, policy("old", rv=5))
    feed.observe("NetworkPolicy", "ADDED", policy("new", rv=20))
    feed.observe("NetworkPolicy", "ADDED", policy("kept", rv=6))
    events = feed.relisted("NetworkPolicy", {ref_of("NetworkPolicy", policy("kept", rv=6))}, list_rv=10)
    assert events == [Delete("NetworkPolicy", "default/old")]  # "new" (rv 20) came after the list
    assert set(feed.compiler.store.policies) == {"default/new", "default/kept"}
    assert feed.relisted("NetworkPolicy", {ref_of("NetworkPolicy", policy(n)) for n in ("kept", "new")}, list_rv=21) == []


def test_findings_for_local_selected_pods_only():
    feed = ClusterFeed(Compiler("n1"))
    feed.open_gate([])
    feed.observe("Pod", None, pod("b1", "b", ports=[{"name": "http", "containerPort": 80}]))
    feed.observe("Pod", None, pod("b2", "b", node="n2", ip="10.0.0.2"))
    ev = feed.observe("NetworkPolicy", None, policy("named", port="metrics"))
    (f,) = feed.findings(ev.obj)
    assert f.reason == "NamedPortUnresolved" and "default/b1" in f.message and "b2" not in f.message
    ok = feed.observe("NetworkPolicy", None, policy("ok", port="http"))
    assert feed.findings(ok.obj) == []
    bad = policy("bad")
    bad["spec"]["ingress"][0]["ports"][0]["protocol"] = "ICMP"
    inv = feed.observe("NetworkPolicy", None, bad)
    (f,) = feed.findings(inv.obj)
    assert f.reason == "PolicyInvalid" and feed.invalid


def test_patches():
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {"a": {"c": 2, "d": 3}}
    cur = {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}
    out = strategic_merge(cur, {"spec": {"containers": [{"name": "b", "image": "z"}]}})
    assert out["spec"]["containers"] == [{"name": "a", "image": "x"}, {"name": "b", "image": "z"}]


def test_api_server_watch_semantics_through_the_kubernetes_client():
    from kubernetes import client, config, watch

    api = KubeAPI(bookmark_every=0.2)
    url = api.serve()
    try:
        c = config.new_client_from_config_dict(api.kubeconfig(url))
        core = client.CoreV1Api(c)
        ns = core.list_namespace()
        assert {n.metadata.name for n in ns.items} >= {"default", "kube-system"}
        rv = ns.metadata.resource_version
        core.create_namespace({"metadata": {"name": "x", "labels": {"a": "1"}}})
        core.patch_namespace("x", {"metadata": {"labels": {"a": "2"}}})
        core.delete_namespace("x")
        seen = [(e["type"], e["object"].metadata.name) for e in
                watch.Watch().stream(core.list_namespace, resource_version=rv, timeout_seconds=1)]
        # A deleted namespace turns Terminating (MODIFIED) before it goes, as on a real server.
        assert seen == [("ADDED", "x"), ("MODIFIED", "x"), ("MODIFIED", "x"), ("DELETED", "x")]
        api.compact()
        with pytest.raises(client.exceptions.ApiException) as e:
            list(watch.Watch().stream(core.list_namespace, resource_version=rv, timeout_seconds=1))
        assert e.value.status == 410
        assert not api.writes(("pods",)) and [r.method for r in api.writes(("namespaces",))] == ["POST", "PATCH", "DELETE"]
    finally:
        api.stop()


def test_live_matrix_and_explain_read_the_cluster(tmp_path, capsys):
    """`policyd matrix/explain --kubeconfig` give the same answers as from the manifests."""
    import yaml

    from policyd.cli import main

    api = KubeAPI()
    url = api.serve()
    try:
        kc = tmp_path / "kubeconfig"
        kc.write_text(yaml.safe_dump(api.kubeconfig(url)))
        from kubernetes import client, config

        c = config.new_client_from_config(str(kc))
        core, net = client.CoreV1Api(c), client.NetworkingV1Api(c)
        for name, app, ip in (("fe", "frontend", "10.0.0.1"), ("be", "backend", "10.0.0.2"), ("un", "unallowed", "10.0.0.3")):
            core.create_namespaced_pod("default", {"metadata": {"name": name, "labels": {"app": app}},
                                                   "spec": {"containers": [{"name": "c", "image": "x"}]},
                                                   "status": {"podIPs": [{"ip": ip}], "phase": "Running"}})
        manifest = yaml.safe_load(Path(__file__).resolve().parents[2].joinpath("examples/policies/allow-frontend-to-backend.yaml").read_text())
        net.create_namespaced_network_policy("default", manifest)
        before = len(api.requests)
        assert main(["explain", "--kubeconfig", str(kc), "--from", "default/fe", "--to", "default/be"]) == 0
        assert main(["explain", "--kubeconfig", str(kc), "--from", "default/un", "--to", "default/be"]) == 1
        capsys.readouterr()
        assert main(["matrix", "--kubeconfig", str(kc), "-o", "json", "--by", "pod"]) == 0
        m = json.loads(capsys.readouterr().out)
        assert m["allowed"]["default/fe"] == ["default/be", "default/fe", "default/un"]
        assert "default/be" not in m["allowed"]["default/un"]
        assert main(["matrix", "--kubeconfig", str(kc), "-f", "examples"]) == 2  # one source, not both
        assert {r.method for r in api.requests[before:]} == {"GET"}  # the what-if tools only read
    finally:
        api.stop()


def test_events_name_the_node_and_the_action_and_are_not_repeated():
    """An Event says which node found what and what policyd did; a restarted agent finds
    its own earlier Event for the same policy version and does not post it again, while a
    new version, another node or another message is a new Event."""
    import datetime

    from policyd.kube.events import already_posted, event_body
    from policyd.kube.feed import Finding

    raw = policy("named", rv=3, port="metrics")
    raw["metadata"]["uid"] = "u-1"
    f = Finding("default/named", "NamedPortUnresolved", "ingress[0].ports[0]: no container port named 'metrics'")
    now = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    body = event_body(f, raw, "node-1", now)
    assert body["reportingInstance"] == "node-1" and body["source"]["host"] == "node-1"
    assert body["action"] == "AllowNothingOnPort" and body["reportingComponent"] == "policyd"
    assert body["involvedObject"]["uid"] == "u-1" and body["involvedObject"]["resourceVersion"] == "3"
    assert already_posted([body], event_body(f, raw, "node-1", now + datetime.timedelta(hours=1)))
    assert not already_posted([body], event_body(f, raw, "node-2", now))
    newer = policy("named", rv=4, port="metrics")
    newer["metadata"]["uid"] = "u-1"
    assert not already_posted([body], event_body(f, newer, "node-1", now))
    assert not already_posted([body], event_body(Finding(f.policy, f.reason, "other"), raw, "node-1", now))
    assert event_body(Finding(f.policy, "PolicyInvalid", "x"), raw, "n", now)["action"] == "IsolateAllowingNothing"


def test_events_are_posted_over_http_once_per_policy_version(tmp_path, monkeypatch):
    """The agent posts its Events through its own HTTP access (no `kubernetes` client: the
    image carries none): against the test API server, the first agent posts, a restarted
    one lists that Event and posts nothing, a finding on a new version posts again."""
    import asyncio
    import sys

    import yaml

    from policyd.kube.events import EventPoster
    from policyd.kube.feed import Finding

    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as in the image: `import kubernetes` fails
    api = KubeAPI()
    url = api.serve()
    try:
        kc = tmp_path / "kubeconfig"
        kc.write_text(yaml.safe_dump(api.kubeconfig(url)))
        raw = policy("named", rv=3, port="metrics")
        raw["metadata"]["uid"] = "u-1"
        f = Finding("default/named", "NamedPortUnresolved", "ingress[0].ports[0]: no container port named 'metrics'")

        def events() -> list[dict]:
            return [o for (k, ns, _), o in list(api.objects.items())
                    if k.plural == "events" and k.group == "" and ns == "default" and o.get("reason") == f.reason]

        assert asyncio.run(EventPoster("node-1", str(kc)).post(f, raw)) is True
        assert asyncio.run(EventPoster("node-1", str(kc)).post(f, raw)) is False  # a restarted agent
        posted = events()
        assert len(posted) == 1
        assert posted[0]["involvedObject"]["uid"] == "u-1" and posted[0]["reportingInstance"] == "node-1"
        assert posted[0]["metadata"]["name"].startswith("named.")
        raw["metadata"]["resourceVersion"] = "4"
        assert asyncio.run(EventPoster("node-1", str(kc)).post(f, raw)) is True
        assert len(events()) == 2
    finally:
        api.stop()
    # An API server that is away: logged, never raised.
    assert asyncio.run(EventPoster("node-1", str(kc)).post(f, raw)) is False


def test_a_stored_cidr_with_host_bits_is_read_as_the_api_server_did():
    """Kubernetes 1.33+ refuses `10.0.0.1/24` in a new policy (and so does policyd for a
    manifest), but an object stored earlier keeps it and is still served: the agent reads
    it as the API server did then (10.0.0.0/24) and says so, instead of isolating with a
    deny-all."""
    import ipaddress

    from policyd.kube.feed import ClusterFeed
    from policyd.model.parse import parse_object

    raw = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "old", "namespace": "default", "resourceVersion": "7"},
           "spec": {"podSelector": {"matchLabels": {"app": "b"}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/24", "except": ["10.0.0.129/25"]}}]}]}}
    _, problems = parse_object(raw, "file.yaml", 0)
    assert [p.path for p in problems] == ["spec.ingress[0].from[0].ipBlock.cidr", "spec.ingress[0].from[0].ipBlock.except[0]"]
    live, problems = parse_object(raw, "NetworkPolicy default/old", None, live=True)
    assert not problems and not live.invalid
    block = live.ingress[0].peers[0].ip_block
    assert block.cidr == ipaddress.ip_network("10.0.0.0/24") and block.excepts == (ipaddress.ip_network("10.0.0.128/25"),)
    feed = ClusterFeed(Compiler("n1"))
    feed.observe("Pod", None, pod("b1", "b"))
    feed.observe("NetworkPolicy", None, raw)
    findings = feed.findings(feed.compiler.store.policies[live.key])
    assert [f.reason for f in findings] == ["PolicyReadLeniently", "PolicyReadLeniently"]
    assert "read as '10.0.0.0/24'" in findings[0].message


def test_a_kind_the_api_server_does_not_serve_is_not_watched_and_does_not_block_readiness():
    """Without the ClusterNetworkPolicy CRD the agent enforces NetworkPolicies, says so
    loudly, and registers no watch kopf would retry forever."""
    import asyncio

    from policyd.kube.agent import ClusterAgent
    from policyd.kube.feed import NotServed
    from policyd.kube.registry import build_registry
    from policyd.nft.fake import FakeBackend

    async def lister(kind):
        if kind == "ClusterNetworkPolicy":
            raise NotServed("no policy.networking.k8s.io/v1alpha2 clusternetworkpolicies")
        yield [], 5

    agent = ClusterAgent(AgentSettings("n1", dispatch_mode=DispatchMode.ADDRESS), DispatchMode.ADDRESS, backend=FakeBackend(), lister=lister)
    asyncio.run(agent.initial_lists(max_delay=0.01))
    assert agent.feed.ready and agent.unserved == {"ClusterNetworkPolicy"}
    agent.schedule_relist(0)
    assert "ClusterNetworkPolicy" not in agent.relist_at
    handlers = [h.id for h in build_registry(agent)._watching.get_all_handlers()]
    assert "policyd_observe_networkpolicies" in handlers and "policyd_observe_clusternetworkpolicies" not in handlers, handlers


def test_a_relist_stuck_on_the_api_server_does_not_hold_up_the_drift_check():
    """A relist waits on the API server (etcd down: for its whole request timeout); the sync
    loop must go on checking the kernel meanwhile, or a node whose ruleset was removed stays
    open until the API server answers."""
    import asyncio

    from policyd.kube.agent import ClusterAgent
    from policyd.nft.fake import FakeBackend

    stuck = asyncio.Event()
    relisting: list[str] = []

    async def lister(kind):
        if agent.feed.ready:  # the relist, not the initial lists
            relisting.append(kind)
            await stuck.wait()
        yield [], 5

    agent = ClusterAgent(AgentSettings("n1", dispatch_mode=DispatchMode.ADDRESS), DispatchMode.ADDRESS, backend=FakeBackend(), lister=lister)
    agent.runner.check_every, agent.runner.next_check = 0.05, 0.0

    async def run() -> None:
        await agent.initial_lists(max_delay=0.01)
        agent.schedule_relist(0)
        loop = asyncio.create_task(agent.sync_loop(longest=0.05))
        await asyncio.sleep(0.2)
        checks = agent.runner.stats.checks
        await asyncio.sleep(0.5)
        assert relisting, "the relist started and hangs"
        assert agent.runner.stats.checks >= checks + 5, "drift checks went on during the relist"
        stuck.set()
        await asyncio.sleep(0.1)
        assert agent.relisting is not None and agent.relisting.done() and not agent.relist_at
        loop.cancel()

    asyncio.run(run())


def test_flow_records_are_opt_in_served_on_flows_and_checked():
    """/flows answers 404 with what to do while flow records are off, and the table (the
    agent's own pods resolved through its address index) once a recorder feeds it."""
    import asyncio

    from aiohttp.test_utils import make_mocked_request

    from policyd.kube.agent import ClusterAgent
    from policyd.kube.http import http_apps
    from policyd.nft.fake import FakeBackend
    from policyd.observe.conntrack import Connection

    assert AgentSettings("n1", flows=10, metrics_port=0).problems() == ["--flows serves /flows on the metrics port: --metrics-port must not be 0"]
    assert AgentSettings("n1", flows=-1).problems()

    async def lister(kind):
        if kind == "Pod":
            yield [pod("b1", "b")], 5

    agent = ClusterAgent(AgentSettings("n1", dispatch_mode=DispatchMode.ADDRESS, flows=10), DispatchMode.ADDRESS,
                         backend=FakeBackend(), lister=lister)

    async def get() -> tuple[int, dict]:
        router = http_apps(agent)[agent.settings.metrics_port].router
        match = await router.resolve(make_mocked_request("GET", "/flows"))
        resp = await match.handler(make_mocked_request("GET", "/flows"))
        return resp.status, json.loads(resp.body)

    async def scenario() -> tuple[tuple[int, dict], tuple[int, dict]]:
        await agent.initial_lists()
        off = await get()
        table = agent.core.flow_table(10)
        agent.metrics.flows.attach(table)
        ip = str(next(iter(agent.core.compiler.store.pods.values())).ips[0])
        table.add([Connection("192.0.2.9", ip, "TCP", 80)], now=7.0)
        return off, await get()

    off, on = asyncio.run(scenario())
    assert off[0] == 404 and "--flows" in off[1]["error"]
    assert on[0] == 200 and on[1]["kind"] == "FlowRecords" and on[1]["nodes"] == ["n1"]
    assert [(r["src"], r["dst"], r["port"], r["count"]) for r in on[1]["records"]] == [("192.0.2.9", "default/b1", 80, 1)]
