"""An in-process agent bound to one node namespace: compiler + syncer, with every kernel
call made from inside that namespace. Used by the kernel tests and the lab."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..backends import resolve
from ..compile.engine import Compiler
from ..dataplane.backend import AnyBackend
from ..dataplane.config import DispatchMode, RenderConfig
from ..ipt.backend import IptBackend
from ..model.objects import Namespace, NetworkPolicy, Pod
from ..nft.backend import Libnftables, NftBackend
from ..reconcile.syncer import Syncer, SyncResult
from .netns import entered, sh


class NodeAgent:
    def __init__(self, netns: str, node: str, mode: DispatchMode, table: str = "policyd", cfg: RenderConfig | None = None,
                 backend: str = "nftables") -> None:
        self.netns = netns
        self.kind = resolve(backend)
        self.compiler = Compiler(node)
        self.backend: AnyBackend
        if self.kind == "iptables":
            self.backend = IptBackend(table)  # its tools run as children of the syncing thread, in the namespace
        else:
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
        if self.kind == "iptables":
            text = "".join(sh(*cmd, ns=self.netns).stdout for cmd in (
                ("iptables-legacy-save", "-t", "filter"), ("ip6tables-legacy-save", "-t", "filter"), ("ipset", "save")))
            text = re.sub(r"\[\d+:\d+\]", "[0:0]", text)  # packet counters of the built-in chains
            return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))  # no timestamps
        return self.nft("list", "table", "inet", self.backend.table)

    def nft(self, *args: str) -> str:
        return str(sh("nft", *args, ns=self.netns).stdout)
