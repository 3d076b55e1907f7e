"""Plan → kernel objects (pure), once for every backend: the compiled plan of each local pod
becomes chains of typed rules (`rules.Rule`), its dispatch and anti-spoofing entries; each
set spec one set per address family; plus the skeleton every node has. A backend enters
only through its `Layout` (names, and what one of its rules can say), and spells the
result itself.

Layout (see docs/architecture.md):

* base chains (forward: pod↔pod and pod↔outside; input: pod→node): conntrack
  established/related accepted first, invalid dropped, ICMPv6 neighbour discovery
  accepted, anti-spoofing and fail-closed (interface mode), then dispatch: the source
  pod's egress chain, then (forward only) the destination pod's ingress chain;
* per-pod chains: `return` on allow, `drop` at the end, so the source's egress and the
  destination's ingress are both checked in one pass; with ClusterNetworkPolicies the
  Admin tier's rules first and the Baseline tier's after (`direction_steps`);
* shared peer sets named by the hash of their spec: pod addresses, (address, protocol,
  port) for egress named ports, ipBlock prefixes, the addresses of the Nodes a `nodes` peer
  selects.

Names from Kubernetes reach the kernel only as validated DNS-1123 names inside chain names
and comments, and as map keys (addresses, interface names checked here).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

from ..compile.plan import (
    AllowRule,
    BlockSetSpec,
    DirectionPlan,
    DomainSetSpec,
    Entry,
    PodPlan,
    PodSetSpec,
    PortMatch,
    SetSpec,
    TierRule,
    addresses,
    has_ports,
    named_ports,
)
from ..model.objects import Action, Direction, IPAddress
from .cni import IFPREFIX_RE
from .config import FAMILIES, DispatchMode, RenderConfig, family_sets, valid_ifname
from .droplog import DropCause, DropLog, accept_cause, audit_cause, deny_cause, isolation_cause
from .layout import Layout
from .objects import COMMENT_MAX, AddrPort, ChainDef, Elem, Free, Hook, IfaceAddr, MapDef, Prefix, SetDef, SetKind
from .rules import (
    ACCEPT,
    DROP,
    L4,
    RETURN,
    AddrPortSet,
    AddrSet,
    CtDirection,
    CtMark,
    CtState,
    Icmp6Types,
    IfaceAddrSet,
    IfacePrefix,
    IfaceSet,
    Kind,
    Log,
    Match,
    NetMatch,
    Origin,
    Port,
    Queue,
    Rule,
    RuleKey,
    Side,
    SrcPort,
    Verdict,
)


@dataclass(frozen=True)
class PodObjects:
    """What one local pod contributes: its chains and its entries in the shared maps/sets."""

    chains: tuple[ChainDef, ...]
    map_entries: tuple[tuple[str, str, str], ...]  # (map name, key, chain)
    spoof_entries: tuple[tuple[str, Elem], ...]  # (set name, element)


class Renderer(Protocol):
    """Plan → dataplane objects for one configuration. Set names must depend on the spec only
    (content-addressed), and `set_defs` must list one set per family of `family_sets(spec)`,
    in that order."""

    layout: Layout

    def skeleton(self) -> tuple[list[SetDef], list[MapDef], list[ChainDef]]:
        """The objects every node has, whatever the policies."""

    def pod(self, plan: PodPlan, ifname: str | None) -> PodObjects: ...

    def set_defs(self, spec: SetSpec, entries: Iterable[Entry]) -> list[SetDef]: ...

    def elements(self, spec: SetSpec, entries: Iterable[Entry], family: int) -> frozenset[Elem]: ...


def addr_text(ip: IPAddress) -> str:
    """An address as both nft and ipset write it; inet_ntoa is 3x faster than str() for
    IPv4, which counts when a peer set of 100k pods is rendered."""
    return socket.inet_ntoa(ip.packed) if ip.version == 4 else str(ip)


# --- the steps of a pod's chains ------------------------------------------------------------


def drop_reason(pod_key: str, direction: Direction, plan: DirectionPlan) -> str:
    """The comment of a pod chain's final drop: whose chain, and why it drops."""
    n = len(plan.policies)
    return f"{pod_key} {direction.value}: isolated by {n} polic{'y' if n == 1 else 'ies'}, no rule allows"


def audit_comment(pod_key: str, direction: Direction) -> str:
    """The comment of an audit chain's last rule: what audit-mode policies would drop."""
    return f"{pod_key} {direction.value}: audit mode, would be dropped"


class StepVerdict(Enum):
    """What a pod chain's step does, before it becomes rules."""

    RETURN = "return"  # this direction allows: back to the base chain (the other direction is next)
    DROP = "drop"
    PASS = "pass"  # on to the pass chain: NetworkPolicy, then Baseline (a goto)
    AUDIT = "audit"  # a call of the audit chain, which returns here whatever it finds
    LOG = "log"  # the drop log's rule, and with counters a counted return (the audit chain's last step: it drops nothing)


VERDICTS = {Action.ACCEPT: StepVerdict.RETURN, Action.DENY: StepVerdict.DROP, Action.PASS: StepVerdict.PASS}


@dataclass(frozen=True)
class Step:
    """One step of a pod chain: `rule` None matches everything. A drop has its `cause`: with
    a drop log configured, a rate-limited NFLOG rule named by its id comes first. `key` is
    the policy rule its counter counts for."""

    rule: AllowRule | TierRule | None
    verdict: StepVerdict
    comment: str
    cause: DropCause | None = None  # a drop's, or an allow's (accept logging)
    key: RuleKey | None = None


@dataclass(frozen=True)
class DirectionSteps:
    main: list[Step]
    passed: list[Step] | None  # the pass chain (an Admin Pass goes there), if any rule passes
    audit: list[Step] | None  # the audit chain, if audited policies would isolate the pod here


def allow_key(kind: str, r: AllowRule) -> RuleKey:
    ns, _, pol = r.policy.partition("/")
    return RuleKey(kind, ns, pol, r.direction.value, str(r.rule_index))


def tier_key(r: TierRule) -> RuleKey:
    return RuleKey("tier", "", r.policy, r.direction.value, r.label().split(" ", 1)[1])


def direction_steps(pod_key: str, direction: Direction, plan: DirectionPlan, audit: bool = False) -> DirectionSteps:
    """A pod's chain in one direction, tier by tier, its pass chain (None when no Admin rule
    passes: then the NetworkPolicy and Baseline steps follow inline) and, with `audit` (the
    drop log is on), its audit chain. First match wins: Admin rules in order (Accept returns,
    Deny drops, Pass goes to the pass chain); then, when NetworkPolicies isolate the pod,
    their allow rules and a final drop; else a call of the audit chain (the audited policies'
    allow rules return, the rest is logged as what they would drop) and the Baseline rules
    in order (Pass, like Accept, ends at the default) and a final return."""
    ns = pod_key.split("/", 1)[0]

    def tier_step(r: TierRule, verdict: StepVerdict) -> Step:
        cause = deny_cause(pod_key, r) if verdict is StepVerdict.DROP else accept_cause(pod_key, r) if verdict is StepVerdict.RETURN else None
        return Step(r, verdict, r.label(), cause, tier_key(r) if verdict is not StepVerdict.PASS else None)

    admin = [tier_step(r, VERDICTS[r.action]) for r in plan.admin]
    if plan.isolated:
        rest = [Step(r, StepVerdict.RETURN, r.label(), accept_cause(pod_key, r), allow_key("allow", r)) for r in plan.rules]
        rest.append(Step(None, StepVerdict.DROP, drop_reason(pod_key, direction, plan), isolation_cause(pod_key, direction, plan),
                         RuleKey("drop", ns, ",".join(plan.policies), direction.value, "")))
    else:
        rest = [tier_step(r, StepVerdict.DROP if r.action is Action.DENY else StepVerdict.RETURN) for r in plan.baseline]
        rest.append(Step(None, StepVerdict.RETURN, f"{pod_key} {direction.value}: no policy decided, allowed"))
    audited = None
    if audit and plan.audit and not plan.isolated:
        rest.insert(0, Step(None, StepVerdict.AUDIT, f"{pod_key} {direction.value}: what audit-mode policies would drop"))
        audited = [Step(r, StepVerdict.RETURN, r.label(), key=allow_key("audit", r)) for r in plan.audit_rules]
        audited.append(Step(None, StepVerdict.LOG, audit_comment(pod_key, direction), audit_cause(pod_key, direction, plan),
                            RuleKey("audit-drop", ns, ",".join(plan.audit), direction.value, "")))
    if any(s.verdict is StepVerdict.PASS for s in admin):
        return DirectionSteps([*admin, Step(None, StepVerdict.PASS, f"{pod_key} {direction.value}: on to NetworkPolicy and Baseline")],
                              rest, audited)
    return DirectionSteps(admin + rest, None, audited)


def free_steps(steps: list[Step], sizes: list[int]) -> Free | None:
    """The run of NetworkPolicy allow steps just before the chain's last step (which matches
    everything): any order of them decides the same (ChainDef.free)."""
    if len(steps) < 2 or steps[-1].rule is not None or sizes[-1] == 0:
        return None
    first = len(steps) - 1
    while first > 0 and isinstance(steps[first - 1].rule, AllowRule) and steps[first - 1].verdict is StepVerdict.RETURN:
        first -= 1
    if first == len(steps) - 1:
        return None
    return sum(sizes[:first]), tuple(sizes[first:-1])


# --- the rules of a step -------------------------------------------------------------------


def port_groups(ports: tuple[PortMatch, ...], slots: int | None) -> list[L4]:
    """A rule's ports by protocol (sorted): the whole protocol when any entry has no port,
    else its port ranges, in groups a rule can hold (`slots`: a range counts twice)."""
    by_proto: dict[str, list[PortMatch]] = {}
    for p in ports:
        by_proto.setdefault(p.protocol, []).append(p)
    out: list[L4] = []
    for proto in sorted(by_proto):
        entries = by_proto[proto]
        lower = proto.lower()
        if any(e.first is None for e in entries):
            out.append(L4(lower))
            continue
        items: list[Port] = sorted({(e.first, e.last) for e in entries})  # type: ignore[misc]
        chunk: list[Port] = []
        used = 0
        for first, last in items:
            cost = 1 if first == last else 2
            if slots is not None and used + cost > slots:
                out.append(L4(lower, tuple(chunk)))
                chunk, used = [], 0
            chunk.append((first, last))
            used += cost
        out.append(L4(lower, tuple(chunk)))
    return out


def peer_matches(rule: AllowRule | TierRule, layout: Layout) -> list[tuple[Match, ...]]:
    """A rule's peer: one alternative per family of its set (nothing: every peer)."""
    side = Side.SRC if rule.direction is Direction.INGRESS else Side.DST
    spec = rule.peer
    if spec is None:
        return [()]
    if isinstance(spec, PodSetSpec) and spec.port_name:
        return [(AddrPortSet(side, fam, layout.set_name(spec, fam)),) for fam in family_sets(spec)]
    return [(AddrSet(side, fam, layout.set_name(spec, fam)),) for fam in family_sets(spec)]


@dataclass(frozen=True)
class StepContext:
    """What a step's rules depend on besides the step: its chain's pass and audit chains and
    the configuration."""

    pass_chain: str
    audit_chain: str
    drop_log: DropLog | None
    counters: bool
    role: str  # the pod and direction (rules.Origin.role)


def step_rules(step: Step, ctx: StepContext, layout: Layout) -> list[Rule]:
    """One step → rules ending in its verdict (a Pass is a goto: when the pass chain returns,
    it returns to the base chain, as this one would; the audit chain is jumped to, it returns
    here); a logged step is first matched by a rate-limited NFLOG rule (a LOG step is only
    that rule, and with counters a counted return)."""
    verdict: Verdict | None
    if step.verdict is StepVerdict.PASS:
        verdict = Verdict(Kind.GOTO, ctx.pass_chain)
    elif step.verdict is StepVerdict.AUDIT:
        verdict = Verdict(Kind.JUMP, ctx.audit_chain)
    elif step.verdict is StepVerdict.LOG:
        verdict = RETURN if ctx.counters else None
    else:
        verdict = RETURN if step.verdict is StepVerdict.RETURN else DROP
    counted = ctx.counters and layout.counters and verdict in (RETURN, DROP)
    comment = layout.comment(step.comment)
    if step.rule is None:
        alternatives: list[tuple[Match, ...]] = [()]
    else:
        ports = [None] if step.rule.ports is None else port_groups(step.rule.ports, layout.port_slots)
        alternatives = [(*peer, *((p,) if p is not None else ())) for peer in peer_matches(step.rule, layout) for p in ports]
    out: list[Rule] = []
    dl = ctx.drop_log
    if step.cause is not None and dl is not None and dl.logs(step.cause) > 0:
        log = Log(dl.group, dl.logs(step.cause), dl.burst)
        origin = Origin(ctx.role, cause=step.cause)
        out += [Rule.build(ms, None, comment, log=log, origin=origin) for ms in alternatives]
    if verdict is not None:
        origin = Origin(ctx.role, step.key, step.cause)
        out += [Rule.build(ms, verdict, comment, counter=counted, origin=origin) for ms in alternatives]
    return out


# Rendered steps are remembered for two generations: a step rendered or used since the last
# turnover stays; when the newer holds STEPS_KEPT entries it becomes the older and the older
# goes. When one policy changes, a pod chain's 200 other steps are not rendered again.
STEPS_KEPT = 20_000
StepKey = tuple[Step, StepContext, int]


class StepCache:
    def __init__(self) -> None:
        self.gens: list[dict[StepKey, tuple[Rule, ...]]] = [{}, {}]

    def rules(self, step: Step, ctx: StepContext, layout: Layout) -> tuple[Rule, ...]:
        key = (step, ctx, id(layout))
        newer, older = self.gens
        got = newer.get(key)
        if got is None:
            got = older.get(key)
            if got is None:
                got = tuple(step_rules(step, ctx, layout))
            if len(newer) >= STEPS_KEPT:
                self.gens[:] = [{}, newer]
                newer = self.gens[0]
            newer[key] = got
        return got


# --- the skeleton ---------------------------------------------------------------------------

ND_TYPES = (133, 134, 135, 136)  # router solicitation/advertisement, neighbour solicitation/advertisement
DNS_PORT = 53


def dns_chain(cfg: RenderConfig, layout: Layout) -> ChainDef:
    """The chain whose one rule queues DNS answers to the agent (its queue, bypassed or not)."""
    assert cfg.fqdn is not None
    q = Queue(cfg.fqdn.queue, cfg.fqdn.fail_open)
    what = "passed unlearned" if q.bypass else "dropped"
    return ChainDef.build(layout.dns_chain(), [Rule.build([], Verdict(Kind.QUEUE), layout.comment(
        f"to the agent's queue {q.num} ({what} when no agent listens)"), origin=Origin("dns"), queue=q)])


def learns_names(plan: PodPlan) -> bool:
    """Whether a pod's egress has a domainNames rule (its DNS answers are queued)."""
    return plan.egress is not None and any(isinstance(r.peer, DomainSetSpec) for r in plan.egress.admin)


def base_rules(cfg: RenderConfig, layout: Layout, hook: str) -> list[Rule]:
    origin = Origin(hook)

    def rule(matches: list[Match], verdict: Verdict, comment: str, family: int = 0) -> Rule:
        return Rule.build(matches, verdict, layout.comment(comment), family, origin=origin)

    ct = "replies and related traffic of allowed connections"
    rules = []
    if cfg.revoke_mark is not None:
        # First of all: both directions of a connection a change revoked (its conntrack
        # entry marked by the agent) are dropped, however it was established.
        rules.append(rule([CtMark(cfg.revoke_mark)], DROP, "connections a policy change revoked"))
    if cfg.fqdn is not None and hook == "forward":
        # Before the replies are accepted: the answers of DNS servers to the pods a
        # domainNames rule selects (the reply direction of a query the pod sent: a packet a
        # pod crafts, or one it gets unasked, is no reply) go to the agent, which learns
        # their addresses (names/) before it lets them pass.
        for fam in FAMILIES:
            for proto in ("udp", "tcp"):
                rules.append(rule([CtDirection("reply"), AddrSet(Side.DST, fam, layout.dns_set(fam)), SrcPort(proto, DNS_PORT)],
                                  Verdict(Kind.JUMP, layout.dns_chain()),
                                  f"DNS answers to pods a domainNames rule selects, learned before they pass ({proto})", fam))
    rules += [
        rule([CtState(("established", "related"))], ACCEPT, f"{ct}, {layout.owner_mark}" if layout.owner_mark else ct),
        rule([CtState(("invalid",))], DROP, "conntrack invalid"),
    ]
    nd = [ND_TYPES] if layout.icmp6_type_sets else [(t,) for t in ND_TYPES]
    rules += [rule([Icmp6Types(types)], ACCEPT, "ICMPv6 neighbour discovery") for types in nd]
    if cfg.mode is DispatchMode.INTERFACE:
        if cfg.anti_spoof:
            for fam in FAMILIES:
                ms: list[Match] = [IfaceSet(Side.SRC, layout.iface_set(fam)), IfaceAddrSet(fam, layout.addr_set(fam), negate=True)]
                if fam == 6:
                    ms.append(NetMatch(Side.SRC, 6, "fe80::/10", negate=True))
                rules.append(rule(ms, DROP, f"anti-spoofing: a pod interface must carry the pod's IPv{fam} address", fam))
        for prefix in cfg.closed_prefixes:
            if not IFPREFIX_RE.match(prefix):
                raise ValueError(f"interface prefix {prefix!r}: 1-14 of [A-Za-z0-9_.-]")
            for side in (Side.SRC,) if hook == "input" else (Side.SRC, Side.DST):
                for fam in layout.iface_families:
                    rules.append(rule([IfacePrefix(side, prefix), IfaceSet(side, layout.iface_set(fam), negate=True)], DROP,
                                      "fail-closed: a pod interface policyd has not programmed yet", fam))
        rules.append(rule([], Verdict(Kind.DISPATCH, layout.dispatch_map(Direction.EGRESS, "if"), Side.SRC), "egress of the source pod"))
        if hook == "forward":
            rules.append(rule([], Verdict(Kind.DISPATCH, layout.dispatch_map(Direction.INGRESS, "if"), Side.DST),
                              "ingress of the destination pod"))
    else:
        for d in (Direction.EGRESS, Direction.INGRESS) if hook == "forward" else (Direction.EGRESS,):
            side, what = (Side.SRC, "egress of the source pod") if d is Direction.EGRESS else (Side.DST, "ingress of the destination pod")
            for fam in FAMILIES:
                rules.append(rule([], Verdict(Kind.DISPATCH, layout.dispatch_map(d, f"v{fam}"), side, fam), what, fam))
    if layout.end_return:
        rules.append(rule([], RETURN, "end of policyd's checks"))
    return rules


# --- sets -----------------------------------------------------------------------------------

HALVES = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}  # a prefix set cannot hold a /0


def net_elem(net: ipaddress.IPv4Network | ipaddress.IPv6Network, nomatch: bool = False) -> Elem:
    """A host without `nomatch` is its address; anything else a Prefix."""
    if net.prefixlen == net.max_prefixlen and not nomatch:
        return str(net.network_address)
    return Prefix(str(net.network_address), net.prefixlen, nomatch)


def block_elements(spec: BlockSetSpec, nomatch: bool) -> frozenset[Elem]:
    """The ipBlock's prefixes: computed intervals (cidr minus excepts), or (`nomatch`) the
    cidr with each except as a nomatch entry (the longest matching prefix wins, so an
    excepted address matches a nomatch entry and is not in the set)."""
    if not nomatch:
        return frozenset(net_elem(net) for net in spec.intervals())
    cidr = spec.block.cidr
    pieces = {cidr} if cidr.prefixlen else {ipaddress.ip_network(h) for h in HALVES[cidr.version]}
    out: set[Elem] = set()
    for e in spec.block.excepts:
        if e in pieces:  # an except equal to a whole piece: leave the piece out instead
            pieces.discard(e)
        else:
            out.add(net_elem(e, nomatch=True))
    return frozenset(out | {net_elem(p) for p in pieces})


def set_elements(spec: SetSpec, entries: Iterable[Entry], family: int, nomatch: bool) -> frozenset[Elem]:
    if isinstance(spec, DomainSetSpec):
        return frozenset()  # (learned in the data path)
    if isinstance(spec, BlockSetSpec):
        return block_elements(spec, nomatch) if spec.block.cidr.version == family else frozenset()
    if isinstance(spec, PodSetSpec) and spec.port_name:
        proto = (spec.protocol or "TCP").lower()
        return frozenset(AddrPort(addr_text(ip), proto, port) for ip, port in named_ports(entries) if ip.version == family)
    return frozenset(addr_text(ip) for ip in addresses(entries) if ip.version == family)


def set_kind(spec: SetSpec) -> SetKind:
    if isinstance(spec, BlockSetSpec):
        return SetKind.PREFIX
    return SetKind.ADDR_PORT if has_ports(spec) else SetKind.ADDR


# --- per pod --------------------------------------------------------------------------------


def pod_objects(
    plan: PodPlan,
    cfg: RenderConfig,
    ifname: str | None,
    chain: Callable[[str, Direction, DirectionPlan], list[ChainDef]],
    dispatch: Callable[[Direction, str], str],
    spoof: Callable[[str, tuple[IPAddress, ...]], list[tuple[str, Elem]]],
) -> PodObjects:
    """One local pod's contribution: the chains of each direction a policy selects it in
    (`chain` returns the one to dispatch to first), a dispatch entry per direction (keyed
    by the host-side interface, or by each address in address mode, in the map
    `dispatch(direction, "if" | "v4" | "v6")`), and the anti-spoofing entries
    `spoof(interface, addresses)` (interface mode)."""
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


_CACHE = StepCache()


class LayoutRenderer:
    """The `Renderer` of every backend: this module bound to a configuration and a layout."""

    def __init__(self, cfg: RenderConfig, layout: Layout) -> None:
        self.cfg = cfg
        self.layout = layout

    def skeleton(self) -> tuple[list[SetDef], list[MapDef], list[ChainDef]]:
        """The objects every node has, whatever the policies: maps, spoofing sets, base chains."""
        cfg, lay = self.cfg, self.layout
        sets: list[SetDef] = []
        if cfg.mode is DispatchMode.INTERFACE:
            maps = [MapDef(lay.dispatch_map(d, "if"), Side.SRC if d is Direction.EGRESS else Side.DST, 0) for d in Direction]
            if cfg.tracks_ifaces:
                sets += [SetDef(lay.iface_set(f), SetKind.IFACE, f, "host-side interfaces of local pods") for f in lay.iface_families]
            if cfg.anti_spoof:
                sets += [SetDef(lay.addr_set(f), SetKind.IFACE_ADDR, f, "local pod interface . address") for f in FAMILIES]
        else:
            maps = [MapDef(lay.dispatch_map(d, f"v{f}"), Side.SRC if d is Direction.EGRESS else Side.DST, f)
                    for d in Direction for f in FAMILIES]
        chains = [ChainDef.build(lay.base_chain(h), base_rules(cfg, lay, h), Hook(h, cfg.priority if lay.priorities else 0)) for h in ("forward", "input")]
        if cfg.fqdn is not None:
            sets += [SetDef(lay.dns_set(f), SetKind.ADDR, f, "local pods whose DNS answers are learned") for f in FAMILIES]
            chains.append(dns_chain(cfg, lay))
        return sets, maps, chains

    def direction_chains(self, pod_key: str, direction: Direction, plan: DirectionPlan) -> list[ChainDef]:
        lay, cfg = self.layout, self.cfg
        ds = direction_steps(pod_key, direction, plan, audit=cfg.drop_log is not None)
        ctx = StepContext(lay.pod_chain(pod_key, direction, "pass"), lay.pod_chain(pod_key, direction, "audit"), cfg.drop_log,
                          cfg.counters, f"{pod_key} {direction.value}")

        def chain(name: str, steps: list[Step]) -> ChainDef:
            rules: list[Rule] = []
            sizes: list[int] = []
            for s in steps:
                r = _CACHE.rules(s, ctx, lay)
                rules += r
                sizes.append(len(r))
            return ChainDef.build(name, rules, free=free_steps(steps, sizes))

        chains = [chain(lay.pod_chain(pod_key, direction), ds.main)]
        if ds.passed is not None:
            chains.append(chain(ctx.pass_chain, ds.passed))
        if ds.audit is not None:
            chains.append(chain(ctx.audit_chain, ds.audit))
        return chains

    def pod(self, plan: PodPlan, ifname: str | None) -> PodObjects:
        """`ifname` is the pod's host-side interface (interface mode only)."""
        cfg, lay = self.cfg, self.layout

        def spoof(iface: str, ips: tuple[IPAddress, ...]) -> list[tuple[str, Elem]]:
            out: list[tuple[str, Elem]] = []
            if cfg.anti_spoof:
                out += [(lay.addr_set(ip.version), IfaceAddr(iface, str(ip))) for ip in ips]
            if cfg.tracks_ifaces:
                out += [(lay.iface_set(f), iface) for f in lay.iface_families]
            return out

        objs = pod_objects(plan, cfg, ifname, self.direction_chains, lay.dispatch_map, spoof)
        if cfg.fqdn is not None and learns_names(plan):
            objs = replace(objs, spoof_entries=objs.spoof_entries + tuple((lay.dns_set(ip.version), addr_text(ip)) for ip in plan.ips))
        return objs

    def set_defs(self, spec: SetSpec, entries: Iterable[Entry]) -> list[SetDef]:
        entries = list(entries)
        return [SetDef(self.layout.set_name(spec, fam), set_kind(spec), fam, spec.canonical()[:COMMENT_MAX],
                       set_elements(spec, entries, fam, self.layout.nomatch), learned=isinstance(spec, DomainSetSpec))
                for fam in family_sets(spec)]

    def elements(self, spec: SetSpec, entries: Iterable[Entry], family: int) -> frozenset[Elem]:
        return set_elements(spec, entries, family, self.layout.nomatch)


def drop_causes(plan: PodPlan) -> list[DropCause]:
    """Every drop of a pod's chains, by cause (the drop log names them)."""
    out = []
    for direction in Direction:
        dp = plan.direction(direction)
        if dp is not None:
            ds = direction_steps(plan.pod, direction, dp, audit=True)
            out += [s.cause for s in ds.main + (ds.passed or []) + (ds.audit or []) if s.cause is not None]
    return out
