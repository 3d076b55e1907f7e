"""`policyd` command line: argument parsing and wiring only."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import __version__
from .backends import BACKENDS
from .compile.evaluate import Endpoint, Evaluator
from .compile.plan import DomainSetSpec
from .kube.cli import RunError
from .lab.records import LabError
from .model.addressing import check_addressing
from .model.fields import port_number
from .model.objects import AUDIT_ANNOTATION, IPAddress
from .model.problems import InvalidInput, printable
from .observe.counters import Counters
from .whatif import report
from .whatif.matrix import compute, compute_grouped, endpoint, pairs, service_port
from .whatif.world import World, load_world

if TYPE_CHECKING:
    from .compile.engine import Compiler
    from .dataplane.config import RenderConfig

EXIT_OK, EXIT_DENIED, EXIT_INVALID = 0, 1, 2
EXIT_INTERNAL = 3  # a bug of ours: never 1, which explain uses for DENIED
MAX_SHOWN = 100  # problems printed; the rest are counted (400,000 empty documents are one line more, not 108 MB)


class UsageError(Exception):
    """A request the input cannot answer (unknown pod, …): exit 2 with the message."""


def add_input(p: argparse.ArgumentParser, live: bool = True) -> None:
    p.add_argument("-f", "--filename", dest="paths", action="append", required=not live, metavar="PATH",
                   help="manifest file or directory (repeatable; multi-document YAML and kind: List)")
    if live:
        p.add_argument("--kubeconfig", metavar="PATH", help="read a live cluster through this kubeconfig instead of files")
        p.add_argument("--in-cluster", action="store_true", help="read the live cluster this pod runs in")
        p.add_argument("--context", metavar="NAME", help="with a kubeconfig: this context instead of its current one")
    p.add_argument("--cluster-cidr", default="10.244.0.0/16", help="pod addresses for pods without status.podIPs")
    p.add_argument("--node-prefix", type=int, default=24, help="prefix length of each node's pod CIDR")


def add_service(p: argparse.ArgumentParser, icmp: bool) -> None:
    protos = ["TCP", "UDP", "SCTP"] + (["ICMP"] if icmp else [])
    p.add_argument("--protocol", type=str.upper, choices=protos, default="TCP")
    p.add_argument("--port", type=port_number, default=80)


def is_live(args: argparse.Namespace) -> bool:
    """Read a live cluster: a kubeconfig, a context of the default one, or in-cluster."""
    return bool(getattr(args, "kubeconfig", None) or getattr(args, "context", None) or getattr(args, "in_cluster", False))


def world_from(args: argparse.Namespace) -> World:
    live = is_live(args)
    if live and args.paths:
        raise UsageError("read either manifests (-f) or a live cluster (--kubeconfig/--in-cluster), not both")
    if live:
        from .kube.client import read_cluster

        try:
            namespaces, pods, policies, cluster_policies, nodes = read_cluster(args.kubeconfig, args.context)
        except InvalidInput:
            raise  # listed problem by problem by main()
        except Exception as e:  # noqa: BLE001 - connection, auth, config: say what failed
            raise UsageError(f"cannot read the cluster: {type(e).__name__}: {e}") from None
        return World(namespaces, pods, policies, {}, cluster_policies, nodes)
    if not args.paths:
        raise UsageError("give manifests (-f PATH) or a live cluster (--kubeconfig PATH or --in-cluster)")
    try:
        check_addressing(args.cluster_cidr, args.node_prefix)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return load_world(args.paths, args.cluster_cidr, args.node_prefix)


def cmd_matrix(args: argparse.Namespace) -> int:
    w = world_from(args)
    compiler, proto = w.compile(), args.protocol
    if args.namespace is not None:  # verdicts from every policy; only these pods shown
        shown = [p for p in w.pods if p.namespace == args.namespace]
        if not shown:
            raise UsageError(f"no pods in namespace {args.namespace!r}")
        w = dataclasses.replace(w, pods=shown)
    if args.by == "pod" and args.output == "html":
        raise UsageError("-o html shows groups of pods (--by profile, the default); every pair: -o json --by pod")
    if args.by == "pod" and args.output == "json":  # every pair, written as computed
        keys, rows = pairs(compiler, w.pods, proto, args.port)
        report.write_pairs_json(sys.stdout, proto, service_port(proto, args.port), keys, rows)
    elif args.by == "pod":
        print(report.matrix_table(compute(compiler, w.pods, proto, args.port)) + report.audit_note(w.policies), end="")
    elif args.output == "json":
        print(json.dumps(compute_grouped(compiler, w.pods, proto, args.port).to_json(), indent=2))
    elif args.output == "html":
        print(matrix_page(w, compiler, proto, args.port), end="")
    else:
        print(report.grouped_table(compute_grouped(compiler, w.pods, proto, args.port)) + report.audit_note(w.policies), end="")
    return EXIT_OK


def matrix_page(w: World, compiler: Compiler, proto: str, port: int | None) -> str:
    """The grouped matrix as HTML, each cell's tooltip the explanation between the groups'
    first pods (a group's pod to another of its pods, or to itself)."""
    from .whatif.html import matrix_html

    m = compute_grouped(compiler, w.pods, proto, port)
    pods = {str(p.key): p for p in w.pods}
    ev = Evaluator(compiler)

    def explain(src: str, dst: str) -> str:
        a, b = m.groups[src][0], m.groups[dst][1 if src == dst and len(m.groups[dst]) > 1 else 0]
        if a == b:
            return f"{a} → itself: allowed (a pod always reaches itself)"
        return report.explain_text(ev.verdict(endpoint(pods[a]), endpoint(pods[b]), proto, port)).strip()

    return matrix_html(m, explain, audit=report.audit_note(w.policies))


def resolve_endpoint(w: World, ref: str) -> Endpoint:
    """A pod (NAMESPACE/POD), a node (node/NAME: its first InternalIP or ExternalIP) or an
    address (named after the pod or node that holds it, if one does)."""
    try:
        ip = ipaddress.ip_address(ref)
    except ValueError:
        pass
    else:
        pod = next((p for p in w.pods if ip in p.ips), None)
        return Endpoint(ip, pod, None if pod is not None else next((n.name for n in w.nodes if ip in n.addresses), None))
    if ref.startswith("node/"):
        node = next((n for n in w.nodes if n.name == ref.removeprefix("node/")), None)
        if node is None or not node.addresses:
            raise UsageError(f"no node {ref.removeprefix('node/')!r} with an address (status.addresses InternalIP or ExternalIP) "
                             "in the manifests")
        return Endpoint(node.addresses[0], None, node.name)
    pod = w.find_pod(ref)
    if pod is None:
        raise UsageError(f"no pod {ref!r} in the manifests (use NAMESPACE/POD, node/NAME or an IP address)")
    if not pod.addressable:
        raise UsageError(f"pod {pod.key} has no address (host network, finished, or no IP)")
    return endpoint(pod)


def same_family(w: World, src_ref: str, dst_ref: str) -> tuple[Endpoint, Endpoint]:
    """A packet has one address family: an end given as a pod takes its address of the other
    end's family; ends that share no family are refused."""
    src, dst = resolve_endpoint(w, src_ref), resolve_endpoint(w, dst_ref)
    if src.ip.version == dst.ip.version:
        return src, dst

    def given_as_pod(ref: str, e: Endpoint, version: int) -> Endpoint | None:
        if is_address(ref):
            return None
        if e.pod is None:  # a node given by name: its address of that family
            node = next((n for n in w.nodes if n.name == e.node), None)
            a = next((a for a in node.addresses if a.version == version), None) if node is not None else None
            return None if a is None else Endpoint(a, None, e.node)
        a = next((a for a in e.pod.ips if a.version == version), None)
        return None if a is None else Endpoint(a, e.pod)

    if (moved := given_as_pod(src_ref, src, dst.ip.version)) is not None:
        return moved, dst
    if (moved := given_as_pod(dst_ref, dst, src.ip.version)) is not None:
        return src, moved
    raise UsageError(f"--from {src} ({src.ip}) and --to {dst} ({dst.ip}) share no address family: a packet has one; give "
                     "addresses of one family, or pods that both have one")


def is_address(ref: str) -> bool:
    try:
        ipaddress.ip_address(ref)
        return True
    except ValueError:
        return False


def cmd_explain(args: argparse.Namespace) -> int:
    lab = None
    if args.lab is not None:
        if args.paths or is_live(args):
            raise UsageError("--lab reads the lab's own manifests: give no -f, --kubeconfig, --context or --in-cluster")
        from .lab.lab import Lab

        lab = Lab(args.lab)
        args.paths = [str(lab.manifests)]
    if args.hits and not is_live(args):
        raise UsageError("--hits reads the node agents of a live cluster (--kubeconfig or --in-cluster); a lab: --lab NAME")
    w = world_from(args)
    src, dst = same_family(w, args.src, args.dst)
    if src.pod is not None and src.pod == dst.pod:
        print(f"{src} ({src.ip}) → {dst} ({dst.ip}) {report.service(args.protocol, args.port)}: ALLOWED\n"
              "  a pod always reaches itself: the packet never leaves the pod's network namespace, so no policy applies "
              "(as `policyd matrix` shows)")
        return EXIT_OK
    learned = None
    if args.name is not None:
        from .model import names

        if not names.valid(args.name):
            raise UsageError(f"--name {args.name!r}: not a domain name")

        def learned(spec: DomainSetSpec, ip: IPAddress) -> bool:
            """As if the source pod had resolved --name to the destination's address."""
            return ip == dst.ip and names.any_matches(spec.names, args.name)

        print(f"as if {src} had resolved {args.name} to {dst.ip} (the answer's address, learned for the names that list it)")
    v = Evaluator(w.compile(), learned).verdict(src, dst, args.protocol, args.port)
    print(report.explain_text(v), end="")
    if lab is not None:
        print(report.hits_text(v, lab.counters), end="")
    elif args.hits:
        print(report.hits_text(v, agents_counters(args)), end="")
    return EXIT_OK if v.allowed else EXIT_DENIED


def agents_counters(args: argparse.Namespace) -> Callable[[str], Counters]:
    """node → its agent's rule counters, read from its /metrics (a clear error if it cannot)."""
    from .kube.client import agent_counters, node_addresses

    addresses = node_addresses(None if args.in_cluster else args.kubeconfig, args.context)

    def of(node: str) -> Counters:
        if node not in addresses:
            raise UsageError(f"node {node} has no address in the API: cannot read its agent's counters")
        try:
            return agent_counters(addresses[node], args.metrics_port)
        except OSError as e:
            raise UsageError(f"node {node}'s agent at http://{addresses[node]}:{args.metrics_port}/metrics: {e}") from None

    return of


def render_config(args: argparse.Namespace) -> RenderConfig:
    from .dataplane.config import DispatchMode, RenderConfig

    return RenderConfig(table=args.table, mode=DispatchMode(args.mode))


def cmd_render(args: argparse.Namespace) -> int:
    from .backends import make_dialect
    from .dataplane.cni import IFPREFIX_RE, calico_interface
    from .dataplane.desired import DesiredState

    try:
        dialect = make_dialect(args.backend, args.table)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if args.output == "json" and not dialect.supports_json:
        raise UsageError(f"-o json is the libnftables transaction; the {args.backend} backend prints its tools' input as text")
    if args.mode == "interface" and not IFPREFIX_RE.match(args.interface_prefix):
        raise UsageError(f"--interface-prefix {args.interface_prefix!r}: 1-14 of [A-Za-z0-9_.-]")
    w = world_from(args)
    if args.node not in w.node_cidrs:
        raise UsageError(f"no node {args.node!r} in the manifests (nodes: {', '.join(sorted(w.node_cidrs))})")
    compiler = w.compile(args.node)
    cfg = render_config(args)
    try:
        desired = DesiredState(cfg, dialect.renderer(cfg))
    except ValueError as e:
        raise UsageError(str(e)) from e
    for spec in compiler.sets:
        desired.update_set(spec, compiler)
    for key in compiler.plans:
        desired.update_pod(key, compiler, lambda k, ips: calico_interface(k, args.interface_prefix))
    print(dialect.text(desired.ruleset, as_json=args.output == "json"), end="")
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    from .backends import make_backend, resolve
    from .dataplane.backend import NotOwned
    from .reconcile.presence import held

    try:
        backend = make_backend(args.backend, args.table)
        if not args.force and held(resolve(args.backend), args.table):
            raise UsageError(f"not removing {backend.describe()}: a policyd agent running in this network namespace "
                             "would re-create it at once. Stop the agent first (after helm uninstall, wait until its "
                             "pods are gone), or pass --force")
        removed = backend.delete_table()
    except (ValueError, RuntimeError, NotOwned) as e:
        raise UsageError(str(e)) from e
    if removed:
        print(f"removed {backend.describe()}")
    else:
        print(f"nothing to remove: no {backend.describe()}")
    return EXIT_OK


def cmd_advise(args: argparse.Namespace) -> int:
    from .advise.output import as_json, manifests_yaml, summary
    from .advise.propose import SYSTEM_NAMESPACES, propose
    from .advise.prove import prove
    from .observe.flows import FlowRecord, merge

    flows: list[FlowRecord]
    if args.lab:
        if args.flow_files or args.paths or is_live(args):
            raise UsageError("--lab reads the lab's flows and manifests: give no --flows, -f or cluster options with it")
        from .lab.lab import Lab

        lab = Lab(args.lab)
        flows = merge([lab.flows()])
        w = load_world([lab.manifests], strict_addresses=True)
    elif not args.flow_files and is_live(args):
        from .kube.client import agent_flows, node_addresses

        w = world_from(args)
        docs = []
        for node, address in sorted(node_addresses(None if args.in_cluster else args.kubeconfig, args.context).items()):
            try:
                docs.append(agent_flows(address, args.metrics_port))
            except OSError as e:
                raise UsageError(f"node {node}'s agent at {address}:{args.metrics_port}/flows: {e} (the chart's flows.enabled "
                                 "must be on; --flows FILE reads saved records instead)") from None
        flows = merge(docs)
    else:
        if not args.flow_files:
            raise UsageError("give the flows: --lab NAME, a live cluster whose agents record them (--kubeconfig or "
                             "--in-cluster), or --flows FILE (policyd lab flows -o json, or an agent's /flows) with the "
                             "cluster's objects (-f PATH or --kubeconfig)")
        docs = [read_flows(path) for path in args.flow_files]
        try:
            flows = merge(docs)
        except ValueError as e:
            raise UsageError(f"--flows: {e}") from None
        w = world_from(args)
    gone = sorted({e for f in flows for e in (f.src, f.dst) if "/" in e} - {p.key for p in w.pods})
    if gone:
        flows = [f for f in flows if f.src not in gone and f.dst not in gone]
        print(f"policyd advise: {len(gone)} pod(s) the flows name are not in the cluster (deleted since?): their flows are "
              f"skipped: {', '.join(printable(g) for g in gone[:10])}{' …' if len(gone) > 10 else ''}", file=sys.stderr)
    chosen = args.namespaces or sorted({p.namespace for p in w.pods if p.namespace not in SYSTEM_NAMESPACES})
    missing = sorted(set(chosen) - {p.namespace for p in w.pods})
    if missing:
        raise UsageError(f"--namespace {', '.join(missing)}: no pods there")
    proposal = propose(flows, w.pods, chosen, dns=not args.no_dns, default_deny=args.default_deny, audit=args.audit)
    proof = prove(w, flows, proposal.policies, set(chosen))
    if args.output == "json":
        print(json.dumps(as_json(proposal, proof), indent=2))
    else:
        print(manifests_yaml(proposal), end="")
    for line in summary(proposal, proof, len(flows)):
        print(line, file=sys.stderr)
    return EXIT_OK if proof.holds else EXIT_DENIED


MAX_FLOWS_TEXT = 64 * 2**20  # bytes of one flow file: 10× three nodes at the default limit


def read_flows(path: str) -> Any:
    """One --flows file as JSON: at most MAX_FLOWS_TEXT bytes, nesting as deep as JSON's
    parser takes; anything else a clear error (exit 2)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FLOWS_TEXT + 1)
    except OSError as e:
        raise UsageError(f"--flows {path}: {e.strerror}") from None
    if len(data) > MAX_FLOWS_TEXT:
        raise UsageError(f"--flows {path}: larger than the {MAX_FLOWS_TEXT // 2**20} MiB policyd reads")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--flows {path}: not JSON: {e}") from None
    except RecursionError:
        raise UsageError(f"--flows {path}: nested too deeply to be FlowRecords") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policyd", description="Kubernetes NetworkPolicy enforcement with nftables (or iptables + ipset).")
    parser.add_argument("--version", action="version", version=f"policyd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("matrix", help="reachability matrix of the pods in manifests, from the policy engine")
    add_input(p)
    add_service(p, icmp=True)
    p.add_argument("-o", "--output", choices=["table", "json", "html"], default="table",
                   help="html: one self-contained page (the deciding rule in each cell's tooltip)")
    p.add_argument("--by", choices=["profile", "pod"], default="profile",
                   help="profile (default): one row per group of pods that every pod treats alike; pod: every pair")
    p.add_argument("-n", "--namespace", default=None,
                   help="only this namespace's pods, as sources and destinations (every policy still counts)")
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("explain", help="verdict for one connection and the rule that decides it (exit 0 allowed, 1 denied)")
    add_input(p)
    add_service(p, icmp=True)
    p.add_argument("--from", dest="src", required=True, metavar="NS/POD|node/NAME|IP")
    p.add_argument("--to", dest="dst", required=True, metavar="NS/POD|node/NAME|IP")
    p.add_argument("--lab", metavar="NAME", default=None,
                   help="explain in a running lab (its manifests), with the hits the deciding rules have counted there")
    p.add_argument("--hits", action="store_true",
                   help="with --kubeconfig/--in-cluster: also what the deciding rules have counted, from the agent of each "
                        "pod's node (its /metrics on the node's InternalIP; the chart's ruleCounters must be on)")
    p.add_argument("--metrics-port", type=int, default=9808, help="the agents' metrics port, for --hits (default 9808)")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="domainNames: as if the source had resolved NAME to the --to address (an IP): whether a "
                        "ClusterNetworkPolicy domainNames rule would then admit the connection")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("render", help="the ruleset a node would get (dry run, touches no kernel)")
    add_input(p, live=False)
    p.add_argument("--node", required=True, help="node whose pods get chains")
    p.add_argument("-o", "--output", choices=["nft", "json"], default="nft",
                   help="nftables backend: nft, the readable ruleset; json, the libnftables transaction that would build it")
    p.add_argument("--backend", choices=BACKENDS, default="nftables",
                   help="iptables: the ipset and iptables-legacy-restore input that would build it")
    p.add_argument("--mode", choices=["interface", "address"], default="interface",
                   help="dispatch by host-side interface (routed CNIs) or by pod address (bridging CNIs)")
    p.add_argument("--interface-prefix", default="cali",
                   help="interface mode: pod interfaces named like Calico's (prefix + sha1(ns.pod))")
    p.add_argument("--table", default="policyd")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("advise", help="least-privilege NetworkPolicies from observed flows, proven with the engine "
                                      "(exit 1 if an observed flow would be denied)")
    add_input(p)
    p.add_argument("--lab", metavar="NAME", default=None, help="the flows and manifests of a running lab")
    p.add_argument("--flows", dest="flow_files", action="append", metavar="FILE",
                   help="FlowRecords JSON (policyd lab flows -o json, or an agent's /flows; repeatable, merged)")
    p.add_argument("-n", "--namespace", dest="namespaces", action="append", metavar="NS",
                   help="propose for this namespace's workloads (repeatable; default: every namespace with pods but kube-*)")
    p.add_argument("--default-deny", action="store_true", help="also a default deny (Ingress and Egress) per namespace")
    p.add_argument("--audit", action="store_true",
                   help=f"annotate the policies {AUDIT_ANNOTATION}: \"true\": applied, they log what they would drop and drop nothing")
    p.add_argument("--no-dns", action="store_true", help="no egress rule to the cluster DNS (kube-system, k8s-app=kube-dns, port 53)")
    p.add_argument("--metrics-port", type=int, default=9808,
                   help="with --kubeconfig/--in-cluster and no --flows: the agents' /flows port (default 9808)")
    p.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml",
                   help="yaml: the manifests (the summary goes to stderr); json: AdviseResult (docs/json.md)")
    p.set_defaults(func=cmd_advise)

    from .lab.cli import register as register_lab

    register_lab(sub)

    from .kube.cli import register as register_run

    register_run(sub)

    p = sub.add_parser("cleanup", help="remove what policyd owns in the kernel (and nothing else) from this network namespace")
    p.add_argument("--table", default="policyd")
    p.add_argument("--backend", choices=BACKENDS, default="nftables",
                   help="nftables: the table inet <table>; iptables: chains <TABLE>-* (both families) and ipsets <table>-*")
    p.add_argument("--force", action="store_true",
                   help="remove it even while a policyd agent for it runs in this network namespace (it will re-create it)")
    p.set_defaults(func=cmd_cleanup)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as e:
        print(f"policyd: {e}", file=sys.stderr)
        return EXIT_INVALID
    except LabError as e:
        print(f"policyd lab: {e}", file=sys.stderr)
        return EXIT_INVALID
    except RunError as e:
        print(f"policyd run: {e}", file=sys.stderr)
        return EXIT_INVALID
    except InvalidInput as e:
        for problem in e.problems[:MAX_SHOWN]:
            print(f"error: {problem}", file=sys.stderr)
        if len(e.problems) > MAX_SHOWN:
            print(f"error: … and {len(e.problems) - MAX_SHOWN} more (the first {MAX_SHOWN} are shown)", file=sys.stderr)
        print(f"policyd: {len(e.problems)} problem(s) in the input; nothing was done", file=sys.stderr)
        return EXIT_INVALID
    except Exception as e:  # noqa: BLE001 - a bug of ours, never to be mistaken for a verdict
        where = e.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        at = f" at {where.tb_frame.f_code.co_filename.rsplit('/', 2)[-2:][-1]}:{where.tb_lineno}" if where else ""
        print(f"policyd: internal error{at}: {type(e).__name__}: {e} (please report it; POLICYD_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        if os.environ.get("POLICYD_DEBUG"):
            raise
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
