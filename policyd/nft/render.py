"""Plan → nftables objects (pure). Knows nftables, and Kubernetes only through the IR.

Layout of table `inet policyd` (see docs/architecture.md):

* base chains `forward-hook` (pod↔pod, pod↔outside) and `input-hook` (pod→node):
  conntrack established/related accepted first, invalid dropped, ICMPv6 neighbour
  discovery accepted, anti-spoofing (interface mode), then dispatch through verdict maps:
  the source pod's egress chain, then (forward only) the destination pod's ingress chain;
* per-pod chains `pod-out-…`/`pod-in-…`: `return` on allow, `drop` at the end, so the
  source's egress and the destination's ingress are both checked in one pass;
* shared peer sets named by the hash of their spec: `sel-…` (pod addresses), `np-…`
  ((address, protocol, port) for egress named ports), `blk-…` (ipBlock intervals), `nd-…`
  (the addresses of the Nodes a ClusterNetworkPolicy `nodes` peer selects).

Names from Kubernetes reach the kernel only as validated DNS-1123 names inside chain names
and comments, and as map keys (addresses, interface names checked here).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..compile.plan import (
    AllowRule,
    BlockSetSpec,
    DirectionPlan,
    Entry,
    PodPlan,
    PodSetSpec,
    PortMatch,
    SetSpec,
    TierRule,
    addresses,
    has_ports,
    named_ports,
    set_kind,
)
from ..dataplane.cni import IFPREFIX_RE
from ..dataplane.config import FAMILIES, DispatchMode, RenderConfig, family_sets
from ..dataplane.droplog import DropCause, DropLog
from ..dataplane.objects import COMMENT_MAX, ChainDef, Elem, Hook, MapDef, RuleBody, SetDef
from ..dataplane.renderer import PodObjects, Step, Verdict, addr_text, direction_steps, pod_objects, tagged
from ..model.objects import Direction, IPAddress
from ..model.selectors import stable_hash

# --- names ------------------------------------------------------------------------------


def set_name(spec: SetSpec, family: int) -> str:
    return f"{set_kind(spec)}-{spec.digest}-v{family}"


def pod_chain_name(pod_key: str, direction: Direction, kind: str = "") -> str:
    """`pod-in-<hash8>-<ns>/<pod>` (`pod-inpass-…`: where an Admin Pass goes; `pod-inaudit-…`:
    audit mode): a `/` never occurs in Kubernetes names, so ownership is a pattern test; the
    hash keeps truncated names unique (nft caps names at 256)."""
    prefix = ("in" if direction is Direction.INGRESS else "out") + kind
    return f"pod-{prefix}-{stable_hash(pod_key, length=8)}-{pod_key}"[:240]


def map_name(direction: Direction, key: str) -> str:
    return f"pod-{direction.value}-{key}"


# --- set contents -----------------------------------------------------------------------


def set_elements(spec: SetSpec, entries: Iterable[Entry], family: int) -> frozenset[Elem]:
    if isinstance(spec, BlockSetSpec):
        out: set[Elem] = set()
        for net in spec.intervals():
            if net.version != family:
                continue
            if net.prefixlen == net.max_prefixlen:
                out.add(str(net.network_address))  # the kernel lists a /32 as an address
            else:
                out.add(("prefix", str(net.network_address), net.prefixlen))
        return frozenset(out)
    if isinstance(spec, PodSetSpec) and spec.port_name:
        proto = (spec.protocol or "TCP").lower()
        return frozenset(("concat", addr_text(ip), proto, port) for ip, port in named_ports(entries) if ip.version == family)
    return frozenset(addr_text(ip) for ip in addresses(entries) if ip.version == family)


def render_set(spec: SetSpec, entries: Iterable[Entry]) -> list[SetDef]:
    entries = list(entries)
    out = []
    for fam in family_sets(spec):
        addr = "ipv4_addr" if fam == 4 else "ipv6_addr"
        typ: tuple[str, ...] = (addr, "inet_proto", "inet_service") if has_ports(spec) else (addr,)
        out.append(
            SetDef(
                set_name(spec, fam),
                typ,
                interval=isinstance(spec, BlockSetSpec),
                comment=spec.canonical()[:COMMENT_MAX],
                elements=set_elements(spec, entries, fam),
            )
        )
    return out


def set_names(spec: SetSpec) -> list[str]:
    return [set_name(spec, f) for f in family_sets(spec)]


# --- rule expressions -------------------------------------------------------------------


def payload(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


def match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def port_terms(ports: tuple[PortMatch, ...]) -> list[list[dict[str, Any]]]:
    """Group port entries by protocol: one term list (l4proto [+ dport set]) per protocol."""
    by_proto: dict[str, list[PortMatch]] = {}
    for p in ports:
        by_proto.setdefault(p.protocol, []).append(p)
    terms = []
    for proto in sorted(by_proto):
        entries = by_proto[proto]
        term = [match(meta("l4proto"), proto.lower())]
        if all(p.first is not None for p in entries):
            values: list[Any] = sorted(
                {p.first if p.first == p.last else ("range", p.first, p.last) for p in entries},
                key=lambda v: v if isinstance(v, int) else v[1],
            )
            right = [v if isinstance(v, int) else {"range": [v[1], v[2]]} for v in values]
            term.append(match(payload("th", "dport"), right[0] if len(right) == 1 else {"set": right}))
        terms.append(term)
    return terms


def step_rules(step: Step, pass_chain: str, drop_log: DropLog | None = None, audit_chain: str = "",
               counters: bool = False) -> list[RuleBody]:
    """One chain step → nft rule bodies ending in its verdict (`goto` the pass chain: when
    that chain returns, it returns to the base chain, as this one would; `jump` the audit
    chain, which returns here); a logged drop is first matched by a rate-limited `log group`
    rule named by its cause (a LOG step is only that rule, and with counters a counted return)."""
    verdicts: list[list[dict[str, Any]]]
    if step.verdict is Verdict.PASS:
        verdicts = [[{"goto": {"target": pass_chain}}]]
    elif step.verdict is Verdict.AUDIT:
        verdicts = [[{"jump": {"target": audit_chain}}]]
    elif step.verdict is Verdict.LOG:  # the end of the audit chain: counted when counters are on
        verdicts = [[{"counter": None}, {"return": None}]] if counters else []
    else:  # return or drop: what the counters count (`counter` before the verdict)
        verdicts = [[{"counter": None}, {step.verdict.value: None}] if counters else [{step.verdict.value: None}]]
    out: list[RuleBody] = []
    cause = step.cause
    logs = [log_exprs(cause, drop_log)] if cause is not None and drop_log is not None and drop_log.logs(cause) > 0 else []
    for tail in logs + verdicts:
        if step.rule is None:
            out.append({"expr": tail, "comment": step.comment[:COMMENT_MAX]})
        else:
            out += match_rules(step.rule, tail)
    return out


StepKey = tuple[Any, ...]
RenderedStep = tuple[tuple[RuleBody, ...], tuple[str, ...]]
# Two generations: a step rendered or used since the last turnover stays; when the newer
# holds STEPS_KEPT entries it becomes the older and the older goes. The bodies are the
# ones the desired chains hold anyway; what this adds is each rule's JSON and stale steps.
STEPS_KEPT = 20_000
_steps: list[dict[StepKey, RenderedStep]] = [{}, {}]


def rendered_step(step: Step, pass_chain: str, drop_log: DropLog | None, audit_chain: str,
                  counters: bool) -> RenderedStep:
    """`step_rules` and each rule's canonical JSON, remembered: when one policy changes, a
    pod chain's 200 other steps are not rendered and encoded again. The bodies are shared
    between chain versions, so nothing may change them (ChainDef.build copies the rule it
    seals)."""
    key = (step, pass_chain, drop_log, audit_chain, counters)
    newer, older = _steps
    got = newer.get(key)
    if got is None:
        got = older.get(key)
        if got is None:
            rules = tuple(step_rules(step, pass_chain, drop_log, audit_chain, counters))
            got = (rules, tuple(json.dumps(r, sort_keys=True) for r in rules))
        if len(newer) >= STEPS_KEPT:
            _steps[:] = [{}, newer]
            newer = _steps[0]
        newer[key] = got
    return got


def log_exprs(cause: DropCause, drop_log: DropLog) -> list[dict[str, Any]]:
    return [{"limit": {"rate": drop_log.logs(cause), "burst": drop_log.burst, "per": "second"}},
            {"log": {"prefix": cause.prefix, "group": drop_log.group}}]


def match_rules(rule: AllowRule | TierRule, tail: list[dict[str, Any]]) -> list[RuleBody]:
    """A rule's peer and ports → nft rule bodies ending in `tail` (a verdict, or a log)
    when they match."""
    addr_field = "saddr" if rule.direction is Direction.INGRESS else "daddr"
    peer_terms: list[list[dict[str, Any]]] = []
    spec = rule.peer
    if spec is None:
        peer_terms = [[]]
    else:
        for fam, name in zip(family_sets(spec), set_names(spec), strict=True):
            proto = "ip" if fam == 4 else "ip6"
            if isinstance(spec, PodSetSpec) and spec.port_name:
                key = {"concat": [payload(proto, addr_field), meta("l4proto"), payload("th", "dport")]}
                peer_terms.append([match(key, "@" + name)])
            else:
                peer_terms.append([match(payload(proto, addr_field), "@" + name)])
    port_alts = [[]] if rule.ports is None else port_terms(rule.ports)
    comment = tagged(rule.label())
    out: list[RuleBody] = []
    for pt in peer_terms:
        for ports in port_alts:
            out.append({"expr": [*pt, *ports, *tail], "comment": comment})
    return out


def free_steps(steps: list[Step], sizes: list[int]) -> tuple[int, tuple[int, ...]] | None:
    """The run of NetworkPolicy allow steps just before the chain's last step (which matches
    everything): any order of them decides the same (ChainDef.free)."""
    if len(steps) < 2 or steps[-1].rule is not None or sizes[-1] == 0:
        return None  # (a last step of no rules: the digest would sit on an order-free rule)
    first = len(steps) - 1
    while first > 0 and isinstance(steps[first - 1].rule, AllowRule) and steps[first - 1].verdict is Verdict.RETURN:
        first -= 1
    if first == len(steps) - 1:
        return None
    return sum(sizes[:first]), tuple(sizes[first:-1])


def render_direction_chain(pod_key: str, direction: Direction, plan: DirectionPlan, drop_log: DropLog | None = None,
                           counters: bool = False) -> list[ChainDef]:
    ds = direction_steps(pod_key, direction, plan, audit=drop_log is not None)
    pass_name, audit_name = pod_chain_name(pod_key, direction, "pass"), pod_chain_name(pod_key, direction, "audit")

    def chain(name: str, steps: list[Step]) -> ChainDef:
        rules: list[RuleBody] = []
        keys: list[str] = []
        sizes: list[int] = []
        for s in steps:
            r, k = rendered_step(s, pass_name, drop_log, audit_name, counters)
            rules += r
            keys += k
            sizes.append(len(r))
        return ChainDef.build(name, rules, keys=keys, free=free_steps(steps, sizes))

    chains = [chain(pod_chain_name(pod_key, direction), ds.main)]
    if ds.passed is not None:
        chains.append(chain(pass_name, ds.passed))
    if ds.audit is not None:
        chains.append(chain(audit_name, ds.audit))
    return chains


# --- per pod ------------------------------------------------------------------------------


def render_pod(plan: PodPlan, cfg: RenderConfig, ifname: str | None) -> PodObjects:
    """`ifname` is the pod's host-side interface (interface mode only)."""

    def spoof(iface: str, ips: tuple[IPAddress, ...]) -> list[tuple[str, Elem]]:
        out: list[tuple[str, Elem]] = []
        if cfg.anti_spoof:
            out += [(f"pod-addr-v{ip.version}", ("concat", iface, str(ip))) for ip in ips]
        if cfg.tracks_ifaces:
            out.append(("pod-ifaces", iface))
        return out

    def chain(pod_key: str, direction: Direction, dp: DirectionPlan) -> list[ChainDef]:
        return render_direction_chain(pod_key, direction, dp, cfg.drop_log, cfg.counters)

    return pod_objects(plan, cfg, ifname, chain, map_name, spoof)


# --- the static skeleton ------------------------------------------------------------------

ND_TYPES = ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert"]


def base_rules(cfg: RenderConfig, hook: str) -> list[RuleBody]:
    rules: list[RuleBody] = [
        {"expr": [match({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}],
         "comment": "replies and related traffic of allowed connections"},
        {"expr": [match({"ct": {"key": "state"}}, "invalid", "in"), {"drop": None}], "comment": "conntrack invalid"},
        {"expr": [match(meta("l4proto"), "ipv6-icmp"), match({"payload": {"protocol": "icmpv6", "field": "type"}}, {"set": ND_TYPES}), {"accept": None}],
         "comment": "ICMPv6 neighbour discovery"},
    ]
    if cfg.mode is DispatchMode.INTERFACE:
        if cfg.anti_spoof:
            for fam, proto in ((4, "ip"), (6, "ip6")):
                cond = [match(meta("nfproto"), "ipv4" if fam == 4 else "ipv6"), match(meta("iifname"), "@pod-ifaces")]
                if fam == 6:
                    cond.append(match(payload("ip6", "saddr"), {"prefix": {"addr": "fe80::", "len": 10}}, "!="))
                key = {"concat": [meta("iifname"), payload(proto, "saddr")]}
                rules.append({"expr": [*cond, match(key, f"@pod-addr-v{fam}", "!="), {"drop": None}],
                              "comment": f"anti-spoofing: a pod interface must carry the pod's IPv{fam} address"})
        for prefix in cfg.closed_prefixes:
            if not IFPREFIX_RE.match(prefix):
                raise ValueError(f"interface prefix {prefix!r}: 1-14 of [A-Za-z0-9_.-]")
            for field in ("iifname",) if hook == "input" else ("iifname", "oifname"):
                rules.append({"expr": [match(meta(field), prefix + "*"), match(meta(field), "@pod-ifaces", "!="), {"drop": None}],
                              "comment": "fail-closed: a pod interface policyd has not programmed yet"})
        rules.append({"expr": [{"vmap": {"key": meta("iifname"), "data": "@pod-egress-if"}}], "comment": "egress of the source pod"})
        if hook == "forward":
            rules.append({"expr": [{"vmap": {"key": meta("oifname"), "data": "@pod-ingress-if"}}], "comment": "ingress of the destination pod"})
    else:
        for fam, proto in ((4, "ip"), (6, "ip6")):
            rules.append({"expr": [{"vmap": {"key": payload(proto, "saddr"), "data": f"@pod-egress-v{fam}"}}], "comment": "egress of the source pod"})
        if hook == "forward":
            for fam, proto in ((4, "ip"), (6, "ip6")):
                rules.append({"expr": [{"vmap": {"key": payload(proto, "daddr"), "data": f"@pod-ingress-v{fam}"}}],
                              "comment": "ingress of the destination pod"})
    return rules


def render_skeleton(cfg: RenderConfig) -> tuple[list[SetDef], list[MapDef], list[ChainDef]]:
    """The objects every node has, whatever the policies: maps, spoofing sets, base chains."""
    sets: list[SetDef] = []
    maps: list[MapDef] = []
    if cfg.mode is DispatchMode.INTERFACE:
        maps = [MapDef(map_name(d, "if"), "ifname") for d in Direction]
        if cfg.tracks_ifaces:
            sets.append(SetDef("pod-ifaces", ("ifname",), comment="host-side interfaces of local pods"))
        if cfg.anti_spoof:
            sets += [
                SetDef("pod-addr-v4", ("ifname", "ipv4_addr"), comment="local pod interface . address"),
                SetDef("pod-addr-v6", ("ifname", "ipv6_addr"), comment="local pod interface . address"),
            ]
    else:
        maps = [MapDef(map_name(d, f"v{f}"), "ipv4_addr" if f == 4 else "ipv6_addr") for d in Direction for f in FAMILIES]
    chains = [
        ChainDef.build("forward-hook", base_rules(cfg, "forward"), Hook("forward", cfg.priority)),
        ChainDef.build("input-hook", base_rules(cfg, "input"), Hook("input", cfg.priority)),
    ]
    return sets, maps, chains



class NftRenderer:
    """The functions above bound to one configuration: the `Renderer` the desired state uses."""

    def __init__(self, cfg: RenderConfig) -> None:
        self.cfg = cfg

    def skeleton(self) -> tuple[list[SetDef], list[MapDef], list[ChainDef]]:
        return render_skeleton(self.cfg)

    def pod(self, plan: PodPlan, ifname: str | None) -> PodObjects:
        return render_pod(plan, self.cfg, ifname)

    def set_defs(self, spec: SetSpec, entries: Iterable[Entry]) -> list[SetDef]:
        return render_set(spec, entries)

    def elements(self, spec: SetSpec, entries: Iterable[Entry], family: int) -> frozenset[Elem]:
        return set_elements(spec, entries, family)
