"""Ways to tamper with what policyd owns in a node's kernel, each with the drift kind the
agent must report: used by tests/e2e/test_drift.py and bench/drift.py."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policyd.lab.lab import Lab

def nft(netns: str, *cmds: dict[str, Any]) -> None:
    doc = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]})
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "-f", "-"], input=doc, text=True, check=True)


def sh(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True)


def names(netns: str, backend: str) -> tuple[str, str]:
    """(a pod ingress chain, a selector set with elements) of policyd's in that node."""
    if backend == "nftables":
        doc = json.loads(subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "table", "inet", "policyd"],
                                        capture_output=True, text=True, check=True).stdout)
        chain = next(i["chain"]["name"] for i in doc["nftables"] if "chain" in i and i["chain"]["name"].startswith("pod-in-"))
        sset = next(i["set"]["name"] for i in doc["nftables"] if "set" in i and i["set"]["name"].startswith("sel-") and i["set"].get("elem"))
        return chain, sset
    save = subprocess.run(["ip", "netns", "exec", netns, "iptables-legacy-save"], capture_output=True, text=True, check=True).stdout
    chain = next(line[1:].split()[0] for line in save.splitlines() if line.startswith(":POLICYD-IN-"))
    sets = subprocess.run(["ip", "netns", "exec", netns, "ipset", "list", "-n"], capture_output=True, text=True).stdout.split()
    sset = next(s for s in sets if s.startswith("policyd-sel-") and s.endswith("-4"))
    return chain, sset


def nft_list(netns: str, *what: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "-a", "list", *what], capture_output=True, text=True, check=True).stdout
    listing: list[dict[str, Any]] = json.loads(out)["nftables"]
    return listing


def nft_replace_rule(netns: str, chain: str, pick: Callable[[dict[str, Any]], bool]) -> None:
    """`nft replace rule` (same handle, same rule count) of the last rule of `chain` that
    `pick` accepts, by a bare accept."""
    rule = [i["rule"] for i in nft_list(netns, "chain", "inet", "policyd", chain) if "rule" in i and pick(i["rule"])][-1]
    nft(netns, {"replace": {"rule": {"family": "inet", "table": "policyd", "chain": chain, "handle": rule["handle"],
                                     "expr": [{"accept": None}]}}})


def nft_flush_a_map(netns: str) -> None:
    name = next(i["map"]["name"] for i in nft_list(netns, "table", "inet", "policyd") if "map" in i and i["map"].get("elem"))
    nft(netns, {"flush": {"map": {"family": "inet", "table": "policyd", "name": name}}})


def nft_foreign_verdict(netns: str, own: bool) -> None:
    """N1 of issue 42: a verdict-map entry whose verdict is not a jump, on a pod's own key
    (`own`: it opens the pod) or on a key no pod has (`"foo0" : accept`)."""
    name, m = next((i["map"]["name"], i["map"]) for i in nft_list(netns, "table", "inet", "policyd")
                   if "map" in i and i["map"]["name"].startswith("pod-ingress-") and i["map"].get("elem"))
    key, verdict = m["elem"][0]
    elem = {"family": "inet", "table": "policyd", "name": name}
    if own:
        nft(netns, {"delete": {"element": {**elem, "elem": [[key, verdict]]}}}, {"add": {"element": {**elem, "elem": [[key, {"accept": None}]]}}})
    else:
        nft(netns, {"add": {"element": {**elem, "elem": [["foo0" if name.endswith("-if") else "10.99.0.1", {"accept": None}]]}}})


def drop_family(netns: str, family: int) -> None:
    """What a clumsy operator does to one address family: unhook policyd and flush and
    delete every POLICYD-* chain of iptables (or ip6tables) only."""
    tool = "iptables-legacy" if family == 4 else "ip6tables-legacy"
    save = subprocess.run(["ip", "netns", "exec", netns, f"{tool}-save", "-t", "filter"], capture_output=True, text=True, check=True).stdout
    chains = [line[1:].split()[0] for line in save.splitlines() if line.startswith(":POLICYD-")]
    assert chains, save
    for builtin in ("FORWARD", "INPUT"):
        sh(netns, tool, "-D", builtin, "-j", f"POLICYD-{builtin}")
    for flag in ("-F", "-X"):
        for chain in chains:
            sh(netns, tool, flag, chain)


def tampers(backend: str, netns: str, chain: str, sset: str, member: str) -> list[tuple[str, str, Callable[[], None]]]:
    """(what is done, the drift kind the agent must report, how)."""
    t = "policyd"
    if backend == "nftables":
        accept = {"expr": [{"accept": None}]}
        return [
            ("rule inserted at the top of the forward hook", "rules-changed",
             lambda: nft(netns, {"insert": {"rule": {"family": "inet", "table": t, "chain": "forward-hook", **accept}}})),
            ("rule appended to a pod chain", "rules-changed",
             lambda: nft(netns, {"add": {"rule": {"family": "inet", "table": t, "chain": chain, **accept}}})),
            ("pod chain flushed", "chain-flushed", lambda: nft(netns, {"flush": {"chain": {"family": "inet", "table": t, "name": chain}}})),
            ("foreign chain", "foreign-chain", lambda: nft(netns, {"add": {"chain": {"family": "inet", "table": t, "name": "intruder"}}})),
            ("foreign set", "foreign-set",
             lambda: nft(netns, {"add": {"set": {"family": "inet", "table": t, "name": "intruder", "type": "ipv4_addr"}}})),
            ("set element removed", "set-elements",
             lambda: nft(netns, {"delete": {"element": {"family": "inet", "table": t, "name": sset, "elem": [member]}}})),
            ("set element added", "set-elements",
             lambda: nft(netns, {"add": {"element": {"family": "inet", "table": t, "name": sset, "elem": ["10.99.99.98"]}}})),
            ("set element swapped (same count)", "set-elements",
             lambda: nft(netns, {"delete": {"element": {"family": "inet", "table": t, "name": sset, "elem": [member]}}},
                         {"add": {"element": {"family": "inet", "table": t, "name": sset, "elem": ["10.99.99.99"]}}})),
            ("a pod chain's final drop replaced in place", "rules-changed", lambda: nft_replace_rule(netns, chain, lambda r: True)),
            ("the forward hook's dispatch rule replaced by accept", "rules-changed",
             lambda: nft_replace_rule(netns, "forward-hook", lambda r: "vmap" in json.dumps(r["expr"]))),
            ("a verdict map flushed", "map-elements", lambda: nft_flush_a_map(netns)),
            ("a pod's dispatch entry given the verdict accept", "map-elements", lambda: nft_foreign_verdict(netns, own=True)),
            ("a foreign dispatch entry (foo0 : accept)", "map-elements", lambda: nft_foreign_verdict(netns, own=False)),
            ("the anti-spoofing set flushed", "set-elements",
             lambda: nft(netns, {"flush": {"set": {"family": "inet", "table": t, "name": "pod-addr-v4"}}})),
            ("table deleted", "table-missing", lambda: nft(netns, {"delete": {"table": {"family": "inet", "name": t}}})),
        ]
    return [
        ("rule inserted at the top of the forward chain", "rules-changed",
         lambda: sh(netns, "iptables-legacy", "-I", "POLICYD-FORWARD", "1", "-j", "ACCEPT")),
        ("rule appended to a pod chain", "rules-changed", lambda: sh(netns, "iptables-legacy", "-A", chain, "-j", "ACCEPT")),
        # IPv4's copy only: the chain still has its IPv6 rules, so its rules changed
        ("pod chain flushed (IPv4)", "rules-changed", lambda: sh(netns, "iptables-legacy", "-F", chain)),
        ("jump from FORWARD removed", "jump-missing", lambda: sh(netns, "iptables-legacy", "-D", "FORWARD", "-j", "POLICYD-FORWARD")),
        # N2 of issue 42: a rule above policyd's jump bypasses it
        ("a rule inserted above the jump in FORWARD", "jump-not-first",
         lambda: sh(netns, "iptables-legacy", "-I", "FORWARD", "1", "-s", member, "-j", "ACCEPT")),
        ("foreign chain", "foreign-chain", lambda: sh(netns, "iptables-legacy", "-N", "POLICYD-INTRUDER")),
        ("foreign set", "foreign-set", lambda: sh(netns, "ipset", "create", "policyd-intruder", "hash:ip")),
        ("set element removed", "set-elements", lambda: sh(netns, "ipset", "del", sset, member)),
        ("set element added", "set-elements", lambda: sh(netns, "ipset", "add", sset, "10.99.99.98")),
        ("set element swapped (same count)", "set-elements",
         lambda: sh(netns, "sh", "-c", f"ipset del {sset} {member} && ipset add {sset} 10.99.99.99")),
        ("every chain removed from IPv4 only", "chain-missing", lambda: drop_family(netns, 4)),
        ("a pod's dispatch rule deleted", "map-elements", lambda: sh(netns, "iptables-legacy", "-D", "POLICYD-INGRESS-IF", "1")),
        ("an ipset flushed", "set-elements", lambda: sh(netns, "ipset", "flush", sset)),
    ]


def repair_times(lab: Lab, backend: str,
                 after_each: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> list[tuple[str, str, float]]:
    """Tamper in turn (on the node of a backend pod) and time each repair: from the tamper
    to the agent's status counting a repair of that kind. (what, kind, seconds)."""
    import time

    st = lab.status()
    backend_pod = next(p for p in st["pods"] if "/backend-" in p["pod"])
    node = next(n for n in st["nodes"] if n["name"] == backend_pod["node"])
    frontend = next(p for p in st["pods"] if "/frontend-" in p["pod"])
    chain, sset = names(node["netns"], backend)

    def repairs() -> dict[str, int]:
        agent = next(n for n in lab.status()["nodes"] if n["name"] == node["name"])["agent"]
        return dict(agent["drift_repairs"])

    out = []
    for what, kind, tamper in tampers(backend, node["netns"], chain, sset, frontend["ips"][0]):
        before = repairs().get(kind, 0)
        started = time.monotonic()
        tamper()
        # Everything by the one-second check (peer-set elements within its CPU budget,
        # every look on a node this small).
        limit = 3.0
        while repairs().get(kind, 0) <= before:
            if time.monotonic() - started > limit:
                raise AssertionError(f"{backend}: {what} not repaired within {limit:.0f} s ({repairs()})")
            time.sleep(0.02)
        out.append((what, kind, time.monotonic() - started))
        if after_each is not None:
            after_each(st, backend_pod)
    return out
