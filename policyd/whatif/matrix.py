"""The reachability matrix of a set of pods, from the engine (pure).

Computed on bitsets (Python ints, one bit per pod) instead of pair by pair: each set spec's
members become one bitset, each distinct direction plan the bitset of peers it allows, and a
row is its source's egress bitset AND the destinations whose ingress admits the source. The
reading of a plan is Evaluator's (a rule matches a peer in its set on a listed port); a test
compares both pair by pair. Pods whose rows and columns are equal — every pod treats them
alike, as source and as destination — form one *profile*, the compact form of the matrix.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from ..compile.engine import Compiler
from ..compile.evaluate import Endpoint
from ..compile.plan import AllowRule, BlockSetSpec, DirectionPlan, PodSetSpec, SetSpec, TierRule, addresses, named_ports
from ..model.objects import Action, Direction, IPAddress, Pod

# The JSON shapes' names (docs/json.md): a script checks `kind` and `version`; a shape that
# changes gets a new version, never silently.
POD_MATRIX = "PodMatrix"
PROFILE_MATRIX = "ProfileMatrix"


@dataclass(frozen=True)
class Matrix:
    protocol: str
    port: int | None
    pods: list[str]
    allowed: dict[str, list[str]]  # from → every pod it may open a connection to
    targets: list[str] | None = None  # destinations considered (None: all of `pods`)

    def to_json(self) -> dict[str, Any]:
        return {"kind": POD_MATRIX, "version": 1, "protocol": self.protocol, "port": self.port, "pods": self.pods, "allowed": self.allowed}

    def is_allowed(self, src: str, dst: str) -> bool:
        return dst in self.allowed.get(src, ())


@dataclass(frozen=True)
class GroupedMatrix:
    """The same verdicts with pods grouped by profile. `allowed` is between groups; a pod
    additionally always reaches itself (its own loopback), also when its group does not
    reach itself."""

    protocol: str
    port: int | None
    groups: dict[str, list[str]]  # group name → its pods (sorted; groups in order of their first pod)
    allowed: dict[str, list[str]]  # group → every group its pods may open connections to

    def to_json(self) -> dict[str, Any]:
        return {"kind": PROFILE_MATRIX, "version": 1, "protocol": self.protocol, "port": self.port, "groups": self.groups,
                "allowed": self.allowed, "note": "every pod also reaches itself"}

    @property
    def pod_count(self) -> int:
        return sum(len(p) for p in self.groups.values())


def service_port(protocol: str, port: int | None) -> int | None:
    """The port a probe of `protocol` uses: ICMP has none."""
    return None if protocol == "ICMP" else port


def endpoint(pod: Pod) -> Endpoint:
    """A pod is probed at its first address (IPv4 first when dual-stack)."""
    ip = sorted(pod.ips, key=lambda a: a.version)[0]
    return Endpoint(ip, pod)


def _indices(bits: int) -> list[int]:
    """The positions of the set bits, lowest first (the scan for '1' runs in C)."""
    text, out = bin(bits)[:1:-1], []  # least significant bit first
    i = text.find("1")
    while i >= 0:
        out.append(i)
        i = text.find("1", i + 1)
    return out


class _Bitsets:
    """Rows and columns of the matrix without the loopback exception, one bitset per pod."""

    def __init__(self, compiler: Compiler, pods: list[Pod], protocol: str, port: int | None) -> None:
        self.compiler, self.protocol, self.port = compiler, protocol, port
        self.pods = pods
        n = len(pods)
        self.everyone = (1 << n) - 1
        self.ips: list[IPAddress] = [endpoint(p).ip for p in pods]
        self.by_ip: dict[IPAddress, int] = {}
        for i, ip in enumerate(self.ips):
            self.by_ip[ip] = self.by_ip.get(ip, 0) | (1 << i)
        self.sorted_ips = {v: sorted((int(ip), i) for i, ip in enumerate(self.ips) if ip.version == v) for v in (4, 6)}
        self._spec_bits: dict[SetSpec, int] = {}
        self._plan_bits: dict[DirectionPlan, int] = {}

        # ok[d][i]: the peers pod i's plan in direction d admits (everyone when not isolated).
        ok = {d: [self._plan(self._direction_plan(p, d)) for p in pods] for d in Direction}
        self.rows = self._combine(ok[Direction.EGRESS], ok[Direction.INGRESS])  # row s: destinations s reaches
        self.cols = self._combine(ok[Direction.INGRESS], ok[Direction.EGRESS])  # column d: sources reaching d

    def _direction_plan(self, pod: Pod, d: Direction) -> DirectionPlan | None:
        plan = self.compiler.plans.get(pod.key)
        return plan.direction(d) if plan is not None else None

    def _combine(self, own: list[int], other: list[int]) -> list[int]:
        """own[i] & {j : i in other[j]} — the second part transposed group by group."""
        groups: dict[int, int] = {}
        for j, bits in enumerate(other):
            groups[bits] = groups.get(bits, 0) | (1 << j)
        admitted = [0] * len(own)
        for bits, members in groups.items():
            if bits == self.everyone:
                admitted = [a | members for a in admitted]
                continue
            for i in _indices(bits):
                admitted[i] |= members
        return [o & a for o, a in zip(own, admitted, strict=True)]

    def _plan(self, plan: DirectionPlan | None) -> int:
        if plan is None:
            return self.everyone
        got = self._plan_bits.get(plan)
        if got is None:
            got = self._plan_bits[plan] = self._tiers(plan)
        return got

    def _tiers(self, plan: DirectionPlan) -> int:
        """Evaluator.side for every peer at once: `open` holds the peers no tier decided yet."""
        allowed, open_, passed = 0, self.everyone, 0
        for r in plan.admin:
            hit = self._rule(r) & open_
            open_ &= ~hit
            if r.action is Action.ACCEPT:
                allowed |= hit
            elif r.action is Action.PASS:
                passed |= hit
        open_ |= passed
        if plan.isolated:
            np = 0
            for rule in plan.rules:
                np |= self._rule(rule)
            return allowed | (open_ & np)
        for r in plan.baseline:
            hit = self._rule(r) & open_
            open_ &= ~hit
            if r.action is not Action.DENY:  # Accept, or Pass on to the default
                allowed |= hit
        return allowed | open_

    def _rule(self, rule: AllowRule | TierRule) -> int:
        """Evaluator.rule_matches for every pod at once."""
        if rule.ports is not None and (self.port is None or not any(m.matches(self.protocol, self.port) for m in rule.ports)):
            return 0
        return self.everyone if rule.peer is None else self._spec(rule.peer)

    def _spec(self, spec: SetSpec) -> int:
        got = self._spec_bits.get(spec)
        if got is not None:
            return got
        got = 0
        if isinstance(spec, BlockSetSpec):
            for net in spec.intervals():
                ips = self.sorted_ips[net.version]
                lo = bisect.bisect_left(ips, (int(net.network_address), -1))
                hi = bisect.bisect_right(ips, (int(net.broadcast_address), len(self.pods)))
                for _, i in ips[lo:hi]:
                    got |= 1 << i
        elif isinstance(spec, PodSetSpec) and spec.port_name is not None:
            # Egress named port: (destination address, its port of that name).
            if spec.protocol == self.protocol and self.port is not None:
                for ip, port in named_ports(self.compiler.set_entries(spec)):
                    if port == self.port:
                        got |= self.by_ip.get(ip, 0)
        else:
            for ip in addresses(self.compiler.set_entries(spec)):
                got |= self.by_ip.get(ip, 0)
        self._spec_bits[spec] = got
        return got


def _addressable(pods: list[Pod], version: int | None = None) -> list[Pod]:
    """The pods a probe can reach, sorted; over IP `version`, each with only its addresses
    of that version (so that an ipBlock judges the address the packet carries)."""
    if version is not None:
        pods = [replace(p, ips=tuple(ip for ip in p.ips if ip.version == version)) for p in pods]
    return sorted((p for p in pods if p.addressable), key=lambda p: p.key)


def pairs(compiler: Compiler, pods: list[Pod], protocol: str = "TCP", port: int | None = 80,
          version: int | None = None) -> tuple[list[str], Iterator[tuple[str, list[str]]]]:
    """The addressable pods, and for each in turn every pod it reaches (made one row at a
    time, so that printing every pair of a large cluster need not hold them all). A pod
    always reaches itself: that traffic stays on its own loopback. `version` (4 or 6): over
    that IP family only (default: each pod at its first address, IPv4 first)."""
    reachable = _addressable(pods, version)
    b = _Bitsets(compiler, reachable, protocol, service_port(protocol, port))
    keys: list[str] = [p.key for p in reachable]
    return keys, ((keys[i], [keys[j] for j in _indices(row | (1 << i))]) for i, row in enumerate(b.rows))


def compute(compiler: Compiler, pods: list[Pod], protocol: str = "TCP", port: int | None = 80,
            version: int | None = None) -> Matrix:
    """Every pair, in memory."""
    keys, rows = pairs(compiler, pods, protocol, port, version)
    return Matrix(protocol, service_port(protocol, port), keys, dict(rows))


def compute_grouped(compiler: Compiler, pods: list[Pod], protocol: str = "TCP", port: int | None = 80) -> GroupedMatrix:
    """Pods with equal rows and equal columns share a group. Equal columns make every row
    constant across a group (and equal rows every column), so group-to-group verdicts are
    well defined, the group's verdict on itself included."""
    port = service_port(protocol, port)
    reachable = _addressable(pods)
    b = _Bitsets(compiler, reachable, protocol, port)
    first: dict[tuple[int, int], int] = {}  # profile → its group's number
    group_of: list[int] = []
    for row, col in zip(b.rows, b.cols, strict=True):
        group_of.append(first.setdefault((row, col), len(first)))
    names = [f"g{k + 1}" for k in range(len(first))]
    groups: dict[str, list[str]] = {name: [] for name in names}
    for i, g in enumerate(group_of):
        groups[names[g]].append(reachable[i].key)
    representative = {g: i for i, g in reversed(list(enumerate(group_of)))}  # each group's first pod
    rep_mask = sum(1 << i for i in representative.values())
    allowed = {names[g]: [names[group_of[j]] for j in _indices(b.rows[i] & rep_mask)] for g, i in sorted(representative.items())}
    return GroupedMatrix(protocol, port, groups, allowed)
