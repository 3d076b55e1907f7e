"""An in-process agent bound to one node namespace: compiler + syncer, with every kernel
call made from inside that namespace. Used by the kernel tests and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from policyd.backends import make_backend, resolve
from policyd.compile.engine import Compiler
from policyd.dataplane.backend import AnyBackend
from policyd.dataplane.config import DEFAULT_REVOKE_MARK, DispatchMode, RenderConfig
from policyd.lab.netns import entered, sh
from policyd.model.objects import ClusterNetworkPolicy, Namespace, NetworkPolicy, Pod
from policyd.observe.counters import CounterIndex, Counters
from policyd.reconcile.revoke import CommitSuspects, ConnectionCutter, Judgement
from policyd.reconcile.syncer import Syncer, SyncResult


class NodeAgent:
    def __init__(self, netns: str, node: str, mode: DispatchMode, table: str = "policyd", cfg: RenderConfig | None = None,
                 backend: str = "nftables") -> None:
        self.netns = netns
        self.kind = resolve(backend)
        self.compiler = Compiler(node)
        with entered(netns):  # a netlink socket opened here belongs to the node's namespace; tools run in it
            self.backend: AnyBackend = make_backend(self.kind, table)
        self.syncer = Syncer(self.compiler, self.backend, cfg or RenderConfig(table=table, mode=mode))
        self.cutter: ConnectionCutter | None = None
        self.suspects = CommitSuspects(self.syncer)

    def load(self, namespaces: Iterable[Namespace], pods: Iterable[Pod], policies: Iterable[NetworkPolicy],
             cluster_policies: Iterable[ClusterNetworkPolicy] = ()) -> None:
        for ns in namespaces:
            self.compiler.upsert_namespace(ns)
        for cnp in cluster_policies:
            self.compiler.upsert_cluster_policy(cnp)
        for pol in policies:
            self.compiler.upsert_policy(pol)
        for pod in pods:
            self.compiler.upsert_pod(pod)

    def sync(self, full: bool = False, rebuild: bool | None = None) -> SyncResult:
        """`rebuild` defaults to `full`: a full sync here is what the agent's periodic
        resync does, desired state rebuilt and compared with the kept one."""
        with entered(self.netns):
            return self.syncer.sync(full, full if rebuild is None else rebuild)

    def cut_revoked(self, every: bool = False) -> Judgement:
        """What the agents do after a sync that changed the kernel (AgentCore.sweep_soon):
        end the connections the node's policies now refuse, in the node's namespace; those of
        the addresses the last commit may have revoked, or with `every` all of them."""
        with entered(self.netns):
            if self.cutter is None:
                self.cutter = ConnectionCutter(self.compiler, self.syncer.lock, self.syncer.cfg.revoke_mark or DEFAULT_REVOKE_MARK)
            only = self.suspects()
            return self.cutter.sweep(None if every else only)

    def counters(self) -> Counters:
        """The kernel's per-rule counters of the node, summed by policy rule."""
        with entered(self.netns):
            return CounterIndex(c for objs in self.syncer.desired.pods.values() for c in objs.chains).sum(self.backend.rule_counters())

    def check(self) -> list[Any]:
        """The one-second drift check, in the node's namespace."""
        with entered(self.netns):
            return self.syncer.check()

    def remove_all(self) -> bool:
        """What `policyd cleanup` does: remove everything policyd owns in the namespace."""
        with entered(self.netns):
            return self.backend.delete_table()

    def dump(self) -> str:
        """The kernel's view of what this backend owns, as text (for comparisons and greps)."""
        with entered(self.netns):
            return self.backend.listing()

    def nft(self, *args: str) -> str:
        return str(sh("nft", *args, ns=self.netns).stdout)
