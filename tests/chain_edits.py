"""Random NetworkPolicy changes for the backend pods of the demo cluster, synced partially as
the agent does: the kernel must hold exactly what desired says (listed and compared every
fourth change; between two, the edits read the handles they need themselves), whether the
diff edited a chain in place (its policy rules in the order they came) or refilled it.
Shared by the fake (tests/unit) and the kernel (tests/kernel); `edited` counts the
transactions that changed a pod chain without flushing it, so a test can say the edits ran."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from policyd.dataplane.config import DispatchMode, RenderConfig
from policyd.dataplane.drift import find_drift
from policyd.dataplane.droplog import DropLog
from policyd.model.objects import NetworkPolicy
from policyd.model.parse import parse_object
from policyd.reconcile.syncer import Syncer
from policyd.whatif.world import load_world

PEERS = ("frontend", "unallowed", "backend")


def policy(name: str, peer: str, ports: list[int]) -> NetworkPolicy:
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "default"},
           "spec": {"podSelector": {"matchLabels": {"app": "backend"}}, "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}}],
                                 "ports": [{"protocol": "TCP", "port": p} for p in ports]}]}}
    obj, problems = parse_object(doc, name, None)
    assert isinstance(obj, NetworkPolicy) and not problems, problems
    return obj


@dataclass
class Outcome:
    steps: int = 0
    edited: int = 0  # transactions that changed a pod chain by deletes and appends only
    refilled: int = 0  # transactions that flushed a pod chain


def run(backend: Any, steps: int, seed: int, logged: bool = False) -> Outcome:
    """`logged`: with the drop log (and accept logging) and rule counters on, so that a step
    is several rules (a log rule before its verdict)."""
    rng = random.Random(seed)
    w = load_world(["examples/cluster/demo.yaml"])
    c = w.compile("node-1")
    cfg = RenderConfig(mode=DispatchMode.ADDRESS, drop_log=DropLog(accepts=5) if logged else None, counters=logged)
    s = Syncer(c, backend, cfg)
    s.sync()
    live: dict[str, NetworkPolicy] = {}
    out = Outcome()
    for i in range(steps):
        kind = rng.choice(["add", "add", "add", "remove", "change"]) if live else "add"
        if kind == "add":
            name = f"p{i}"
            live[name] = policy(name, rng.choice(PEERS), [rng.randrange(1, 60000) for _ in range(rng.randint(1, 3))])
            c.upsert_policy(live[name])
        elif kind == "remove":
            name = rng.choice(sorted(live))
            del live[name]
            c.delete_policy(f"default/{name}")
        else:
            name = rng.choice(sorted(live))
            live[name] = policy(name, rng.choice(PEERS), [rng.randrange(1, 60000)])
            c.upsert_policy(live[name])
        n = len(getattr(backend, "transactions", []))
        r = s.sync()
        for tx in getattr(backend, "transactions", [])[n:] or [getattr(backend, "last_tx", None)]:
            if tx is None:
                continue
            flushed = any("flush" in cmd and cmd["flush"].get("chain", {}).get("name", "").startswith("pod-") for cmd in tx.commands)
            deleted = any("delete" in cmd and "rule" in cmd["delete"] for cmd in tx.commands)
            out.refilled += flushed
            out.edited += deleted and not flushed
        assert r.ops > 0, f"step {i} ({kind} {name}) changed nothing"
        if i % 4 == 3 or i == steps - 1:  # a listing: between two, edits read the handles they need themselves
            drift = find_drift(s.desired.ruleset, backend.read(), True, "the table")
            assert not drift, f"step {i} ({kind} {name}): the kernel does not hold desired: {drift}"
        out.steps += 1
    return out
