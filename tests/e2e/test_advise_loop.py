"""The advise loop on real packets (issue: from observed traffic to least-privilege policy):
the demo application's traffic → the agents' flow records → `policyd advise` → applied in
audit mode (nothing dropped, unobserved traffic logged) → enforced: every observed flow still
passes, every other pair is denied. The traffic and what must pass are written out below,
independently of the engine."""

from __future__ import annotations

import json
import time

from policyd.cli import main

# The application: frontend calls backend on TCP 80, prometheus scrapes backend on 9090,
# backend pods talk to each other over UDP 53.
TRAFFIC = [("app=frontend", "app=backend", "TCP", 80), ("monitoring/prometheus", "app=backend", "TCP", 9090),
           ("app=backend", "app=backend", "UDP", 53)]
EXPECTED_FLOWS = 4 + 2 + 2  # 2×2 frontend→backend, 1×2 scrapes, 2 backend pairs (a pod's own loopback never leaves it)


def wait_for_flows(lab, count: int, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = lab.flows()
        if len(doc["records"]) >= count or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def advise(lab, tmp_path, capsys, *extra: str) -> tuple[int, dict, str]:
    capsys.readouterr()
    rc = main(["advise", "--lab", lab.name, "-o", "json", *extra])
    out = capsys.readouterr()
    doc = json.loads(out.out)
    path = tmp_path / f"advised{'-'.join(extra)}.yaml"
    path.write_text("\n---\n".join(json.dumps(p) for p in doc["policies"]))  # JSON is YAML
    return rc, doc, str(path)


def test_traffic_to_advise_to_audit_to_enforce(make_lab, tmp_path, capsys, monkeypatch):
    import policyd.lab.lab as lab_module

    lab = make_lab(["examples/cluster/demo.yaml"], "routed")
    monkeypatch.setattr(lab_module, "LAB_ROOT", lab.dir.parent)  # `advise --lab NAME` finds this lab
    for src, dst, proto, port in TRAFFIC:
        assert all(lab.probe(src, dst, proto, port, 0.4).allowed.values()), "no policy yet: the application works"
    doc = wait_for_flows(lab, EXPECTED_FLOWS)
    seen = {(r["src"].split("/")[1].rsplit("-", 1)[0], r["dst"].split("/")[1].rsplit("-", 1)[0], r["protocol"], r["port"])
            for r in doc["records"]}
    assert seen == {("frontend", "backend", "TCP", 80), ("prometheus", "backend", "TCP", 9090), ("backend", "backend", "UDP", 53)}
    assert len(doc["records"]) == EXPECTED_FLOWS and doc["dropped"] == 0

    # Both forms of one proposal, from the flows recorded so far: traffic admitted in audit
    # mode is recorded too, so a second advise later would admit what the audit saw.
    rc, audit, audit_path = advise(lab, tmp_path, capsys, "--audit")
    assert rc == 0 and audit["checked"] == EXPECTED_FLOWS and audit["denied"] == [] and audit["beyond"] == []
    rc, enforced, path = advise(lab, tmp_path, capsys)
    assert rc == 0 and [p["spec"] for p in enforced["policies"]] == [p["spec"] for p in audit["policies"]]
    lab.apply([audit_path], say=lambda s: None)
    for src, dst, proto, port in TRAFFIC:
        assert all(lab.probe(src, dst, proto, port, 0.4).allowed.values()), "audit mode drops nothing"
    assert all(lab.probe("app=unallowed", "app=backend", "TCP", 80, 0.4).allowed.values()), "audit mode drops nothing"
    deadline = time.monotonic() + 3
    while True:
        lines = [x for n in sorted(lab.load().nodes) for x in lab.agents.drops(n) if x.startswith("audit ")]
        if any("← default/unallowed" in x and "TCP/80" in x for x in lines) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any("← default/unallowed" in x and "TCP/80" in x for x in lines), "an unobserved flow is logged as an audit drop"
    assert not any("← default/frontend" in x and "TCP/80" in x for x in lines), "no audit drop for the observed traffic"

    lab.apply([path], say=lambda s: None)  # the same names: the audit annotation goes away
    for src, dst, proto, port in TRAFFIC:
        assert all(lab.probe(src, dst, proto, port, 0.4).allowed.values()), f"observed {src} → {dst} {proto}/{port} still passes"
    for src, dst, proto, port in [("app=unallowed", "app=backend", "TCP", 80), ("app=frontend", "app=frontend", "TCP", 80),
                                  ("app=backend", "app=frontend", "TCP", 80), ("app=frontend", "app=backend", "TCP", 9090)]:
        m = lab.probe(src, dst, proto, port, 0.4)
        reached = {(s, d) for s, ds in m.allowed.items() for d in ds if d != s}
        assert not reached, f"never seen, so denied: {src} → {dst} {proto}/{port}: {reached}"
    from policyd.lab.check import run_check

    lines = []
    assert run_check(lab, None, None, 0.4, say=lines.append) == 0, lines
