"""Real probes between the lab's pods, what the policy engine expects of them, and the
check that compares the two (`policyd lab probe`, `lab check`, the demo)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..model.objects import Pod
from ..model.selectors import parse_selector_text
from ..whatif.matrix import Matrix, compute
from ..whatif.world import load_world
from .families import VERSIONS
from .records import LabError, LabRecord
from .topology import ask, probe_via

Say = Callable[[str], None]


def select(rec: LabRecord, sel: str | None, labels: dict[str, dict[str, str]]) -> list[str]:
    """Pod keys for `NS/POD`, a label selector, or (None) every pod; `labels` by pod key."""
    keys = sorted(k for k in labels if k in rec.pods)
    if not sel:
        return keys
    if "/" in sel:
        if sel not in rec.pods:
            raise LabError(f"no pod {sel} in lab {rec.name}")
        return [sel]
    selector = parse_selector_text(sel)
    return [k for k in keys if selector.matches(labels[k])]


def address(rec: LabRecord, key: str, version: int) -> str | None:
    """The pod's address of IP version `version`, if it has one."""
    return next((a for a in rec.pods[key].ips if ipaddress.ip_address(a).version == version), None)


def probe(rec: LabRecord, pods: list[Pod], src: str | None, dst: str | None, protocol: str, port: int | None,
          timeout: float, progress: Say | None = None, version: int | None = None) -> Matrix:
    """Real probes from every selected source to every selected destination's address of
    IP version `version` (default: the lab's primary family), concurrently. A TCP reset or
    an ICMP port-unreachable counts as reached: the packets passed the policy, only no
    server listened."""
    if protocol == "SCTP":
        raise LabError("this kernel has no SCTP sockets: SCTP cannot be probed (policyd matrix shows the verdicts)")
    version = version or VERSIONS[rec.ip_family][0]
    if version not in VERSIONS[rec.ip_family]:
        raise LabError(f"lab {rec.name} is {rec.ip_family}: its pods have no IPv{version} addresses")
    labels: dict[str, dict[str, str]] = {p.key: p.labels for p in pods}
    sources = select(rec, src, labels)
    targets = [d for d in select(rec, dst, labels) if address(rec, d, version)]
    pairs = [(s, d) for s in sources for d in targets]
    results: dict[tuple[str, str], bool] = {}
    start = last = time.monotonic()

    def one(pair: tuple[str, str]) -> tuple[tuple[str, str], bool]:
        s, d = pair
        return pair, probe_via(rec.pods[s].control, address(rec, d, version) or "", protocol, port, timeout)

    with ThreadPoolExecutor(max_workers=min(64, max(1, len(pairs)))) as ex:
        for n, (pair, ok) in enumerate(ex.map(one, pairs), 1):
            results[pair] = ok
            if progress and time.monotonic() - last > 1.0:
                progress(f"probed {n}/{len(pairs)} pairs ({time.monotonic() - start:.0f} s)")
                last = time.monotonic()
    allowed = {s: [d for d in targets if results[(s, d)]] for s in sources}
    return Matrix(protocol, port if protocol != "ICMP" else None, sorted(set(sources) | set(targets)), allowed, targets=targets)


def probe_name(rec: LabRecord, pods: list[Pod], src: str | None, name: str, protocol: str, port: int, timeout: float,
               version: int | None = None) -> dict[str, dict[str, Any]]:
    """From every selected source: resolve `name` through the lab's DNS server (as the pod's
    resolver would: from the pod), then connect to the answer's first address of IP version
    `version` (default: the lab's primary family). Per source pod: `resolved`, the
    `addresses` the answer gave, `connected`, and the `error` if any."""
    if rec.dns is None:
        raise LabError(f"lab {rec.name} has no DNS server: make it with `policyd lab up --dns-zone FILE`")
    if protocol not in ("TCP", "UDP"):
        raise LabError("--to-name probes TCP or UDP")
    version = version or VERSIONS[rec.ip_family][0]
    server = next((a for a in rec.dns["addresses"] if ipaddress.ip_address(a).version == version), None)
    if server is None:
        raise LabError(f"the lab's DNS server has no IPv{version} address")
    labels: dict[str, dict[str, str]] = {p.key: p.labels for p in pods}
    sources = [s for s in select(rec, src, labels) if s != rec.dns["pod"]]

    def one(s: str) -> tuple[str, dict[str, Any]]:
        got = ask(rec.pods[s].control, {"name": name, "server": server, "family": version, "protocol": protocol, "port": port,
                                        "timeout": timeout})
        return s, {"resolved": bool(got.get("resolved")), "addresses": got.get("addresses", []),
                   "connected": bool(got.get("ok")) and bool(got.get("resolved")), **({"error": got["error"]} if "error" in got else {})}

    with ThreadPoolExecutor(max_workers=min(64, max(1, len(sources)))) as ex:
        return dict(ex.map(one, sources))


def expected(manifests: Path, protocol: str, port: int | None, sources: list[str], targets: list[str],
             version: int | None = None) -> Matrix:
    """What the policy engine says for the lab's current manifests (over IP version
    `version`: an ipBlock admits a pod's address of that family or not)."""
    w = load_world([manifests], strict_addresses=True)
    m = compute(w.compile(), w.pods, protocol, port, version=version)
    allowed = {s: [d for d in targets if d in m.allowed.get(s, ())] for s in sources}
    return Matrix(protocol, m.port, sorted(set(sources) | set(targets)), allowed, targets=targets)


def services(rec: LabRecord) -> list[tuple[str, int | None]]:
    """ICMP and every TCP/UDP port a lab pod serves."""
    out: set[tuple[str, int | None]] = set()
    for p in rec.pods.values():
        out |= {("TCP", x) for x in p.tcp} | {("UDP", x) for x in p.udp}
    return [("ICMP", None), *sorted(out, key=lambda s: (s[0], s[1] or 0))]
