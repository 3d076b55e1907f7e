"""What a backend's renderer provides to the desired state (pure, no kernel)."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from ..compile.plan import AllowRule, DirectionPlan, Entry, PodPlan, SetSpec, TierRule
from ..model.objects import Action, Direction, IPAddress
from ..model.selectors import stable_hash
from .config import DispatchMode, RenderConfig, valid_ifname
from .droplog import DropCause, accept_cause, audit_cause, deny_cause, isolation_cause
from .objects import COMMENT_MAX, ChainDef, Elem, MapDef, SetDef


@dataclass(frozen=True)
class PodObjects:
    """What one local pod contributes: its chains and its entries in the shared maps/sets."""

    chains: tuple[ChainDef, ...]
    map_entries: tuple[tuple[str, str, str], ...]  # (map name, key, chain)
    spoof_entries: tuple[tuple[str, Elem], ...]  # (set name, element)


class Renderer(Protocol):
    """Plan → dataplane objects for one backend and configuration. Set names must depend
    on the spec only (content-addressed), and `set_defs` must list one set per family of
    `family_sets(spec)`, in that order."""

    def skeleton(self) -> tuple[list[SetDef], list[MapDef], list[ChainDef]]:
        """The objects every node has, whatever the policies."""

    def pod(self, plan: PodPlan, ifname: str | None) -> PodObjects: ...

    def set_defs(self, spec: SetSpec, entries: Iterable[Entry]) -> list[SetDef]: ...

    def elements(self, spec: SetSpec, entries: Iterable[Entry], family: int) -> frozenset[Elem]: ...


def addr_text(ip: IPAddress) -> str:
    """An address as both nft and ipset write it; inet_ntoa is 3x faster than str() for
    IPv4, which counts when a peer set of 100k pods is rendered."""
    return socket.inet_ntoa(ip.packed) if ip.version == 4 else str(ip)


RULE_ID_RE = re.compile(r"\(r:([0-9a-f]{8})\)")


def tagged(text: str) -> str:
    """A counted rule's comment: its text, cut to what leaves room for the chain's digest
    seal (ChainDef.build), and a stable id of the whole text, `(r:1a2b3c4d)`, which survives
    any cut and the iptables comment alphabet: the counter index keys on it, so a rule of a
    63-character namespace's 253-character pod is still attributed."""
    room = COMMENT_MAX - 16 - 13  # the seal's room, and " (r:xxxxxxxx)"
    return f"{text[:room]} (r:{rule_id(text)})"


def rule_id(text: str) -> str:
    return stable_hash(text, length=8)


def drop_reason(pod_key: str, direction: Direction, plan: DirectionPlan) -> str:
    """The comment of a pod chain's final drop: whose chain, and why it drops."""
    n = len(plan.policies)
    return f"{pod_key} {direction.value}: isolated by {n} polic{'y' if n == 1 else 'ies'}, no rule allows"


def audit_comment(pod_key: str, direction: Direction) -> str:
    """The comment of an audit chain's last rule: what audit-mode policies would drop."""
    return f"{pod_key} {direction.value}: audit mode, would be dropped"


class Verdict(Enum):
    """What a pod chain's rule does, before a backend spells it."""

    RETURN = "return"  # this direction allows: back to the base chain (the other direction is next)
    DROP = "drop"
    PASS = "pass"  # on to the pass chain: NetworkPolicy, then Baseline (nftables and iptables `goto`)
    AUDIT = "audit"  # a call of the audit chain, which returns here whatever it finds
    LOG = "log"  # the drop log's rule, and with counters a counted return (the audit chain's last step: it drops nothing)


VERDICTS = {Action.ACCEPT: Verdict.RETURN, Action.DENY: Verdict.DROP, Action.PASS: Verdict.PASS}


@dataclass(frozen=True)
class Step:
    """One rule of a pod chain: `rule` None matches everything. A drop has its `cause`: with
    a drop log configured, backends put a rate-limited NFLOG rule named by it first."""

    rule: AllowRule | TierRule | None
    verdict: Verdict
    comment: str
    cause: DropCause | None = None  # a drop's, or an allow's (accept logging)


@dataclass(frozen=True)
class DirectionSteps:
    main: list[Step]
    passed: list[Step] | None  # the pass chain (an Admin Pass goes there), if any rule passes
    audit: list[Step] | None  # the audit chain, if audited policies would isolate the pod here


def direction_steps(pod_key: str, direction: Direction, plan: DirectionPlan, audit: bool = False) -> DirectionSteps:
    """A pod's chain in one direction, tier by tier, its pass chain (None when no Admin rule
    passes: then the NetworkPolicy and Baseline steps follow inline) and, with `audit` (the
    drop log is on), its audit chain. First match wins: Admin rules in order (Accept returns,
    Deny drops, Pass goes to the pass chain); then, when NetworkPolicies isolate the pod,
    their allow rules and a final drop; else a call of the audit chain (the audited policies'
    allow rules return, the rest is logged as what they would drop) and the Baseline rules
    in order (Pass, like Accept, ends at the default) and a final return."""
    def tier_step(r: TierRule, verdict: Verdict) -> Step:
        cause = deny_cause(pod_key, r) if verdict is Verdict.DROP else accept_cause(pod_key, r) if verdict is Verdict.RETURN else None
        return Step(r, verdict, tagged(r.label()), cause)

    admin = [tier_step(r, VERDICTS[r.action]) for r in plan.admin]
    if plan.isolated:
        rest = [Step(r, Verdict.RETURN, tagged(r.label()), accept_cause(pod_key, r)) for r in plan.rules]
        rest.append(Step(None, Verdict.DROP, tagged(drop_reason(pod_key, direction, plan)), isolation_cause(pod_key, direction, plan)))
    else:
        rest = [tier_step(r, Verdict.DROP if r.action is Action.DENY else Verdict.RETURN) for r in plan.baseline]
        rest.append(Step(None, Verdict.RETURN, f"{pod_key} {direction.value}: no policy decided, allowed"))
    audited = None
    if audit and plan.audit and not plan.isolated:
        rest.insert(0, Step(None, Verdict.AUDIT, f"{pod_key} {direction.value}: what audit-mode policies would drop"))
        audited = [Step(r, Verdict.RETURN, tagged(r.label())) for r in plan.audit_rules]
        audited.append(Step(None, Verdict.LOG, tagged(audit_comment(pod_key, direction)), audit_cause(pod_key, direction, plan)))
    if any(s.verdict is Verdict.PASS for s in admin):
        return DirectionSteps([*admin, Step(None, Verdict.PASS, f"{pod_key} {direction.value}: on to NetworkPolicy and Baseline")],
                              rest, audited)
    return DirectionSteps(admin + rest, None, audited)


def drop_causes(plan: PodPlan) -> list[DropCause]:
    """Every drop of a pod's chains, by cause: what a drop log prefix names."""
    out = []
    for direction in Direction:
        dp = plan.direction(direction)
        if dp is not None:
            ds = direction_steps(plan.pod, direction, dp, audit=True)
            out += [s.cause for s in ds.main + (ds.passed or []) + (ds.audit or []) if s.cause is not None]
    return out


def pod_objects(
    plan: PodPlan,
    cfg: RenderConfig,
    ifname: str | None,
    chain: Callable[[str, Direction, DirectionPlan], list[ChainDef]],
    dispatch: Callable[[Direction, str], str],
    spoof: Callable[[str, tuple[IPAddress, ...]], list[tuple[str, Elem]]],
) -> PodObjects:
    """One local pod's contribution, the same for every backend: the chains of each
    direction a policy selects it in (`chain` returns the one to dispatch to first), a
    dispatch entry per direction (keyed by the host-side interface, or by each
    address in address mode, in the map `dispatch(direction, "if" | "v4" | "v6")`), and the
    anti-spoofing entries `spoof(interface, addresses)` (interface mode)."""
    chains: list[ChainDef] = []
    entries: list[tuple[str, str, str]] = []
    iface = ifname if cfg.mode is DispatchMode.INTERFACE and valid_ifname(ifname) else None
    for direction in Direction:
        dp = plan.direction(direction)
        if dp is None:
            continue
        made = chain(plan.pod, direction, dp)
        chains.extend(made)
        c = made[0]
        if cfg.mode is DispatchMode.INTERFACE:
            if iface is not None:
                entries.append((dispatch(direction, "if"), iface, c.name))
        else:
            entries.extend((dispatch(direction, f"v{ip.version}"), str(ip), c.name) for ip in plan.ips)
    spoofed = spoof(iface, plan.ips) if iface is not None else []
    return PodObjects(tuple(chains), tuple(entries), tuple(spoofed))
