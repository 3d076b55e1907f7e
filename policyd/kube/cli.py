"""`policyd run`: argument parsing for the cluster agent (the work is in `operator.py`)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..backends import CHOICES, resolve
from ..dataplane.cni import CNI_DIR, detect_dispatch
from ..dataplane.config import DEFAULT_REVOKE_MARK, DispatchMode, Fqdn
from ..dataplane.droplog import DropLog
from ..names.learner import Limits
from .settings import AgentSettings, FailMode


class RunError(Exception):
    """A setting that cannot work: exit 2 with the message, before touching anything."""


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"POLICYD_{name}", default)


def env_or(name: str, default: str) -> str:
    return os.environ.get(f"POLICYD_{name}", default)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="the node agent: watch the cluster (kopf, read-only) and enforce its policies on this node",
                       description="Every option also reads POLICYD_<OPTION> from the environment (e.g. POLICYD_FAIL_MODE).")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"), help="this node (default: $NODE_NAME)")
    p.add_argument("--kubeconfig", default=env("KUBECONFIG"), help="default: in-cluster config, else $KUBECONFIG or ~/.kube/config")
    p.add_argument("--dispatch-mode", choices=["auto", "interface", "address"], default=env("DISPATCH_MODE", "auto"),
                   help="auto: from the first CNI config in --cni-dir (Calico, Cilium → interface; bridge, flannel → address)")
    p.add_argument("--interface-prefix", action="append", default=None,
                   help="host-side pod interface prefix (repeatable; default from the CNI: cali, lxc, veth)")
    p.add_argument("--cni-dir", type=Path, default=Path(env_or("CNI_DIR", str(CNI_DIR))))
    p.add_argument("--fail-mode", choices=[m.value for m in FailMode], default=env("FAIL_MODE", "open"),
                   help="open: a pod interface not programmed yet passes traffic; closed: it is dropped (interface dispatch)")
    p.add_argument("--table", default=env("TABLE", "policyd"))
    p.add_argument("--backend", choices=CHOICES, default=env("BACKEND", "nftables"),
                   help="nftables (default); iptables: legacy iptables + ipset, for nodes whose kernel or tools lack "
                        "nftables; auto: nftables where usable, else iptables")
    p.add_argument("--metrics-address", default=env("METRICS_ADDRESS", ""),
                   help="address of /metrics and the probes' endpoints (default: every address, IPv4 and IPv6: a "
                        "node whose primary address is IPv6 is probed there)")
    p.add_argument("--metrics-port", type=int, default=int(env_or("METRICS_PORT", "9808") or 0), help="/metrics (0: off)")
    p.add_argument("--health-port", type=int, default=int(env_or("HEALTH_PORT", "9809") or 0),
                   help="/healthz (liveness) and /readyz (0: off; may equal --metrics-port)")
    p.add_argument("--log-format", choices=["text", "json"], default=env("LOG_FORMAT", "text"))
    p.add_argument("--min-interval", type=float, default=float(env("MIN_INTERVAL", "0") or 0),
                   help="seconds between syncs; events in between share one transaction")
    p.add_argument("--resync", type=float, default=float(env("RESYNC", "300") or 300), help="full resync period (s)")
    p.add_argument("--relist", type=float, default=float(env("RELIST", "1800") or 1800),
                   help="period (s) of a list of every kind that finds deletions a lost watch hid (also run after any relist of kopf's)")
    p.add_argument("--drop-log", action=argparse.BooleanOptionalAction, default=(env("DROP_LOG") or "false") == "true",
                   help="log every packet a pod's chain drops, one line naming the pod, peer, port and the policies or "
                        "rule that dropped it (NFLOG, rate-limited per rule in the kernel; default off)")
    p.add_argument("--drop-log-group", type=int, default=int(env_or("DROP_LOG_GROUP", "100")), help="NFLOG group (default 100)")
    p.add_argument("--drop-log-rate", type=int, default=int(env_or("DROP_LOG_RATE", "10")),
                   help="packets/s each drop rule may log (default 10, burst --drop-log-burst)")
    p.add_argument("--drop-log-burst", type=int, default=int(env_or("DROP_LOG_BURST", "20")))
    p.add_argument("--accept-log-rate", type=int, default=int(env_or("ACCEPT_LOG_RATE", "0")),
                   help="with --drop-log: also log up to N accepted packets/s per allow rule, naming the rule (default 0: none)")
    p.add_argument("--rule-counters", action=argparse.BooleanOptionalAction, default=(env("RULE_COUNTERS") or "false") == "true",
                   help="count packets and bytes on every allow rule and every pod's isolation drop, served on /metrics "
                        "as policyd_rule_packets_total / policyd_rule_bytes_total by namespace, policy, direction and rule "
                        "(default off)")
    p.add_argument("--flows", type=int, default=int(env_or("FLOWS", "0") or 0), metavar="N",
                   help="record the node's pods' new connections (conntrack), at most N records, served as FlowRecords JSON on "
                        "/flows of the metrics port, for policyd advise (default 0: off)")
    p.add_argument("--revoke-connections", action=argparse.BooleanOptionalAction,
                   default=(env("REVOKE_CONNECTIONS") or "false") == "true",
                   help="when a change revokes access, end the open connections it no longer admits: their conntrack entries "
                        "are marked and every packet of a marked connection is dropped (default off for now: its sweeps cost "
                        "event latency under heavy churn, docs/revoked-connections.md)")
    p.add_argument("--revoke-mark", type=lambda v: int(v, 0), default=int(env_or("REVOKE_MARK", hex(DEFAULT_REVOKE_MARK)), 0), metavar="BITS",
                   help=f"the connection-mark bit(s) of revoked connections (default {DEFAULT_REVOKE_MARK:#x}: pick bits no other "
                        "component of the node uses in its connection marks)")
    p.add_argument("--fqdn", action=argparse.BooleanOptionalAction, default=(env("FQDN") or "true") == "true",
                   help="enforce ClusterNetworkPolicy domainNames: DNS answers to the pods such a rule selects are held on an "
                        "NFQUEUE until their addresses are learned (default on; --no-fqdn: domainNames rules match nothing)")
    p.add_argument("--fqdn-queue", type=int, default=int(env_or("FQDN_QUEUE", "5300")), help="the NFQUEUE number (default 5300)")
    p.add_argument("--fqdn-fail", choices=["open", "closed"], default=env("FQDN_FAIL", "open"),
                   help="when no agent listens or the queue is full: open, answers pass unlearned (their addresses stay "
                        "denied until the next lookup; default), or closed, answers are dropped (lookups time out)")
    p.add_argument("--fqdn-min-ttl", type=int, default=int(env_or("FQDN_MIN_TTL", "30")),
                   help="seconds a learned address is kept at least, whatever the answer's TTL (default 30)")
    p.add_argument("--fqdn-max-ttl", type=int, default=int(env_or("FQDN_MAX_TTL", "86400")),
                   help="seconds a learned address is kept at most (default 86400)")
    p.add_argument("--fqdn-max-per-pod", type=int, default=int(env_or("FQDN_MAX_PER_POD", "1000")),
                   help="addresses one pod's answers may hold at once; past it, nothing more is learned (counted; default 1000)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_run)


def settings_from(args: argparse.Namespace) -> tuple[AgentSettings, DispatchMode, str]:
    if not args.node_name:
        raise RunError("--node-name (or $NODE_NAME) is required: only that node's pods get chains")
    prefixes = tuple(args.interface_prefix or (env("INTERFACE_PREFIXES") or "").split(",")) if (args.interface_prefix or env("INTERFACE_PREFIXES")) else ()
    if args.dispatch_mode == "auto":
        try:
            found = detect_dispatch(args.cni_dir)
        except ValueError as e:
            raise RunError(str(e)) from None
        mode, why = found.mode, found.reason
        prefixes = prefixes or found.prefixes
    else:
        mode, why = DispatchMode(args.dispatch_mode), "set by --dispatch-mode"
    try:
        backend = resolve(args.backend)
    except (ValueError, RuntimeError) as e:
        raise RunError(str(e)) from None
    if args.accept_log_rate and not args.drop_log:
        raise RunError("--accept-log-rate logs through the drop log: add --drop-log")
    st = AgentSettings(
        node_name=args.node_name, kubeconfig=args.kubeconfig, dispatch_mode=mode, interface_prefixes=prefixes,
        cni_dir=args.cni_dir, fail_mode=FailMode(args.fail_mode), table=args.table, backend=backend, metrics_address=args.metrics_address,
        metrics_port=args.metrics_port, health_port=args.health_port, log_format=args.log_format, min_interval=args.min_interval, resync_every=args.resync,
        relist_every=args.relist,
        drop_log=DropLog(args.drop_log_group, args.drop_log_rate, args.drop_log_burst, args.accept_log_rate) if args.drop_log else None,
        rule_counters=args.rule_counters, flows=args.flows, revoke_mark=args.revoke_mark if args.revoke_connections else None,
        fqdn=Fqdn(args.fqdn_queue, args.fqdn_fail == "open") if args.fqdn else None,
        fqdn_limits=Limits(args.fqdn_min_ttl, args.fqdn_max_ttl, args.fqdn_max_per_pod))
    problems = st.problems()
    if problems:
        raise RunError("; ".join(problems))
    return st, mode, why


def cmd_run(args: argparse.Namespace) -> int:
    from .lean_kopf import kopf

    st, mode, why = settings_from(args)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if st.log_format == "json" else kopf.LogFormat.FULL)
    logging.getLogger("policyd").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:  # kopf logs every handler call at INFO: one line per watch event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    log = logging.getLogger("policyd.agent")
    log.info("policyd agent for node %s: dispatch by %s (%s)%s, fail-%s, %s backend (%s)", st.node_name, mode.value, why,
             f", pod interfaces {', '.join(p + '*' for p in st.interface_prefixes)}" if st.interface_prefixes else "",
             st.fail_mode.value, st.backend, "table inet " + st.table if st.backend == "nftables" else f"chains {st.table.upper()}-*, ipsets {st.table}-*")
    from ..reconcile.presence import wait_to_claim
    from .operator import run

    claim = wait_to_claim(st.backend, st.table, log.warning)  # held until the process ends
    try:
        return run(st, mode)
    finally:
        claim.close()
