"""A 3-namespace × 3-pod model (x, y, z × a, b, c over two nodes, TCP and UDP on 80 and
81), probed on real packets after each policy step and compared pair by pair with the
policy engine (`policyd matrix`) — the upstream network-policy e2e model, in namespaces —
and, for most steps, with verdicts written by hand from the policies' text."""

from __future__ import annotations

import threading
import time

import pytest

from policyd.backends import BACKENDS as BACKENDS
from policyd.lab.check import run_check

PORTS = "\n".join(
    f"        - {{name: serve-{p}-{proto.lower()}, containerPort: {p}, protocol: {proto}}}"
    for p in (80, 81) for proto in ("TCP", "UDP")
)
MODEL = "".join(
    f"""---
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{ns: {ns}}}}}
""" + "".join(
        f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}
spec:
  containers:
    - name: c
      ports:
{PORTS}
"""
        for pod in "abc"
    )
    for ns in "xyz"
)


def policy(name: str, ns: str, spec: str) -> str:
    body = "\n".join("  " + line for line in spec.strip().splitlines())
    return f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n"


STEPS = [
    ("deny all ingress in x", "apply", policy("deny", "x", "podSelector: {}\npolicyTypes: [Ingress]")),
    ("AND: x/a from (ns=y AND pod=b) on TCP 80", "apply", policy("and", "x", """
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
  ports: [{port: 80}]""")),
    ("OR: x/b from ns=y OR pod=c of x, any port", "apply", policy("or", "x", """
podSelector: {matchLabels: {pod: b}}
ingress:
- from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: c}}}]""")),
    ("ipBlock except: x/c from the cluster except node-1's pods", "apply", policy("except", "x", """
podSelector: {matchLabels: {pod: c}}
ingress:
- from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.0.0/24]}}]""")),
    ("named port: z/a ingress on port serve-81-udp only", "apply", policy("named", "z", """
podSelector: {matchLabels: {pod: a}}
ingress:
- ports: [{port: serve-81-udp, protocol: UDP}]""")),
    ("egress: y/c may reach only ns=z on TCP 81", "apply", policy("egress", "y", """
podSelector: {matchLabels: {pod: c}}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {matchLabels: {ns: z}}}]
  ports: [{protocol: TCP, port: 81}]""")),
    ("update: the AND policy moves to TCP 81 and UDP 80-81", "apply", policy("and", "x", """
podSelector: {matchLabels: {pod: a}}
ingress:
- from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
  ports: [{port: 81}, {protocol: UDP, port: 80, endPort: 81}]""")),
    ("namespace selector by label: z/b from namespaces team=blue", "apply", policy("team", "z", """
podSelector: {matchLabels: {pod: b}}
ingress:
- from: [{namespaceSelector: {matchLabels: {team: blue}}}]""")),
    ("relabel namespace y team=blue", "label-ns", "y team=blue"),
    ("relabel pod y/b pod=z (leaves the AND peer)", "label-pod", "y/b pod=z"),
    ("relabel namespace y: team removed", "label-ns", "y team-"),
    ("delete the deny-all policy", "delete", policy("deny", "x", "podSelector: {}\npolicyTypes: [Ingress]")),
]


# Hand-written expectations for steps, from the policies' text alone (not from the engine,
# so an engine bug cannot pass unseen): (source, destination, protocol, port, allowed).
# "node-2" marks a verdict that depends on where the source runs (ipBlock except node-1's
# pod CIDR 10.244.0.0/24): allowed exactly when the source pod is on node-2.
EXPECTED: dict[int, list[tuple[str, str, str, int, bool | str]]] = {
    0: [("y/a", "x/a", "TCP", 80, False), ("x/b", "x/a", "TCP", 80, False),  # deny-all ingress in x, same ns too
        ("x/a", "y/a", "TCP", 80, True), ("z/c", "y/b", "UDP", 81, True)],  # egress and other namespaces untouched
    1: [("y/b", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 80, False),  # AND: ns=y and pod=b
        ("z/b", "x/a", "TCP", 80, False), ("y/b", "x/a", "TCP", 81, False), ("y/b", "x/a", "UDP", 80, False)],
    2: [("y/a", "x/b", "UDP", 81, True), ("x/c", "x/b", "TCP", 81, True),  # OR: any pod of y, or x's pod c
        ("z/c", "x/b", "TCP", 80, False), ("x/a", "x/b", "TCP", 80, False)],  # z/c: pod c, but not in x
    3: [("y/a", "x/c", "TCP", 80, "node-2"), ("y/b", "x/c", "TCP", 80, "node-2"), ("z/b", "x/c", "UDP", 81, "node-2")],
    4: [("y/a", "z/a", "UDP", 81, True), ("y/a", "z/a", "UDP", 80, False), ("y/a", "z/a", "TCP", 81, False)],
    5: [("y/c", "z/b", "TCP", 81, True), ("y/c", "z/b", "TCP", 80, False), ("y/c", "y/a", "TCP", 81, False),
        ("z/a", "y/c", "TCP", 80, True)],  # egress only: y/c's ingress stays open
    6: [("y/b", "x/a", "TCP", 81, True), ("y/b", "x/a", "TCP", 80, False), ("y/b", "x/a", "UDP", 80, True)],
    8: [("y/a", "z/b", "TCP", 80, True), ("x/a", "z/b", "TCP", 80, False)],  # y now team=blue
    9: [("y/b", "x/a", "TCP", 81, False)],  # y/b relabelled pod=z: no longer the AND peer
    10: [("y/a", "z/b", "TCP", 80, False)],  # team removed from y
}


def check_expected(lab, step: int, seen: dict) -> list[str]:
    """The hand-written verdicts of `step`, against the real packets the step's check sent
    (`seen`: each service's observed matrix); what disagrees."""
    rec = lab.load()
    wrong = []
    for src, dst, proto, port, want in EXPECTED.get(step, []):
        s, d = src, dst
        allowed = want if isinstance(want, bool) else rec.pods[s].node == want
        got = seen[(proto, port)].is_allowed(s, d)
        if got != allowed:
            wrong.append(f"step {step}: {src} → {dst} {proto}/{port}: expected {'allowed' if allowed else 'denied'}, "
                         f"probe says {'allowed' if got else 'denied'}")
    return wrong


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("topology", ["routed", "bridge"])
def test_model_steps_match_the_engine(make_lab, tmp_path, topology, backend):
    cluster = tmp_path / "model.yaml"
    cluster.write_text(MODEL)
    lab = make_lab([str(cluster)], topology, backend=backend)
    rec = lab.load()
    assert {p.node for p in rec.pods.values()} == {"node-1", "node-2"}, "pods spread over both nodes: cross-node traffic"
    log: list[str] = []
    for i, (what, verb, arg) in enumerate(STEPS):
        log.append(f"-- step {i}: {what}")
        if verb in ("apply", "delete"):
            f = tmp_path / f"step{i}.yaml"
            f.write_text(arg)
            getattr(lab, verb)([str(f)], say=log.append)
        else:
            target, pair = arg.split()
            lab.label("ns" if verb == "label-ns" else "pod", target, [pair], say=log.append)
        seen: dict = {}
        bad = sum(run_check(lab, proto, port, 0.3, say=log.append, seen=seen) for proto in ("TCP", "UDP") for port in (80, 81))
        assert bad == 0, "\n".join(log)
        wrong = check_expected(lab, i, seen)
        assert not wrong, "\n".join(wrong)
    assert len([k for k in EXPECTED if EXPECTED[k]]) >= 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_agent_restart_under_traffic_opens_and_closes_nothing(make_lab, backend):
    """Allowed and denied probes run continuously while node-1's agent is stopped for
    0.5 s and restarted: the table stays, the new agent adopts it; no allowed probe fails
    and no denied one gets through."""
    lab = make_lab(["examples/cluster/demo.yaml"], backend=backend)
    lab.apply(["examples/policies/allow-frontend-to-backend.yaml"], say=lambda s: None)
    rec = lab.load()
    pods = sorted(rec.pods)
    backend = next(k for k in pods if "/backend-" in k and rec.pods[k].node == "node-1")
    frontend = [k for k in pods if "/frontend-" in k]
    unallowed = [k for k in pods if "/unallowed-" in k]
    ip = rec.pods[backend].ips[0]
    from policyd.lab.topology import probe_via

    stop = threading.Event()
    seen = {"allowed_ok": 0, "allowed_fail": 0, "denied_ok": 0, "denied_fail": 0}

    def traffic() -> None:
        while not stop.is_set():
            for f in frontend:
                seen["allowed_ok" if probe_via(rec.pods[f].control, ip, "TCP", 80, 0.3) else "allowed_fail"] += 1
            for u in unallowed:
                seen["denied_ok" if probe_via(rec.pods[u].control, ip, "TCP", 80, 0.05) else "denied_fail"] += 1

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.2)
        before = dict(seen)
        old_pid = rec.nodes["node-1"].agent_pid
        new_pid = lab.restart_agent("node-1", downtime=0.5)
        time.sleep(0.2)
    finally:
        stop.set()
        t.join()
    assert new_pid != old_pid
    assert seen["allowed_fail"] == 0 and seen["denied_ok"] == 0, seen
    assert seen["allowed_ok"] - before["allowed_ok"] >= 10 and seen["denied_fail"] - before["denied_fail"] >= 5, seen
    st = lab.agent_status("node-1")
    assert st and st["healthy"] and st["last_ops"] == 0, f"the new agent found the table as it should be: {st}"
