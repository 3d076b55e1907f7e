"""`policyd lab demo --fqdn`: egress to domain names, on real packets and a real DNS server.

A lab of the demo cluster with CoreDNS serving examples/fqdn/zone.db (its names point at
external hosts outside the pod range); every frontend pod resolves and connects before and
after examples/fqdn/frontend-egress-by-name.yaml (a ClusterNetworkPolicy: cluster DNS, three
names, everything else denied). After it: the allowed names connect (a CNAME chain too), an
unlisted name is refused, an address the allowed name never answered is refused, and once
the answer's TTL is over its address is refused again until the next lookup. Exit 0 only
when every observation matched.
"""

from __future__ import annotations

import time
from pathlib import Path

from .demo import fresh
from .lab import Lab
from .probes import probe_name
from .topology import probe_via

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "examples" / "cluster" / "demo.yaml"
ZONE = ROOT / "examples" / "fqdn" / "zone.db"
POLICY = ROOT / "examples" / "fqdn" / "frontend-egress-by-name.yaml"
TTL = 5  # the zone's
MIN_TTL = 2  # the lab's agents' --fqdn-min-ttl: the zone's TTL decides


def run_fqdn_demo(name: str = "demo", topology: str = "routed", keep: bool = False, backend: str = "nftables",
                  ip_family: str = "ipv4") -> int:
    lab = Lab(name)
    expect = fresh(lab)
    rel = ZONE.relative_to(ROOT)
    print(f"== 1. A lab from {CLUSTER.relative_to(ROOT)} with CoreDNS serving {rel}")
    try:
        lab.up([str(CLUSTER)], topology=topology, backend=backend, ip_family=ip_family, dns_zone=str(ZONE), min_ttl=MIN_TTL)
        version = 6 if ip_family == "ipv6" else 4
        frontend = "app=frontend"

        def names(n: str, port: int = 80) -> dict[str, dict[str, object]]:
            got = probe_name(lab.load(), lab.pods(), frontend, n, "TCP", port, 0.5, version)
            for src, r in sorted(got.items()):
                state = "connected" if r["connected"] else "refused or timed out" if r["resolved"] else "does not resolve"
                print(f"     {src} → {n} ({', '.join(map(str, r['addresses'])) or '-'}): {state}")
            return got

        def all_connect(got: dict[str, dict[str, object]]) -> bool:
            return bool(got) and all(r["connected"] for r in got.values())

        def none_connect(got: dict[str, dict[str, object]]) -> bool:
            return bool(got) and all(r["resolved"] and not r["connected"] for r in got.values())

        def direct(address: str) -> bool:
            rec = lab.load()
            return any(probe_via(rec.pods[k].control, address, "TCP", 80, 0.5) for k in rec.pods if "/frontend-" in k)

        ext = {n: addr for n, addr in (("api", "198.51.100.10"), ("other", "198.51.100.30"))} if version == 4 else \
            {"api": "2001:db8:100::10", "other": "2001:db8:100::30"}
        print("== 2. Before any policy: frontend reaches every name")
        expect(all_connect(names("api.example.test")), "frontend → api.example.test connects")
        expect(all_connect(names("other.example.test")), "frontend → other.example.test connects")
        print(f"== 3. kubectl apply -f {POLICY.relative_to(ROOT)}")
        lab.apply([str(POLICY)])
        time.sleep(TTL + 1)  # (what was learned before the policy came has no part in what follows)
        expect(all_connect(names("api.example.test")), "an allowed name connects at the first attempt after its lookup")
        expect(all_connect(names("www.example.test")), "an allowed name that is a CNAME: its chain's address connects")
        expect(all_connect(names("edge.cdn.example.test")), "a name *.cdn.example.test allows connects")
        expect(none_connect(names("other.example.test")), "an unlisted name resolves but is refused")
        expect(not direct(ext["other"]), f"an address no allowed name answered ({ext['other']}) is refused")
        print(f"== 4. {TTL} s later, the answer's TTL is over")
        time.sleep(TTL + 1)
        expect(not direct(ext["api"]), f"api.example.test's address ({ext['api']}) is refused again without a lookup")
        expect(all_connect(names("api.example.test")), "after a new lookup it connects again")
        print(f"== {'all observations as expected' if not expect.failures else f'{len(expect.failures)} unexpected'}")
        return 0 if not expect.failures else 1
    finally:
        if not keep:
            lab.down(quiet=True)
