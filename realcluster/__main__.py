"""scripts/cluster.sh: a real Kubernetes cluster on this machine, in network namespaces.

    cluster.sh images                         (build what is missing: pause, testbox, agnhost, coredns, policyd)
    cluster.sh up [--name N] [--cni bridge|ptp] [--proxy-mode iptables|nftables] [--ip-family ipv4|ipv6|dual] [--workers 2]
    cluster.sh status [--name N] [-o json]
    cluster.sh kubectl [--name N] ARGS...     (kubectl inside the cluster's fabric namespace)
    cluster.sh helm [--name N] ARGS...
    cluster.sh logs [--name N]                (the last lines of every component's log)
    cluster.sh walkthrough [--name N] [--backend nftables|iptables] [--keep]
    cluster.sh demo [--cni bridge|ptp] [--backend nftables|iptables] [--ip-family ipv4|ipv6|dual] [--keep]
                                              (up, walkthrough, down; --keep leaves it all up)
    cluster.sh conformance [--suite netpol|cnp] [--cni bridge|ptp] [--backend nftables|iptables]
                           [--proxy-mode M] [--ip-family F] [--procs 4] [--focus REGEX] [--without-policyd] [--write] [--keep]
                                              (up, the chart, an upstream suite, down: netpol is
                                              Kubernetes' Netpol e2e specs, cnp network-policy-api's
                                              ClusterNetworkPolicy conformance tests)
    cluster.sh chaos [--etcd-down 60] [--write]
                                              (two clusters side by side, bridge/nftables and
                                              ptp/iptables: faults while a prober runs;
                                              --write records docs/reliability.md)
    cluster.sh down [--name N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .cluster import Cluster, ClusterError, down
from .layout import CNI_STYLES, IP_FAMILIES, PROXY_MODES, Layout
from .paths import HELM


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("kubectl", "helm"):  # everything after [--name N] is theirs
        name, rest = ("pdc", argv[1:]) if argv[1:2] != ["--name"] else (argv[2], argv[3:])
        try:
            cluster = Cluster.existing(name)
        except ClusterError as e:
            print(f"cluster.sh: {e}", file=sys.stderr)
            return 1
        return _passthrough(cluster, ["kubectl" if argv[0] == "kubectl" else str(HELM), *rest])
    parser = argparse.ArgumentParser(prog="cluster.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    if argv[:1] == ["images"]:
        from .images import build_all

        for image in build_all(lambda s: print(f"==> {s}", flush=True)):
            print(f"==> image {image.name}: {image.archive} ({image.archive.stat().st_size / 2**20:.0f} MiB)")
        return 0
    chaos = sub.add_parser("chaos")
    chaos.add_argument("--etcd-down", type=float, default=60.0, help="seconds etcd stays stopped (default 60)")
    chaos.add_argument("--write", action="store_true", help="record the table in docs/reliability.md")
    for verb in ("up", "down", "status", "logs", "walkthrough", "demo", "conformance"):
        p = sub.add_parser(verb)
        p.add_argument("--name", default="pdc", help="cluster name, 1-8 of [a-z0-9] (default pdc)")
        if verb in ("up", "demo", "conformance"):
            p.add_argument("--cni", choices=CNI_STYLES, default="bridge")
            p.add_argument("--proxy-mode", choices=PROXY_MODES, default="iptables")
            p.add_argument("--workers", type=int, default=2)
            p.add_argument("--ip-family", choices=IP_FAMILIES, default="ipv4",
                           help="ipv4 (default); ipv6: IPv6 single-stack pods, Services and nodes; dual: both, IPv4 primary")
        if verb == "status":
            p.add_argument("-o", "--output", choices=("text", "json"), default="text")
        if verb in ("walkthrough", "demo", "conformance"):
            p.add_argument("--backend", choices=("nftables", "iptables"), default="nftables")
            p.add_argument("--keep", action="store_true", help="leave the chart and the demo pods installed (conformance: the cluster)")
        if verb == "conformance":
            p.add_argument("--suite", choices=("netpol", "cnp"), default="netpol",
                           help="netpol: Kubernetes' [sig-network] Netpol e2e specs (default); cnp: network-policy-api's "
                                "ClusterNetworkPolicy conformance tests")
            p.add_argument("--procs", type=int, default=4, help="parallel ginkgo processes (default 4; netpol only)")
            p.add_argument("--write", action="store_true", help="record the result in docs/conformance.md")
            p.add_argument("--focus", default="", metavar="REGEX",
                           help="netpol: only the specs whose text also matches; cnp: only the tests whose name matches")
            p.add_argument("--without-policyd", action="store_true",
                           help="a control run: no chart, so specs that need isolation must fail (never recorded)")
    args = parser.parse_args(argv)
    try:
        if args.verb == "chaos":
            return chaos_run(args.etcd_down, args.write)
        if args.verb == "up":
            Cluster(Layout(args.name, args.cni, args.proxy_mode, args.workers, args.ip_family)).up()
        elif args.verb == "conformance":
            return conformance(Layout(args.name, args.cni, args.proxy_mode, args.workers, args.ip_family), args.backend, args.procs,
                               args.write, args.keep, args.focus, args.without_policyd, args.suite)
        elif args.verb == "demo":
            return demo(Layout(args.name, args.cni, args.proxy_mode, args.workers, args.ip_family), args.backend, args.keep)
        elif args.verb == "down":
            down(Layout(args.name))
        else:
            cluster = Cluster.existing(args.name)
            if args.verb == "status":
                st = cluster.status()
                if args.output == "json":
                    print(json.dumps(st, indent=2))
                else:
                    for k, v in st.items():
                        print(f"{k}: {v}" if not isinstance(v, dict) else f"{k}:\n" + "\n".join(f"  {a}: {b}" for a, b in v.items()))
            elif args.verb == "logs":
                print(cluster.log_tails(40))
            elif args.verb == "walkthrough":
                from .walkthrough import walkthrough

                return 0 if walkthrough(cluster, args.backend, keep=args.keep) else 1
    except (ClusterError, ValueError, RuntimeError) as e:
        print(f"cluster.sh: {e}", file=sys.stderr)
        return 1
    return 0


def chaos_run(etcd_down: float, write: bool) -> int:
    """Both clusters up side by side, the faults on both at once, both down."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from .chaos import CONFIGS, document, on_cluster, table
    from .paths import ROOT

    started = time.monotonic()
    clusters = {cni: Cluster(Layout(f"x{uuid.uuid4().hex[:5]}", cni)) for cni in CONFIGS}
    try:
        with ThreadPoolExecutor(len(clusters)) as pool:
            for f in [pool.submit(c.up, lambda s: None) for c in clusters.values()]:
                f.result()
            runs = {CONFIGS[cni]: pool.submit(on_cluster, c, print, etcd_down) for cni, c in clusters.items()}
            results = {backend: f.result() for backend, f in runs.items()}
    finally:
        for c in clusters.values():
            c.down(say=lambda s: None)
    print("\n".join(table(results)))
    if write:
        command = "scripts/cluster.sh chaos" + (f" --etcd-down {etcd_down:g}" if etcd_down != 60 else "") + " --write"
        (ROOT / "docs" / "reliability.md").write_text(document(results, time.monotonic() - started, command))
    failed = [f"{b}: {r.fault}" for b, rs in results.items() for r in rs if not r.held and not r.opens_node]
    if failed:
        print(f"cluster.sh: denied probes connected during: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def demo(layout: Layout, backend: str, keep: bool) -> int:
    """The README's third command: a cluster, the walkthrough, and (unless --keep) nothing left."""
    from .walkthrough import walkthrough

    cluster = Cluster(layout)
    cluster.up()
    try:
        ok = walkthrough(cluster, backend, keep=keep)
    finally:
        if keep:
            print(f"kept: scripts/cluster.sh kubectl --name {layout.name} get pods -A -o wide; "
                  f"scripts/cluster.sh down --name {layout.name} removes it")
        else:
            cluster.down()
    return 0 if ok else 1


def conformance(layout: Layout, backend: str, procs: int, write: bool, keep: bool, narrow: str = "", control: bool = False,
                suite: str = "netpol") -> int:
    """scripts/conformance.sh: a cluster, the chart, an upstream suite, the report.
    `control`: without policyd (for cnp: only the chart's CRD), to see the tests fail where
    nothing enforces."""
    if write and narrow and not control:
        print("cluster.sh: --write records full runs (no --focus), or control runs (--without-policyd)", file=sys.stderr)
        return 2
    from . import cnp_conformance as cnp
    from . import conformance as c
    from .paths import TOOLS
    from .walkthrough import install_chart, uninstall_chart

    started = time.monotonic()
    cluster = Cluster(layout)
    cluster.up()
    try:
        if not control:
            install_chart(cluster, backend, print)
        elif suite == "cnp":
            cnp.install_crd(cluster)
        family = "" if layout.ip_family == "ipv4" else f"-{layout.ip_family}"
        out = TOOLS / "conformance" / (f"{suite}-{layout.cni}-{backend}-{layout.proxy_mode}{family}" if not control
                                       else f"{suite}-{layout.cni}-without-policyd{family}")
        if suite == "cnp":
            report = cnp.run_suite(cluster, backend, out, cnp.command_line(layout.cni, backend, layout.proxy_mode, narrow, control,
                                                                           layout.ip_family), narrow=narrow)
        else:
            report = c.run_suite(cluster, backend, out, c.command_line(layout.cni, backend, layout.proxy_mode, narrow, control,
                                                                       layout.ip_family), procs=procs, narrow=narrow)
        if control:
            report.config = f"control-{layout.cni}"
        print(f"==> report: {out / 'result.json'} (log in {out})")
        if write:
            from .conformance_doc import record

            record(report, suite)
            print(f"==> recorded in {c.DOC}")
        if not keep and not control:
            uninstall_chart(cluster, backend, print)
    finally:
        if keep:
            print(f"kept: scripts/cluster.sh kubectl --name {layout.name} get pods -A; scripts/cluster.sh down --name {layout.name}")
        else:
            cluster.down()
    if control:
        failed = report.count("failed")
        print(f"==> control run without policyd: {failed} of {len(report.specs)} specs failed, as they must where nothing "
              f"enforces the policies; {time.monotonic() - started:.0f} s in all")
        return 0 if failed else 1
    print(f"==> {'PASSED' if report.ok else 'FAILED'}: {report.summary()}; {time.monotonic() - started:.0f} s in all")
    return 0 if report.ok else 1


def _passthrough(cluster: Cluster, argv: list[str]) -> int:
    """Run kubectl or helm in the fabric namespace with the terminal attached."""
    import os
    import subprocess

    from .paths import k8s_bin

    if argv[0] == "kubectl":
        argv[0] = str(k8s_bin("kubectl"))
    env = {**os.environ, "KUBECONFIG": str(cluster.layout.kubeconfig)}
    return subprocess.call(["nsenter", f"--net=/run/netns/{cluster.layout.fabric}", "--", *argv], env=env)


if __name__ == "__main__":
    sys.exit(main())
