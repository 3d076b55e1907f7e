"""An in-process agent bound to one node namespace: compiler + syncer, with every kernel
call made from inside that namespace. Used by the kernel tests and the lab."""

from __future__ import annotations

from typing import Iterable

from ..compile.engine import Compiler
from ..model.objects import Namespace, NetworkPolicy, Pod
from ..nft.backend import Libnftables, NftBackend
from ..dataplane.config import DispatchMode, RenderConfig
from ..reconcile.syncer import Syncer, SyncResult
from .netns import entered


class NodeAgent:
    def __init__(self, netns: str, node: str, mode: DispatchMode, table: str = "policyd", cfg: RenderConfig | None = None) -> None:
        self.netns = netns
        self.compiler = Compiler(node)
        with entered(netns):
            lib = Libnftables()  # its netlink socket belongs to the node namespace
        self.backend = NftBackend(table, lib)
        self.syncer = Syncer(self.compiler, self.backend, cfg or RenderConfig(table=table, mode=mode))

    def load(self, namespaces: Iterable[Namespace], pods: Iterable[Pod], policies: Iterable[NetworkPolicy]) -> None:
        for ns in namespaces:
            self.compiler.upsert_namespace(ns)
        for pol in policies:
            self.compiler.upsert_policy(pol)
        for pod in pods:
            self.compiler.upsert_pod(pod)

    def sync(self, full: bool = False) -> SyncResult:
        with entered(self.netns):
            return self.syncer.sync(full)

    def nft(self, *args: str) -> str:
        from .netns import sh

        return sh("nft", *args, ns=self.netns).stdout
