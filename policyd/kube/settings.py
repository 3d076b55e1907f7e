"""The cluster agent's settings (the dispatch mode comes from the node's CNI config: dataplane.cni)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..backends import BACKENDS, table_problem
from ..dataplane.cni import CNI_DIR, IFPREFIX_RE
from ..dataplane.config import DispatchMode, Fqdn
from ..dataplane.droplog import DropLog
from ..names.learner import Limits


class FailMode(str, Enum):
    """What a pod interface policyd has not programmed yet gets (a pod just created, or one
    the agent has not seen in the API yet)."""

    OPEN = "open"  # traffic passes as the CNI left it until the pod's chains are in place
    CLOSED = "closed"  # traffic on an unprogrammed pod interface (by prefix) is dropped


@dataclass(frozen=True)
class AgentSettings:
    node_name: str
    kubeconfig: str | None = None  # None: in-cluster config, else ~/.kube/config
    dispatch_mode: DispatchMode | None = None  # None: detect from the CNI configuration
    interface_prefixes: tuple[str, ...] = ()
    cni_dir: Path = CNI_DIR
    fail_mode: FailMode = FailMode.OPEN
    table: str = "policyd"
    backend: str = "nftables"  # nftables | iptables (resolved from auto by the CLI)
    metrics_address: str = ""  # "": every address, IPv4 and IPv6
    metrics_port: int = 9808  # /metrics; 0: none
    health_port: int = 9809  # /healthz (liveness) and /readyz; 0: none (the chart's probes need it)
    log_format: str = "text"
    min_interval: float = 0.0
    resync_every: float = 300.0
    relist_grace: float = 2.0  # after kopf relists a kind, compare with a list of ours
    relist_every: float = 1800.0  # and anyway this often: deletions a lost watch hid
    watch_timeout: int = 300  # seconds the API server keeps one Pod watch stream open (then it resumes)
    drop_log: DropLog | None = None  # log the pod chains' drops (NFLOG) with their cause; None: off
    rule_counters: bool = False  # count packets per policy rule, served on /metrics
    flows: int = 0  # record local pods' new connections, at most this many records, served on /flows; 0: off
    revoke_mark: int | None = None  # end open connections a change revoked: their conntrack entries get this mark; None: off
    fqdn: Fqdn | None = Fqdn()  # learn domainNames peers' addresses from DNS answers (NFQUEUE); None: off
    fqdn_limits: Limits = Limits()

    def problems(self) -> list[str]:
        out = []
        for p in self.interface_prefixes:
            if not IFPREFIX_RE.match(p):
                out.append(f"--interface-prefix {p!r}: 1-14 of [A-Za-z0-9_.-]")
        if self.fail_mode is FailMode.CLOSED and self.dispatch_mode is DispatchMode.ADDRESS:
            out.append("--fail-mode closed needs interface dispatch (it drops unprogrammed pod interfaces by prefix)")
        if self.fail_mode is FailMode.CLOSED and self.dispatch_mode is DispatchMode.INTERFACE and not self.interface_prefixes:
            out.append("--fail-mode closed needs --interface-prefix (which interfaces are pods')")
        if self.revoke_mark is not None and not 0 < self.revoke_mark < 2**32:
            out.append(f"--revoke-mark is a non-zero 32-bit connection mark, not {self.revoke_mark:#x}")
        if self.backend not in BACKENDS:
            out.append("--backend is nftables, iptables or auto")
        elif (why := table_problem(self.backend, self.table)) is not None:
            out.append(why)
        if self.log_format not in ("text", "json"):
            out.append("--log-format is text or json")
        if self.drop_log is not None:
            out += [f"--drop-log: {p}" for p in self.drop_log.problems()]
        if not 0 <= self.flows <= 1_000_000:
            out.append(f"--flows is 0 (off) to 1000000 records, not {self.flows}")
        if self.flows and not self.metrics_port:
            out.append("--flows serves /flows on the metrics port: --metrics-port must not be 0")
        if self.fqdn is not None and not 0 <= self.fqdn.queue <= 65535:
            out.append(f"--fqdn-queue is an NFQUEUE number, 0-65535, not {self.fqdn.queue}")
        lim = self.fqdn_limits
        if not 1 <= lim.min_ttl <= lim.max_ttl <= 7 * 86_400:
            out.append(f"--fqdn-min-ttl and --fqdn-max-ttl: 1 ≤ min ≤ max ≤ 604800 s, not {lim.min_ttl} and {lim.max_ttl}")
        if not 1 <= lim.per_pod <= 1_000_000:
            out.append(f"--fqdn-max-per-pod is 1-1000000 addresses, not {lim.per_pod}")
        return out
