"""Plan → iptables chains and ipsets (pure). The same plan and layout as `nft.render`:

* base chains `<P>-FORWARD` / `<P>-INPUT` (P = the table name in capitals), jumped to from
  the first position of the filter table's FORWARD / INPUT in both iptables and ip6tables:
  conntrack established/related accepted first, invalid dropped, ICMPv6 neighbour
  discovery accepted, anti-spoofing and fail-closed (interface mode, through `hash:net,iface`
  ipsets), then the dispatch chains;
* dispatch chains `<P>-EGRESS-IF` / `<P>-INGRESS-IF` (interface mode) or `<P>-EGRESS-V4` …
  (address mode): one `-i <iface> -j <pod chain>` (or `-s <addr>`) rule per local pod. They
  play the part of nft's verdict maps (`MapDef`), so `ipt.restore` writes them from map
  elements; iptables has no map, so this is the one per-packet cost that grows with the
  number of *local* pods (not with policies or peers);
* per-pod chains `<P>-IN-<hash12>` / `<P>-OUT-<hash12>` (iptables caps chain names at 28
  characters, so the pod's name goes into the comment of the final drop): `RETURN` on allow,
  `DROP` at the end, in both families; a rule that names an address set goes only into the
  table of the set's family;
* ipsets named `<table>-sel-<hash16>-4|6` (`hash:ip`), `<table>-np-…` (`hash:ip,port`,
  egress named ports resolved per destination pod), `<table>-blk-…` (`hash:net`, the cidr
  with each `except` entered as `nomatch`), `<table>-nd-…` (`hash:ip`, the addresses of the
  Nodes a ClusterNetworkPolicy `nodes` peer selects).

A rule body is `{"family": 0|4|6, "match": str, "target": str, "comment": str}`; `match`
holds only our own option syntax, set names from hashes and addresses, ports and interface
names validated here. Comments are reduced to a safe alphabet before they reach the
restore text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

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
from ..dataplane.backend import OWNER_MARK
from ..dataplane.cni import IFPREFIX_RE
from ..dataplane.config import DispatchMode, RenderConfig, family_sets
from ..dataplane.objects import COMMENT_MAX, ChainDef, Elem, Hook, MapDef, RuleBody, SetDef
from ..dataplane.renderer import PodObjects, Step, Verdict, addr_text, direction_steps, pod_objects, tagged
from ..model.objects import Direction, IPAddress
from ..model.selectors import stable_hash

TABLE_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
MULTIPORT_SLOTS = 15  # xt_multiport: 15 ports, a range counts twice
MAXELEM = 1 << 20  # ipset's default of 65,536 is too small for a cluster-wide selector
# Numeric, as ip6tables-save lists them (router solicitation, router advertisement, neighbour
# solicitation, neighbour advertisement).
ND_TYPES = ("133", "134", "135", "136")
HALVES = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}  # hash:net cannot hold a /0


def check_table(table: str) -> str:
    """The owner prefix of every chain and ipset. ipset names are capped at 31 characters
    and chain names at 28, so the prefix is short."""
    if not TABLE_RE.match(table):
        raise ValueError(f"--table {table!r}: the iptables backend needs 1-8 characters of [a-z0-9], starting with a letter")
    return table


def ipset_family(family: int) -> str:
    return "inet" if family == 4 else "inet6"


class Names:
    """Kernel object names for one owner prefix (the table name)."""

    def __init__(self, table: str) -> None:
        self.table = check_table(table)
        self.chain_prefix = table.upper() + "-"
        self.set_prefix = table + "-"

    def base(self, hook: str) -> str:
        return f"{self.chain_prefix}{hook.upper()}"

    def dispatch(self, direction: Direction, key: str) -> str:
        return f"{self.chain_prefix}{direction.value.upper()}-{key.upper()}"

    def dispatch_maps(self) -> dict[str, MapDef]:
        """Every dispatch chain either mode may have, as an empty map of its key type."""
        out = {self.dispatch(d, "if"): MapDef(self.dispatch(d, "if"), "ifname") for d in Direction}
        for d in Direction:
            for f in (4, 6):
                out[self.dispatch(d, f"v{f}")] = MapDef(self.dispatch(d, f"v{f}"), f"ipv{f}_addr")
        return out

    def pod_chain(self, pod_key: str, direction: Direction, kind: str = "") -> str:
        """`<P>-IN-<hash12>`; `<P>-INP-<hash12>` (kind "pass"): where an Admin Pass goes;
        `<P>-INA-<hash12>` (kind "audit"): audit mode."""
        letter = {"": "", "pass": "P", "audit": "A"}[kind]
        return f"{self.chain_prefix}{'IN' if direction is Direction.INGRESS else 'OUT'}{letter}-{stable_hash(pod_key, length=12)}"

    def spec_set(self, spec: SetSpec, family: int) -> str:
        return f"{self.set_prefix}{set_kind(spec)}-{spec.digest}-{family}"  # at most 31 characters, ipset's limit

    def made_chain(self, name: str) -> bool:
        """Whether `name` is one of the chain names this prefix's renderer makes (not merely
        one that starts with the prefix)."""
        rest = name.removeprefix(self.chain_prefix)
        return rest != name and re.fullmatch(r"FORWARD|INPUT|(EGRESS|INGRESS)-(IF|V4|V6)|(IN|OUT)[PA]?-[0-9a-f]{12}", rest) is not None

    def made_set(self, name: str) -> bool:
        rest = name.removeprefix(self.set_prefix)
        return rest != name and re.fullmatch(r"(sel|np|blk|nd)-[0-9a-f]{16}-[46]|(ifaces|addr)-[46]", rest) is not None

    def ifaces(self, family: int) -> str:
        return f"{self.set_prefix}ifaces-{family}"

    def addrs(self, family: int) -> str:
        return f"{self.set_prefix}addr-{family}"


def safe_comment(text: str) -> str:
    """Comments go into restore text inside double quotes: keep a plain alphabet."""
    return re.sub(r"[^A-Za-z0-9_./:,\[\]()+ -]", "_", text)[:COMMENT_MAX]


def rule(match: str, target: str, comment: str = "", family: int = 0, goto: bool = False) -> RuleBody:
    body: RuleBody = {"family": family, "match": match, "target": target, "comment": safe_comment(comment)}
    if goto:
        body["goto"] = True  # `-g target`: the target's RETURN goes back to this chain's caller
    return body


# --- set contents -------------------------------------------------------------------------


def net_text(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """As `ipset save` prints a hash:net entry: a host prefix without its length."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def block_elements(spec: BlockSetSpec) -> frozenset[Elem]:
    """`cidr` plus each `except` as `nomatch`: ipset prefers the longest matching prefix, so
    an excepted address matches a nomatch entry and is not in the set."""
    cidr = spec.block.cidr
    pieces = {cidr} if cidr.prefixlen else {ipaddress.ip_network(h) for h in HALVES[cidr.version]}
    out: set[Elem] = set()
    for e in spec.block.excepts:
        if e in pieces:  # an except equal to a whole piece: leave the piece out instead
            pieces.discard(e)
        else:
            out.add(f"{net_text(e)} nomatch")
    out |= {net_text(p) for p in pieces}
    return frozenset(out)


def set_type(spec: SetSpec) -> str:
    if isinstance(spec, BlockSetSpec):
        return "hash:net"
    return "hash:ip,port" if has_ports(spec) else "hash:ip"


def elements(spec: SetSpec, entries: Iterable[Entry], family: int) -> frozenset[Elem]:
    if isinstance(spec, BlockSetSpec):
        return block_elements(spec) if spec.block.cidr.version == family else frozenset()
    if isinstance(spec, PodSetSpec) and spec.port_name:
        proto = (spec.protocol or "TCP").lower()
        return frozenset(f"{addr_text(ip)},{proto}:{port}" for ip, port in named_ports(entries) if ip.version == family)
    return frozenset(addr_text(ip) for ip in addresses(entries) if ip.version == family)


# --- rules --------------------------------------------------------------------------------


def port_matches(ports: tuple[PortMatch, ...]) -> list[str]:
    """One match per protocol (more when multiport's 15 slots are not enough)."""
    by_proto: dict[str, list[PortMatch]] = {}
    for p in ports:
        by_proto.setdefault(p.protocol, []).append(p)
    out = []
    for proto in sorted(by_proto):
        entries = by_proto[proto]
        lower = proto.lower()
        if any(e.first is None for e in entries):
            out.append(f"-p {lower}")
            continue
        items = sorted({(e.first, e.last) for e in entries})
        chunk: list[str] = []
        slots = 0
        chunks: list[list[str]] = []
        for first, last in items:
            text, cost = (str(first), 1) if first == last else (f"{first}:{last}", 2)
            if slots + cost > MULTIPORT_SLOTS:
                chunks.append(chunk)
                chunk, slots = [], 0
            chunk.append(text)
            slots += cost
        chunks.append(chunk)
        for c in chunks:
            # `-m {p}` written out, as iptables-save lists it back: read-back compares lines
            out.append(f"-p {lower} -m {lower} --dport {c[0]}" if len(c) == 1 else f"-p {lower} -m multiport --dports {','.join(c)}")
    return out


class IptRenderer:
    """The `Renderer` of the iptables backend (see module docstring)."""

    def __init__(self, cfg: RenderConfig) -> None:
        self.cfg = cfg
        self.names = Names(cfg.table)

    # sets

    def set_defs(self, spec: SetSpec, entries: Iterable[Entry]) -> list[SetDef]:
        entries = list(entries)
        return [
            SetDef(self.names.spec_set(spec, fam), (set_type(spec), ipset_family(fam)), comment=spec.canonical()[:COMMENT_MAX],
                   elements=elements(spec, entries, fam))
            for fam in family_sets(spec)
        ]

    def elements(self, spec: SetSpec, entries: Iterable[Entry], family: int) -> frozenset[Elem]:
        return elements(spec, entries, family)

    # pods

    def step_rules(self, step: Step, pass_chain: str, audit_chain: str = "") -> list[RuleBody]:
        """One chain step → rules ending in its verdict (a Pass is `-g`: goto, so that the
        pass chain's RETURN goes back to the base chain, as this chain's would; the audit
        chain is `-j`, it returns here; a LOG step is only its NFLOG rule, and with counters a
        counted RETURN)."""
        goto = step.verdict is Verdict.PASS
        target = pass_chain if goto else audit_chain if step.verdict is Verdict.AUDIT else step.verdict.value.upper()
        out: list[RuleBody] = []
        log = self.cfg.drop_log
        if step.cause is not None and log is not None and log.logs(step.cause) > 0:
            # NFLOG does not end the rule walk; the limit match keeps a flood in the kernel.
            limit = f"-m limit --limit {log.logs(step.cause)}/sec --limit-burst {log.burst}"
            nflog = f"NFLOG --nflog-prefix {step.cause.prefix} --nflog-group {log.group}"  # as iptables-save prints it
            out += [rule(limit, nflog, step.comment)] if step.rule is None else self.match_rules(step.rule, nflog, extra=limit)
        if step.verdict is Verdict.LOG:  # the end of the audit chain: an explicit RETURN to count, with counters
            out += [rule("", "RETURN", step.comment)] if self.cfg.counters else []
        else:
            out += [rule("", target, step.comment, goto=goto)] if step.rule is None else self.match_rules(step.rule, target, goto)
        return out

    def match_rules(self, r: AllowRule | TierRule, target: str, goto: bool = False, extra: str = "") -> list[RuleBody]:
        """A rule's peer and ports (and `extra` matches) → rules with `target` when they match."""
        side = "src" if r.direction is Direction.INGRESS else "dst"
        peers: list[tuple[int, str]] = [(0, "")]
        spec = r.peer
        if spec is not None:
            flags = f"{side},{side}" if isinstance(spec, PodSetSpec) and spec.port_name else side
            peers = [(fam, f"-m set --match-set {self.names.spec_set(spec, fam)} {flags}") for fam in family_sets(spec)]
        ports = [""] if r.ports is None else port_matches(r.ports)
        return [rule(" ".join(x for x in (pm, peer, extra) if x), target, tagged(r.label()), fam, goto) for fam, peer in peers for pm in ports]

    def direction_chain(self, pod_key: str, direction: Direction, plan: DirectionPlan) -> list[ChainDef]:
        ds = direction_steps(pod_key, direction, plan, audit=self.cfg.drop_log is not None)
        pass_name, audit_name = self.names.pod_chain(pod_key, direction, "pass"), self.names.pod_chain(pod_key, direction, "audit")

        def chain(name: str, steps: list[Step]) -> ChainDef:
            return ChainDef.build(name, [b for s in steps for b in self.step_rules(s, pass_name, audit_name)])

        chains = [chain(self.names.pod_chain(pod_key, direction), ds.main)]
        if ds.passed is not None:
            chains.append(chain(pass_name, ds.passed))
        if ds.audit is not None:
            chains.append(chain(audit_name, ds.audit))
        return chains

    def pod(self, plan: PodPlan, ifname: str | None) -> PodObjects:
        cfg, n = self.cfg, self.names

        def spoof(iface: str, ips: tuple[IPAddress, ...]) -> list[tuple[str, Elem]]:
            out: list[tuple[str, Elem]] = []
            if cfg.anti_spoof:
                out += [(n.addrs(ip.version), f"{ip},{iface}") for ip in ips]
            if cfg.tracks_ifaces:
                out += [(n.ifaces(fam), f"{half},{iface}") for fam in (4, 6) for half in HALVES[fam]]
            return out

        return pod_objects(plan, cfg, ifname, self.direction_chain, n.dispatch, spoof)

    # skeleton

    def base_rules(self, hook: str) -> list[RuleBody]:
        cfg, n = self.cfg, self.names
        rules = [
            # First rule of a base chain: its comment carries the ownership mark.
            rule("-m conntrack --ctstate RELATED,ESTABLISHED", "ACCEPT", f"replies and related traffic of allowed connections, {OWNER_MARK}"),
            rule("-m conntrack --ctstate INVALID", "DROP", "conntrack invalid"),
            *(rule(f"-p ipv6-icmp -m icmp6 --icmpv6-type {t}", "ACCEPT", "ICMPv6 neighbour discovery", 6) for t in ND_TYPES),
        ]
        if cfg.mode is DispatchMode.INTERFACE:
            if cfg.anti_spoof:
                for fam in (4, 6):
                    local = "! -s fe80::/10 " if fam == 6 else ""
                    rules.append(rule(f"{local}-m set --match-set {n.ifaces(fam)} src,src -m set ! --match-set {n.addrs(fam)} src,src",
                                      "DROP", f"anti-spoofing: a pod interface must carry the pod's IPv{fam} address", fam))
            for prefix in cfg.closed_prefixes:
                if not IFPREFIX_RE.match(prefix):
                    raise ValueError(f"interface prefix {prefix!r}: 1-14 of [A-Za-z0-9_.-]")
                sides = (("-i", "src"),) if hook == "input" else (("-i", "src"), ("-o", "dst"))
                for opt, side in sides:
                    for fam in (4, 6):
                        rules.append(rule(f"{opt} {prefix}+ -m set ! --match-set {n.ifaces(fam)} {side},{side}", "DROP",
                                          "fail-closed: a pod interface policyd has not programmed yet", fam))
            rules.append(rule("", n.dispatch(Direction.EGRESS, "if"), "egress of the source pod"))
            if hook == "forward":
                rules.append(rule("", n.dispatch(Direction.INGRESS, "if"), "ingress of the destination pod"))
        else:
            directions = (Direction.EGRESS, Direction.INGRESS) if hook == "forward" else (Direction.EGRESS,)
            for d in directions:
                for fam in (4, 6):
                    rules.append(rule("", n.dispatch(d, f"v{fam}"), f"{d.value} of the {'source' if d is Direction.EGRESS else 'destination'} pod", fam))
        # The chain's digest goes into the last rule's comment, which must be in both tables.
        rules.append(rule("", "RETURN", "end of policyd's checks"))
        return rules

    def skeleton(self) -> tuple[list[SetDef], list[MapDef], list[ChainDef]]:
        cfg, n = self.cfg, self.names
        sets: list[SetDef] = []
        if cfg.mode is DispatchMode.INTERFACE:
            maps = [MapDef(n.dispatch(d, "if"), "ifname") for d in Direction]
            for fam in (4, 6):
                if cfg.tracks_ifaces:
                    sets.append(SetDef(n.ifaces(fam), ("hash:net,iface", ipset_family(fam)), comment="local pod interfaces (any address)"))
                if cfg.anti_spoof:
                    sets.append(SetDef(n.addrs(fam), ("hash:net,iface", ipset_family(fam)), comment="local pod address . interface"))
        else:
            maps = [MapDef(n.dispatch(d, f"v{f}"), "ipv4_addr" if f == 4 else "ipv6_addr") for d in Direction for f in (4, 6)]
        chains = [ChainDef.build(n.base(h), self.base_rules(h), Hook(h, 0)) for h in ("forward", "input")]
        return sets, maps, chains


# --- dispatch chains from map elements ----------------------------------------------------


def map_families(m: MapDef) -> tuple[int, ...]:
    return {"ipv4_addr": (4,), "ipv6_addr": (6,)}.get(m.type, (4, 6))


def dispatch_rules(m: MapDef) -> list[str]:
    """A dispatch map as the arguments of its chain's rules (`-A` and the name excluded)."""
    if m.type == "ifname":
        opt = "-i" if "-EGRESS-" in m.name else "-o"
    else:
        opt = "-s" if "-EGRESS-" in m.name else "-d"
    return [f"{opt} {key} -j {chain}" for key, chain in m.elements]
