"""Which sets a local pod's DNS answers feed: the domainNames peers of the ClusterNetworkPolicy
rules of its egress plan, read from the agent's compiler under the agent's lock, and
remembered while the pod's plan stays the same object (plans are immutable)."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import Any

from ..compile.engine import Compiler
from ..compile.plan import DomainSetSpec, PodPlan
from ..dataplane.config import family_sets
from ..dataplane.layout import Layout
from .learner import Target


class PlanScope:
    def __init__(self, compiler: Compiler, layout: Layout, lock: AbstractContextManager[Any] | None = None) -> None:
        self.compiler, self.layout = compiler, layout
        self.lock: AbstractContextManager[Any] = lock if lock is not None else threading.Lock()
        self._known: dict[str, tuple[PodPlan, tuple[Target, ...]]] = {}
        with self.lock:
            compiler.store.index_addresses()

    def targets(self, address: str) -> tuple[str | None, tuple[Target, ...]]:
        with self.lock:
            key = self.compiler.store.pod_at(address)
            plan = self.compiler.plans.get(key) if key is not None else None
        if key is None or plan is None:
            return key, ()
        known = self._known.get(key)
        if known is not None and known[0] is plan:
            return key, known[1]
        specs = dict.fromkeys(r.peer for r in (plan.egress.admin if plan.egress is not None else ()) if isinstance(r.peer, DomainSetSpec))
        found = tuple(Target(s.names, {f: self.layout.set_name(s, f) for f in family_sets(s)}) for s in specs if s is not None)
        self._known[key] = (plan, found)
        return key, found
