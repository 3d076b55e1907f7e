"""`policyd lab demo`: the classic allow-frontend-to-backend exercise, on real packets.

A lab with `frontend`, `backend` and `unallowed` deployments (2 pods each, over 2 nodes)
and a `monitoring` namespace; everything pings everything; the policy is applied; probes
show frontend → backend TCP 80 answering and unallowed → backend blocked while backend
still reaches the others; the time from apply to enforcement is measured by probing every
10 ms; finally every probe is compared with the policy engine. Exit 0 only when every
observation matched.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ..whatif import report
from .check import run_check
from .lab import Lab

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "examples" / "cluster" / "demo.yaml"
POLICY = ROOT / "examples" / "policies" / "allow-frontend-to-backend.yaml"


class Expect:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)


def app_of(key: str) -> str:
    return key.split("/")[1].rsplit("-", 1)[0]


def wait_for_drops(lab: Lab, sources: list[str], targets: list[str], timeout: float = 3.0) -> list[str]:
    """The nodes' drop log lines of TCP 80 from `sources` to `targets` (the writer thread may
    lag the probes a little)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for node in sorted(lab.load().nodes) for line in lab.agents.drops(node)
                 if "TCP/80" in line and any(f"drop ingress {t} ← {s} " in line for s in sources for t in targets)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def fresh(lab: Lab) -> Expect:
    """A demo starts from no lab of its name (one left by an earlier run is removed)."""
    if lab.exists():
        print(f"lab {lab.name} exists from an earlier run: removing it first")
        lab.down(quiet=True)
    return Expect()


def run_demo(name: str = "demo", topology: str = "routed", keep: bool = False, backend: str = "nftables",
             ip_family: str = "ipv4") -> int:
    lab = Lab(name)
    expect = fresh(lab)
    print(f"== 1. A lab cluster from {CLUSTER.relative_to(ROOT)}: pods are network namespaces, nodes too, one policyd agent per node")
    try:
        rec = lab.up([str(CLUSTER)], topology=topology, backend=backend, ip_family=ip_family)
        st = lab.status()
        for p in st["pods"]:
            print(f"  {p['pod']:<28} on {p['node']}  {', '.join(p['ips']):<12} host interface {p['interface']}")
        pods = sorted(rec.pods)
        by_app = {a: [k for k in pods if app_of(k) == a] for a in ("frontend", "backend", "unallowed")}
        expect(all(len(v) == 2 for v in by_app.values()), "2 pods each of frontend, backend, unallowed")
        expect(all(len({rec.pods[k].node for k in v}) == 2 for v in by_app.values()), "each deployment spread over both nodes")

        print("\n== 2. No policy yet: everything pings everything")
        m = lab.probe(None, None, "ICMP", None)
        print(report.matrix_table(m, "ping (observed)"), end="")
        expect(all(len(m.allowed[s]) == len(pods) for s in pods), "every pod answers every ping")

        print(f"\n== 3. kubectl-style apply of {POLICY.relative_to(ROOT)}")
        print("   (backend accepts TCP 80 from frontend pods only)")
        src, dst = by_app["unallowed"][0], by_app["backend"][0]
        dst_ip = rec.pods[dst].ips[0]
        blocked_at: list[float] = []
        stop = threading.Event()

        def watch() -> None:
            from .topology import probe_via

            while not stop.is_set():
                sent = time.monotonic()
                if not probe_via(rec.pods[src].control, dst_ip, "TCP", 80, timeout=0.15):
                    blocked_at.append(sent)
                    return
                stop.wait(max(0.0, 0.01 - (time.monotonic() - sent)))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.monotonic()
        acked = lab.apply([str(POLICY)], say=lambda s: print("  " + s))
        watcher.join(timeout=5)
        stop.set()
        if blocked_at:
            print(f"  enforced: both agents committed it {acked * 1e3:.0f} ms after apply; the first probe that found "
                  f"{src} → {dst} blocked left {(blocked_at[0] - t0) * 1e3:.0f} ms after apply (probing every 10 ms)")
        expect(bool(blocked_at), "unallowed → backend became blocked within 5 s")

        print("\n== 4. After the policy: TCP 80")
        m = lab.probe(None, None, "TCP", 80)
        print(report.matrix_table(m, "TCP/80 (observed)"), end="")
        expect(all(set(by_app["backend"]) <= set(m.allowed[f]) for f in by_app["frontend"]), "frontend → backend still answers")
        expect(all(not set(by_app["backend"]) & set(m.allowed[u]) for u in by_app["unallowed"]), "unallowed → backend is blocked")
        others = [k for k in pods if app_of(k) != "backend"]
        expect(all(set(others) <= set(m.allowed[b]) for b in by_app["backend"]), "backend → every other pod still works (egress untouched)")
        print("  (NetworkPolicy ports name TCP, UDP or SCTP only, so once backend is isolated it answers no ping at all;")
        print("   the ICMP row is part of the check below)")

        print(f"\n== 5. The drop log: what the agents said about those drops (policyd lab logs --drops --name {name})")
        drops = wait_for_drops(lab, by_app["unallowed"], by_app["backend"])
        for line in drops[:4]:
            print("  " + line)
        expect(bool(drops) and all("isolated by 1 NetworkPolicy (default/allow-frontend-to-backend)" in d for d in drops),
               "each unallowed → backend drop is logged, naming allow-frontend-to-backend")

        print("\n== 6. Every probe against the policy engine (policyd matrix) for the lab's manifests")
        bad = run_check(lab, None, None, 0.5, say=lambda s: print("  " + s))
        expect(bad == 0, "observed == engine for ICMP and every served TCP/UDP port")
    finally:
        if keep:
            print(f"\nlab {name} kept: policyd lab status --name {name}; remove with policyd lab down --name {name}")
        else:
            print(f"\n== 7. Clean up: policyd lab down --name {name}")
            lab.down(say=lambda s: print("  " + s))
    if expect.failures:
        print(f"\ndemo: {len(expect.failures)} observation(s) did not match: " + "; ".join(expect.failures))
        return 1
    print("\ndemo: every observation matched the expectation")
    return 0
