"""Random sequences of one chain's rules, applied through the nftables diff with the rule
handles the backend learns: after every step the backend must list exactly the wanted
rules, in order, whichever way the diff chose (edit by handle or flush and refill). Shared
by the fake (tests/unit) and the kernel (tests/kernel)."""

from __future__ import annotations

import random
from typing import Any

from policyd.dataplane.drift import find_drift
from policyd.dataplane.objects import ChainDef, Hook, RuleBody, Ruleset
from policyd.nft.diff import Transaction, canonical_chain


def port_rule(port: int) -> RuleBody:
    return RuleBody(expr=[{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": port}},
                          {"accept": None}])


DROP = RuleBody(expr=[{"drop": None}])


def ruleset(ports: list[int]) -> Ruleset:
    """A base chain jumping to `c`, whose rules accept each port in order and drop the rest."""
    rs = Ruleset()
    rs.chains["c"] = ChainDef.build("c", [*map(port_rule, ports), DROP])
    rs.chains["base"] = ChainDef.build("base", [RuleBody(expr=[{"jump": {"target": "c"}}])], Hook("forward"))
    return rs


def step(rng: random.Random, ports: list[int]) -> list[int]:
    """One change as policies make them: a rule appended, removed, inserted, a run replaced."""
    ports = list(ports)
    kind = rng.choice(["append", "remove", "insert", "replace", "append", "remove"])
    fresh = rng.randrange(1, 60000)
    if kind == "append" or not ports:
        ports.append(fresh)
    elif kind == "remove":
        del ports[rng.randrange(len(ports))]
    elif kind == "insert":
        ports.insert(rng.randrange(len(ports) + 1), fresh)
    else:
        i = rng.randrange(len(ports))
        ports[i:i + rng.randint(1, 3)] = [rng.randrange(1, 60000) for _ in range(rng.randint(0, 3))]
    return ports


def run(backend: Any, steps: int, seed: int) -> list[Transaction]:
    """Apply `steps` changes (partial syncs from what we believe, as the syncer does) and
    check the listing after each; every tenth step is a full sync from a listing."""
    rng = random.Random(seed)
    ports = [rng.randrange(1, 60000) for _ in range(rng.randint(0, 30))]
    believed: Ruleset | None = None
    txs = []
    for i in range(steps):
        want = ruleset(ports)
        have = backend.read() if believed is None or i % 10 == 0 else believed
        tx = backend.diff(have, want)
        backend.apply(tx)
        txs.append(tx)
        believed = want.copy()
        listed = backend.read()
        assert listed is not None and not find_drift(want, listed, backend.chain_holds, True, "t"), f"step {i}: {tx.commands}"
        assert listed.chains["c"].listed == canonical_chain(want.chains["c"]), f"step {i}"
        ports = step(rng, ports)
    return txs
