"""`kubectl policyd`: the what-if tools against the cluster of the current kubeconfig context,
with kubectl's conventions (a kubectl plugin: the `kubectl-policyd` executable on PATH).

    kubectl policyd explain FROM TO [--protocol P] [--port N] [--hits]
    kubectl policyd matrix [-A] [--by profile|pod] [-o table|json] [--protocol P] [--port N]

FROM and TO are pods of the namespace (-n, else the context's namespace, else `default`),
NAMESPACE/POD, or addresses. `matrix` shows the namespace's pods (-A: every pod); every
policy of the cluster counts either way. `--kubeconfig` and `--context` choose the cluster
as they do for kubectl. Exit codes are policyd's: explain 0 allowed, 1 denied; 2 bad input."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from .cli import EXIT_INVALID
from .cli import main as policyd_main
from .model.fields import port_number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl policyd", description="NetworkPolicy what-if against the current kubeconfig context.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    common.add_argument("--context", metavar="NAME", help="kubeconfig context (default: the current one)")
    common.add_argument("-n", "--namespace", metavar="NS", help="namespace (default: the context's, else default)")
    common.add_argument("--protocol", type=str.upper, choices=["TCP", "UDP", "SCTP", "ICMP"], default="TCP")
    common.add_argument("--port", type=port_number, default=80)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", parents=[common], help="the verdict for one connection and the rule that decides it")
    p.add_argument("src", metavar="FROM", help="POD (in the namespace), NAMESPACE/POD, node/NAME or an address")
    p.add_argument("dst", metavar="TO", help="POD (in the namespace), NAMESPACE/POD, node/NAME or an address")
    p.add_argument("--hits", action="store_true", help="also what the deciding rules have counted, from each node's agent")
    p.add_argument("--metrics-port", type=int, default=9808, help="the agents' metrics port, for --hits")

    p = sub.add_parser("matrix", parents=[common], help="who may connect to whom, from the policy engine")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every pod, not only the namespace's")
    p.add_argument("--by", choices=["profile", "pod"], default="profile")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    return parser


def policyd_args(args: argparse.Namespace) -> list[str]:
    """The `policyd` command line the plugin's arguments mean."""
    from .kube.api import context_namespace, kubeconfig_path

    kubeconfig = str(kubeconfig_path(args.kubeconfig))
    live = ["--kubeconfig", kubeconfig, *(["--context", args.context] if args.context else [])]
    ns = args.namespace or context_namespace(kubeconfig, args.context)
    service = ["--protocol", args.protocol, "--port", str(args.port)]
    if args.command == "explain":
        out = ["explain", *live, *service, "--from", qualified(args.src, ns), "--to", qualified(args.dst, ns)]
        return out + (["--hits", "--metrics-port", str(args.metrics_port)] if args.hits else [])
    out = ["matrix", *live, *service, "--by", args.by, "-o", args.output]
    return out if args.all_namespaces else [*out, "--namespace", ns]


def qualified(ref: str, namespace: str) -> str:
    """A pod named alone is in the namespace; NAMESPACE/POD and addresses stay as given."""
    try:
        ipaddress.ip_address(ref)
        return ref
    except ValueError:
        return ref if "/" in ref else f"{namespace}/{ref}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        translated = policyd_args(args)
    except ValueError as e:
        print(f"kubectl policyd: {e}", file=sys.stderr)
        return EXIT_INVALID
    return policyd_main(translated)


if __name__ == "__main__":
    sys.exit(main())
