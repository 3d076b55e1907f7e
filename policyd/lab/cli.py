"""`policyd lab …` sub-commands: argument parsing and printing around `lab.Lab`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..backends import CHOICES
from ..model.fields import port_number
from ..whatif import report
from .families import FAMILIES
from .records import LabError

if TYPE_CHECKING:
    from .lab import Lab

EXIT_OK, EXIT_MISMATCH = 0, 1


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _lab(name: str) -> Lab:
    """The lab library is loaded only by `policyd lab` itself (not by matrix or render)."""
    from .lab import Lab

    return Lab(name)


def cmd_up(args: argparse.Namespace) -> int:
    from ..model.addressing import check_addressing

    try:
        check_addressing(args.cluster_cidr, args.node_prefix)
    except ValueError as e:
        raise LabError(str(e)) from None
    _lab(args.name).up(args.paths, args.nodes, args.topology, args.cluster_cidr, args.node_prefix, backend=args.backend,
                       ip_family=args.ip_family, dns_zone=args.dns_zone, min_ttl=args.fqdn_min_ttl)
    print(f"next: policyd lab probe --name {args.name} | policyd lab apply -f examples/policies/allow-frontend-to-backend.yaml --name {args.name}")
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    _lab(args.name).down()
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    secs = _lab(args.name).apply(args.paths)
    print(f"applied by every agent in {secs * 1e3:.0f} ms")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    missing = _lab(args.name).delete(args.paths)
    return EXIT_MISMATCH if missing else EXIT_OK


def cmd_label(args: argparse.Namespace) -> int:
    secs = _lab(args.name).label(args.kind, args.target, args.pairs, args.namespace)
    print(f"applied by every agent in {secs * 1e3:.0f} ms")
    return EXIT_OK


def cmd_restart_agent(args: argparse.Namespace) -> int:
    pid = _lab(args.name).restart_agent(args.node)
    print(f"agent of {args.node} running (pid {pid}) and in step with the lab")
    return EXIT_OK


EXIT_BAD = 2


def cmd_probe(args: argparse.Namespace) -> int:
    lab = _lab(args.name)
    version = {"ipv4": 4, "ipv6": 6}.get(args.ip_family or "")
    if args.to_name is not None:
        return probe_names(lab, args, version)
    m = lab.probe(args.src, args.dst, args.protocol, args.port, args.timeout, progress=err, version=version)
    if args.output == "json":
        print(json.dumps(m.to_json(), indent=2))
    else:
        print(report.matrix_table(m, f"Observed in lab {args.name}: {report.service(m.protocol, m.port)}"), end="")
    return EXIT_OK


def probe_names(lab: Lab, args: argparse.Namespace, version: int | None) -> int:
    """`lab probe --to-name`: exit 0 when every source connected, 1 when any was refused or
    timed out, 2 when the name did not resolve."""
    if args.dst is not None:
        raise LabError("--to and --to-name: probe pods, or a name, not both")
    if args.protocol not in ("TCP", "UDP"):
        raise LabError("--to-name probes TCP or UDP")
    from .probes import probe_name

    got = probe_name(lab.load(), lab.pods(), args.src, args.to_name, args.protocol, args.port, args.timeout, version)
    if args.output == "json":
        print(json.dumps({"kind": "NameProbe", "version": 1, "name": args.to_name, "protocol": args.protocol, "port": args.port,
                          "sources": got}, indent=2))
    else:
        print(f"{args.to_name} {args.protocol}/{args.port} from each pod (resolved through the lab's DNS server):")
        for src, r in sorted(got.items()):
            addrs = ", ".join(r["addresses"]) or "-"
            state = ("connected" if r["connected"] else f"not connected ({r.get('error', 'timed out')})") if r["resolved"] \
                else f"does not resolve ({r.get('error', '')})"
            print(f"  {src:<32} {addrs:<24} {state}")
    if not got or not all(r["resolved"] for r in got.values()):
        return EXIT_BAD
    return EXIT_OK if all(r["connected"] for r in got.values()) else EXIT_MISMATCH


def cmd_check(args: argparse.Namespace) -> int:
    lab = _lab(args.name)
    from .check import run_check

    bad = run_check(lab, args.protocol, args.port, args.timeout, progress=err)
    print("lab check: every probe matches the policy engine" if not bad else f"lab check: {bad} mismatch(es)")
    return EXIT_MISMATCH if bad else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    st = _lab(args.name).status()
    if args.output == "json":
        print(json.dumps({"kind": "LabStatus", "version": 1, **st}, indent=2))
        return EXIT_OK
    print(f"lab {st['name']}: {st['topology']} topology, {st['dispatch']} dispatch, {st['backend']} backend, {st['ip_family']}, "
          f"manifest generation {st['generation']}, state {st['state']}")
    print("nodes:")
    for n in st["nodes"]:
        a = n["agent"]
        health = "healthy" if a["healthy"] else ("running, unhealthy" if a["running"] else "NOT RUNNING")
        last = f"last sync {a['last_sync_ago_s']} s ago ({a['last_sync_ms']} ms, {a['last_ops']} ops)" if a["last_sync_ago_s"] is not None else "no sync yet"
        # The last error is history once the agent is healthy again: say so, not "error".
        extra = "" if not a["last_error"] else (f", recovered from: {a['last_error']}" if a["healthy"] else f", error: {a['last_error']}")
        ranges = ", ".join(n["podCIDRs"])
        print(f"  {n['name']:<10} {ranges:<16} agent pid {a['pid']} {health}, generation {a['generation']}, "
              f"{a['local_pods']} local pods, {last}{extra}")
        if "names" in a:
            nm = a["names"]
            print(f"    domainNames: {nm['responses']} DNS answers, {nm['learned']} learned from, {nm['held_entries']} addresses held"
                  + ("" if nm["queue_running"] else f"; QUEUE NOT BOUND ({nm['last_error']})"))
        for _, problems in sorted(a["manifest_problems"].items()):
            for problem in problems:
                print(f"    manifest problem (the file's last good version is enforced): {problem}")
    if "dns" in st:
        print(f"DNS: CoreDNS in {st['dns']['pod']} ({', '.join(st['dns']['addresses'])}), {len(st['dns']['names'])} names; "
              f"external hosts {', '.join(st['dns']['external']) or '-'}")
    print("pods:")
    for p in st["pods"]:
        ports = " ".join([f"tcp/{x}" for x in p["tcp"]] + [f"udp/{x}" for x in p["udp"]] + [f"sctp/{x}(not served)" for x in p["sctp_not_served"]])
        print(f"  {p['pod']:<32} {p['node']:<8} {', '.join(p['ips']):<14} {p['interface']:<16} {'running' if p['running'] else 'STOPPED'}  {ports}")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    lab = _lab(args.name)
    rec = lab.load()
    if args.lines < 1:
        raise LabError(f"--lines {args.lines}: give a number of lines, 1 or more")
    for node in sorted(rec.nodes) if args.node is None else [args.node]:
        if node not in rec.nodes:
            raise LabError(f"lab {args.name} has no node {node!r} (nodes: {', '.join(sorted(rec.nodes))})")
        lines = lab.agents.drops(node, args.lines) if args.drops else lab.agents.log_tail(node, args.lines).splitlines()
        print(f"--- {node} ({lab.agents.log_path(node)})")
        for line in lines:
            print(line)
    return EXIT_OK


def cmd_counters(args: argparse.Namespace) -> int:
    lab = _lab(args.name)
    nodes = sorted(lab.load().nodes) if args.node is None else [args.node]
    got = {node: lab.counters(node) for node in nodes}
    if args.output == "json":
        print(json.dumps({node: [{"kind": k.kind, "namespace": k.namespace, "policy": k.policy, "direction": k.direction, "rule": k.rule,
                                  "packets": c.packets, "bytes": c.bytes} for k, c in sorted(cs.by_rule.items())]
                          for node, cs in got.items()}, indent=2))
        return EXIT_OK
    for node, cs in got.items():
        print(f"--- {node}: packets, bytes, rule (summed over the node's pods)")
        for k, c in sorted(cs.by_rule.items()):
            print(f"{c.packets:>10} {c.bytes:>12}  {k.kind:<5} {k.describe()}")
    return EXIT_OK


def cmd_flows(args: argparse.Namespace) -> int:
    doc = _lab(args.name).flows(args.node)
    if args.output == "json":
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(report.flows_table(doc), end="")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    if args.fqdn:
        from .fqdn_demo import run_fqdn_demo

        return run_fqdn_demo(args.name, args.topology, keep=args.keep, backend=args.backend, ip_family=args.ip_family)
    from .demo import run_demo

    return run_demo(args.name, args.topology, keep=args.keep, backend=args.backend, ip_family=args.ip_family)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = sub.add_parser("lab", help="a real-packet cluster in network namespaces, with the agent enforcing")
    lsub = lab.add_subparsers(dest="lab_command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:  # noqa: A002
        p: argparse.ArgumentParser = lsub.add_parser(name, help=help)
        p.add_argument("--name", default="default", help="which lab (several may coexist)")
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "build a lab from manifests and start one agent per node")
    p.add_argument("-f", "--filename", dest="paths", action="append", required=True, metavar="PATH")
    p.add_argument("--nodes", type=int, default=2, help="nodes when the manifests name none")
    p.add_argument("--topology", choices=["routed", "bridge"], default="routed",
                   help="routed: cali* veths, /32 routes, interface dispatch; bridge: veth* on cni0, address dispatch")
    p.add_argument("--cluster-cidr", default="10.244.0.0/16")
    p.add_argument("--node-prefix", type=int, default=24)
    p.add_argument("--backend", choices=CHOICES, default="nftables",
                   help="the agents' kernel backend: nftables, iptables (legacy iptables + ipset), auto")
    add_family(p)
    p.add_argument("--dns-zone", metavar="FILE", default=None,
                   help="run a DNS server (CoreDNS) in pod kube-system/lab-dns (k8s-app: kube-dns) serving FILE, records in the "
                        "standard master-file format; the agents then learn ClusterNetworkPolicy domainNames peers' addresses "
                        "from its answers; answers outside the pod ranges are served by external hosts")
    p.add_argument("--fqdn-min-ttl", type=int, default=30, help="seconds a learned address is kept at least (default 30)")

    add("down", cmd_down, "remove the lab: processes, namespaces, state")
    for name, func, help in (("apply", cmd_apply, "create or update objects, like kubectl apply"),
                             ("delete", cmd_delete, "delete the objects named in the files, like kubectl delete")):
        p = add(name, func, help)
        p.add_argument("-f", "--filename", dest="paths", action="append", required=True, metavar="PATH")

    p = add("label", cmd_label, "set (k=v) or remove (k-) labels of a pod or namespace")
    p.add_argument("kind", choices=["pod", "ns", "namespace"])
    p.add_argument("target", metavar="NAME", help="pod as NAME or NS/NAME; namespace as NAME")
    p.add_argument("pairs", nargs="+", metavar="k=v|k-")
    p.add_argument("-n", "--namespace", default="default")

    p = add("restart-agent", cmd_restart_agent, "start a node's agent again (stopping it first if it runs); waits until it is in step")
    p.add_argument("node", metavar="NODE")

    for name, func, help in (("probe", cmd_probe, "real probes between pods; JSON like policyd matrix"),
                             ("check", cmd_check, "probe and compare with policyd matrix; exit 1 on any mismatch")):
        p = add(name, func, help)
        p.add_argument("--protocol", type=str.upper, choices=["TCP", "UDP", "ICMP"], default="TCP" if name == "probe" else None)
        p.add_argument("--port", type=port_number, default=80)
        p.add_argument("--timeout", type=float, default=0.5, help="seconds before a probe counts as blocked")
        if name == "probe":
            p.add_argument("--from", dest="src", metavar="SEL", help="NS/POD or a label selector (app=web,tier!=db)")
            p.add_argument("--to", dest="dst", metavar="SEL")
            p.add_argument("--to-name", metavar="NAME", help="resolve NAME through the lab's DNS server (lab up --dns-zone) from "
                           "each source pod, then connect to the answer's address (exit 0: every source connected, 1: one "
                           "did not, 2: the name does not resolve)")
            p.add_argument("-o", "--output", choices=["table", "json"], default="table")
            p.add_argument("--ip-family", choices=["ipv4", "ipv6"], default=None,
                           help="probe the destinations' addresses of this family (default: the lab's primary one); "
                                "lab check probes every family the lab has")

    p = add("status", cmd_status, "nodes, pods, addresses, interfaces, agent health and last sync")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")

    p = add("logs", cmd_logs, "the node agents' logs; --drops: only the drop log (each dropped packet and the policies that dropped it)")
    p.add_argument("--node", default=None, help="one node (default: all)")
    p.add_argument("--drops", action="store_true", help="only the drop log's lines")
    p.add_argument("-n", "--lines", type=int, default=20, help="the last N lines of each node (default 20)")

    p = add("counters", cmd_counters, "packets and bytes each policy rule has accepted or dropped, per node, from the kernel")
    p.add_argument("--node", default=None, help="one node (default: all)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")

    p = add("flows", cmd_flows, "the new connections the agents saw (conntrack), per source, destination and port: "
                                "what policyd advise reads")
    p.add_argument("--node", default=None, help="one node (default: all)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")

    p = add("demo", cmd_demo, "the allow-frontend-to-backend walk-through on real packets")
    p.set_defaults(name="demo")
    p.add_argument("--topology", choices=["routed", "bridge"], default="routed")
    p.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    p.add_argument("--fqdn", action="store_true", help="the egress-to-domain-names walk-through instead: CoreDNS serving "
                   "examples/fqdn/zone.db, a ClusterNetworkPolicy with domainNames (examples/fqdn/)")
    p.add_argument("--backend", choices=CHOICES, default="nftables",
                   help="the agents' kernel backend: nftables, iptables (legacy iptables + ipset), auto")
    add_family(p)


def add_family(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ip-family", choices=list(FAMILIES), default="ipv4",
                   help="the pods' addresses: ipv4, ipv6 (fd00:A:B:C::D, mirroring the IPv4 range), or dual (both, IPv4 first)")


__all__ = ["register", "LabError"]
