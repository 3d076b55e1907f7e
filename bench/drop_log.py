"""What the drop log and the rule counters cost, off against on, in one run: the first
packet of allowed connections (the log rules sit where the drops are, so allowed traffic
should not see them; a counter sits on every accepting rule), and a UDP flood to a port the
pair's isolation drops (every packet meets the log rule's rate limit and the drop's counter;
at most `rate` per second reach the agent).

The first-packet bench's pair (bench/firstpacket.py) in its 1,000-pod synthetic cluster,
nftables, routed, interface dispatch; the agent's drop logger runs in this process, bound in
the node's namespace, so its CPU time is this process's while the flood runs.
"""

from __future__ import annotations

import resource
import time

import firstpacket
from report import spread, table

from policyd.dataplane.config import DispatchMode, RenderConfig
from policyd.dataplane.droplog import DropLog
from policyd.lab.netns import entered, sh
from policyd.observe.droplog import CompiledSource, DropLogger

N_PODS, N_NS, N_NODES = 1_000, 20, 100
DENIED_PORT = 9  # the pair's policies allow TCP 80 and 5201, UDP 5201 only (client egress, server ingress)
LOG = DropLog(group=100, rate=10, burst=20)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(args) -> list[str]:
    seconds, repeats = (1.5, 2) if args.quick else (3.0, 5)
    flood_seconds = 1.0 if args.quick else 2.0
    variants = {"both off": (None, False), "drop log": (LOG, False), "rule counters": (None, True), "both on": (LOG, True)}
    conns: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    floods: dict[str, list[float]] = {v: [] for v in variants}
    logged: list[tuple[int, float, float]] = []  # (lines, seconds of flood, CPU seconds of the logger)
    with firstpacket.pair("l") as it:
        for _ in range(repeats):
            for variant, (drop_log, counters) in variants.items():  # interleaved, so drift hits all alike
                cfg = RenderConfig(mode=DispatchMode.INTERFACE, drop_log=drop_log, counters=counters)
                agent = it.agent(N_PODS, cfg=cfg, n_ns=N_NS, n_nodes=N_NODES)
                conns[variant].append(firstpacket.run_client(it.exe, it.client_ns, it.server_ip, seconds))
                lines: list[str] = []
                logger = None
                if drop_log is not None:
                    logger = DropLogger(LOG.group, "node-0", CompiledSource(agent.compiler), lines.append)
                    with entered(it.node.netns):
                        logger.start()
                before = cpu()
                out = sh(it.exe, "flood", it.server_ip, str(DENIED_PORT), str(flood_seconds), ns=it.client_ns).stdout.split()
                floods[variant].append(float(out[1]))
                if logger is not None:
                    time.sleep(0.3)  # the writer catches up
                    logger.stop()
                    if not lines or not lines[0].startswith(f"drop egress bench/client → bench/server UDP/{DENIED_PORT}: "):
                        raise RuntimeError(f"the flood was not logged as the client's egress drops: {lines[:2]}")
                    logged.append((len(lines), flood_seconds, cpu() - before))
    base = {v: sum(x[0] for x in rs) / len(rs) for v, rs in conns.items()}
    rows = [[v, spread([x[0] for x in rs]), spread([x[1] for x in rs]), spread([x[2] for x in rs], "{:,.0f}"),
             spread(floods[v], "{:,.0f}"), f"{med(floods[v]) / med(floods['both off']):.1%}"] for v, rs in conns.items()]
    n_lines = [x[0] / x[1] for x in logged]
    return [
        f"The first-packet bench's pair in its {N_PODS:,}-pod synthetic cluster (nftables, routed, interface dispatch); drop log "
        f"group {LOG.group}, at most {LOG.rate} packets/s (burst {LOG.burst}) per drop rule. Allowed: one TCP connection at a time "
        f"to port 80 for {seconds} s. Dropped: 64-byte UDP datagrams from one socket to port {DENIED_PORT}, which the client's "
        f"egress isolation drops, for {flood_seconds} s (the sender's rate: veth delivery, and so the ruleset, runs in its context). "
        f"{repeats} runs per variant, interleaved; median (min–max).",
        "",
        *table(["variant", "allowed: p50 latency µs", "allowed: p99 latency µs", "allowed: connections/s", "dropped: packets/s sent",
                "dropped: rate vs both off"], rows),
        "",
        f"With the log on, the agent wrote {spread(n_lines, '{:.0f}')} lines/s during the flood (the kernel's limit: {LOG.rate}/s after "
        f"a burst of {LOG.burst}), using {spread([x[2] for x in logged], '{:.3f}')} s of CPU per {flood_seconds:.0f} s flood. "
        f"Allowed connections, Δp50 against both off (mean of medians): drop log {base['drop log'] - base['both off']:+.1f} µs, "
        f"rule counters {base['rule counters'] - base['both off']:+.1f} µs, both {base['both on'] - base['both off']:+.1f} µs. They "
        "never meet a log rule (each sits just before the drop it logs); a counter runs only on the rule whose verdict it counts. "
        "Every dropped packet meets its rule's rate limit and counter; the agent's share stays at the limit however hard the flood.",
    ]


def med(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]
