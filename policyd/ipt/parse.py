"""`iptables-save` and `ipset save` → the typed objects of `dataplane` (pure, total).

Each saved rule line of our chains becomes a `rules.Rule` of its table's family (a rule of
both families is listed once in each); dispatch chains come back as maps. Whatever is not
one of the shapes `spell.py` writes — an option, a target, an entry — becomes something no
desired object equals (`rules.Unknown`, `objects.Foreign`, FOREIGN_TARGET), never an
exception, so the next sync repairs it.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field

from ..dataplane import rules as ir
from ..dataplane.objects import FOREIGN_TARGET, AddrPort, ChainDef, Elem, Foreign, Hook, IfaceAddr, MapDef, Prefix, Ruleset, SetDef, SetKind
from .layout import BUILTIN, Names
from .spell import FAMILIES, HALVES, IPSET_TYPES, map_families

L4_PROTOS = ("tcp", "udp", "sctp")
SET_KIND_RE = re.compile(r"(sel|np|blk|nd|fq|ifaces|addr|dns)-(?:[0-9a-f]{16}-)?([46])$")
KINDS = {"sel": SetKind.ADDR, "nd": SetKind.ADDR, "fq": SetKind.ADDR, "dns": SetKind.ADDR, "np": SetKind.ADDR_PORT,
         "blk": SetKind.PREFIX, "ifaces": SetKind.IFACE, "addr": SetKind.IFACE_ADDR}


class Unreadable(Exception):
    pass


@dataclass
class Saved:
    """One family's `iptables-save -t filter`, reduced to what policyd owns."""

    chains: dict[str, list[str]] = field(default_factory=dict)  # our chain → its rule lines
    hooks: dict[str, str] = field(default_factory=dict)  # our chain jumped to from FORWARD/INPUT → that hook
    jump_rules: list[str] = field(default_factory=list)  # those jumps as saved (`-A FORWARD …`)
    jumps: dict[str, list[int]] = field(default_factory=dict)  # our chain → where its jumps stand in FORWARD/INPUT (0: first)


def parse_save(text: str, names: Names) -> Saved:
    out = Saved()
    builtin_hook = {v: k for k, v in BUILTIN.items()}
    prefix = names.chain_prefix
    position = {chain: 0 for chain in builtin_hook}
    for line in text.splitlines():
        if line.startswith(":" + prefix):
            out.chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain = line.split(maxsplit=2)[1]
            if chain.startswith(prefix):
                out.chains.setdefault(chain, []).append(line)
            elif chain in builtin_hook:
                target = line.rsplit(" -j ", 1)[-1].strip()
                if target.startswith(prefix):
                    out.hooks[target] = builtin_hook[chain]
                    out.jump_rules.append(line)
                    out.jumps.setdefault(target, []).append(position[chain])
                position[chain] += 1
    return out


# --- rules ------------------------------------------------------------------------------------


def set_kind(name: str, names: Names) -> tuple[SetKind, int]:
    rest = name.removeprefix(names.set_prefix)
    m = SET_KIND_RE.fullmatch(rest) if rest != name else None
    if m is None:
        raise Unreadable
    return KINDS[m.group(1)], int(m.group(2))


def _ports(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition(":")
        out.append((int(a), int(b or a)))
    return tuple(sorted(out))


PARSED_KEPT = 50_000  # lines remembered with what they parse to (a listing repeats them)
_parsed: dict[tuple[str, str, int], ir.AnyRule] = {}


def parse_rule(line: str, names: Names, family: int) -> ir.AnyRule:
    """One saved `-A CHAIN …` line of a chain of ours → a Rule of `family`, or Unknown.
    Remembered by its text: a listing of 12,000 rules parses only the lines that changed."""
    key = (line, names.table, family)
    got = _parsed.get(key)
    if got is None:
        try:
            got = _parse_rule(shlex.split(line)[2:], names, family)
        except (Unreadable, ValueError, IndexError, KeyError):
            got = ir.Unknown(line)
        if len(_parsed) >= PARSED_KEPT:
            _parsed.clear()
        _parsed[key] = got
    return got


def _parse_rule(t: list[str], names: Names, family: int) -> ir.Rule:
    matches: list[ir.Match] = []
    st: dict[str, object] = {"proto": None}  # the protocol, comment and limit seen so far
    verdict: ir.Verdict | None = None
    queue: ir.Queue | None = None
    nflog: tuple[str, int] | None = None
    maps = names.dispatch_maps()
    i, neg = 0, False
    while i < len(t):
        tok = t[i]
        if verdict is not None or nflog is not None:
            raise Unreadable
        if tok == "!":
            neg, i = True, i + 1
            continue
        if tok in ("-s", "-d"):
            net = ipaddress.ip_network(t[i + 1])
            if net.version != family:
                raise Unreadable
            matches.append(ir.NetMatch(ir.Side.SRC if tok == "-s" else ir.Side.DST, family, str(net), neg))
            i += 2
        elif tok in ("-i", "-o") and not neg:
            if not t[i + 1].endswith("+"):
                raise Unreadable
            matches.append(ir.IfacePrefix(ir.Side.SRC if tok == "-i" else ir.Side.DST, t[i + 1][:-1]))
            i += 2
        elif tok == "-p" and not neg and st["proto"] is None:
            st["proto"] = t[i + 1]
            i += 2
        elif tok == "-m" and not neg:
            i = _module(t, i + 2, t[i + 1], names, family, matches, st)
        elif tok in ("-j", "-g") and not neg:
            target = t[i + 1]
            i += 2
            if tok == "-g":
                verdict = ir.Verdict(ir.Kind.GOTO, target)
            elif target in ("ACCEPT", "DROP", "RETURN"):
                verdict = ir.Verdict(ir.Kind(target.lower()))
            elif target == "NFQUEUE":
                rest = t[i:]
                if rest[:1] != ["--queue-num"] or rest[2:] not in ([], ["--queue-bypass"]):
                    raise Unreadable
                verdict = ir.Verdict(ir.Kind.QUEUE)
                queue = ir.Queue(int(rest[1]), rest[2:] == ["--queue-bypass"])
                i = len(t)
            elif target == "NFLOG":
                opts = dict(zip(t[i::2], t[i + 1::2], strict=False))
                if set(opts) != {"--nflog-prefix", "--nflog-group"}:
                    raise Unreadable
                nflog = (opts["--nflog-prefix"], int(opts["--nflog-group"]))
                i = len(t)
            elif target in maps:
                m = maps[target]
                verdict = ir.Verdict(ir.Kind.DISPATCH, target, m.side, m.family)
            else:
                verdict = ir.Verdict(ir.Kind.JUMP, target)
        else:
            raise Unreadable
        neg = False
    proto, comment, limit = st["proto"], st.get("comment"), st.get("limit")
    if proto is not None:
        if proto == "ipv6-icmp":
            if not any(isinstance(m, ir.Icmp6Types) for m in matches):
                raise Unreadable
        elif isinstance(proto, str) and proto in L4_PROTOS and not any(isinstance(m, ir.L4 | ir.SrcPort) for m in matches):
            matches.append(ir.L4(proto))
        elif proto not in L4_PROTOS:
            raise Unreadable
    text, rid = ir.split_comment(comment if isinstance(comment, str) else "")
    log = None
    if nflog is not None:
        if not isinstance(limit, tuple) or nflog[0] != ir.LOG_PREFIX + rid:
            raise Unreadable
        log = ir.Log(nflog[1], limit[0], limit[1])
    elif limit is not None:
        raise Unreadable
    if verdict is None and log is None:
        raise Unreadable
    return ir.Rule(ir.ordered(matches), verdict, family, log, False, text, rid, queue=queue)


def _module(t: list[str], i: int, module: str, names: Names, family: int, matches: list[ir.Match], st: dict[str, object]) -> int:
    """A `-m module --options…` run from t[i]; returns where the next option starts."""
    def opt(name: str) -> str:
        if i >= len(t) or t[i] != name:
            raise Unreadable
        return t[i + 1]

    proto = st["proto"]
    if module in L4_PROTOS and module == proto and i < len(t) and t[i] == "--sport":
        matches.append(ir.SrcPort(module, int(opt("--sport"))))
        return i + 2
    if module in L4_PROTOS and module == proto:
        matches.append(ir.L4(module, _ports(opt("--dport"))))
        return i + 2
    if module == "multiport" and proto in L4_PROTOS:
        matches.append(ir.L4(str(proto), _ports(opt("--dports"))))
        return i + 2
    if module == "icmp6" and proto == "ipv6-icmp" and family == 6:
        matches.append(ir.Icmp6Types((int(opt("--icmpv6-type")),)))
        return i + 2
    if module == "conntrack":
        if i < len(t) and t[i] == "--ctdir":
            matches.append(ir.CtDirection(opt("--ctdir").lower()))
        else:
            matches.append(ir.CtState(tuple(sorted(s.lower() for s in opt("--ctstate").split(",")))))
        return i + 2
    if module == "connmark":
        value, _, mask = opt("--mark").partition("/")
        if not mask or int(value, 16) != int(mask, 16) or not int(value, 16):
            raise Unreadable
        matches.append(ir.CtMark(int(value, 16)))
        return i + 2
    if module == "comment":
        st["comment"] = opt("--comment")
        return i + 2
    if module == "limit":
        rate = opt("--limit")
        if not rate.endswith("/sec"):
            raise Unreadable
        i += 2
        burst = int(opt("--limit-burst"))
        st["limit"] = (int(rate[:-4]), burst)
        return i + 2
    if module == "set":
        negate = i < len(t) and t[i] == "!"
        i += negate
        name, flags = opt("--match-set"), t[i + 2]
        kind, fam = set_kind(name, names)
        if fam != family:
            raise Unreadable
        if kind is SetKind.IFACE and flags in ("src,src", "dst,dst"):
            matches.append(ir.IfaceSet(ir.Side(flags.split(",")[0]), name, negate))
        elif kind is SetKind.IFACE_ADDR and flags == "src,src":
            matches.append(ir.IfaceAddrSet(family, name, negate))
        elif kind is SetKind.ADDR_PORT and flags in ("src,src", "dst,dst") and not negate:
            matches.append(ir.AddrPortSet(ir.Side(flags.split(",")[0]), family, name))
        elif kind in (SetKind.ADDR, SetKind.PREFIX) and flags in ("src", "dst") and not negate:
            matches.append(ir.AddrSet(ir.Side(flags), family, name))
        else:
            raise Unreadable
        return i + 3
    raise Unreadable


COUNTED_RE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) .*-j (RETURN|DROP)$")
COMMENT_RE = re.compile(r'-m comment --comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')


def saved_counters(text: str, chain_prefix: str) -> list[tuple[str, str, int, int]]:
    """`iptables-save -c` → (chain, rule id, packets, bytes) of our chains' rules that carry an id."""
    out = []
    for line in text.splitlines():
        m = COUNTED_RE.match(line)
        if m is None or not m.group(3).startswith(chain_prefix):
            continue
        c = COMMENT_RE.search(line)
        rid = ir.split_comment((c.group(1) or c.group(2)) if c else "")[1]
        out.append((m.group(3), rid, int(m.group(1)), int(m.group(2))))
    return out


# --- dispatch chains and sets --------------------------------------------------------------

DISPATCH_RE = re.compile(r"^-A (\S+) -([iosd]) (\S+) -j (\S+)$")


def dispatch_elements(lines: list[str]) -> tuple[tuple[str, str], ...]:
    """A dispatch chain's rules back as map elements (a rule not of that shape: foreign)."""
    out = []
    for line in lines:
        m = DISPATCH_RE.match(line)
        if m is None:
            out.append((line, FOREIGN_TARGET))
            continue
        key = m.group(3)
        if m.group(2) in "sd":
            key = re.sub(r"/(32|128)$", "", key)
        out.append((key, m.group(4)))
    return tuple(sorted(out))


def entry_elem(entry: str, kind: SetKind) -> Elem:
    """One `ipset save` entry → an element (Foreign when not of the set's shape). The kernel
    formats entries of a set's type itself, so they are split, not validated again."""
    if kind is SetKind.ADDR:
        return entry if " " not in entry and "," not in entry else Foreign(entry)
    if kind is SetKind.PREFIX:
        net, _, flag = entry.partition(" ")
        addr, slash, length = net.partition("/")
        if flag not in ("", "nomatch") or (slash and not length.isdigit()):
            return Foreign(entry)
        if not slash:
            return Prefix(addr, 128 if ":" in addr else 32, True) if flag else addr
        return Prefix(addr, int(length), flag == "nomatch")
    if kind is SetKind.ADDR_PORT:
        addr, _, rest = entry.partition(",")
        proto, _, port = rest.partition(":")
        return AddrPort(addr, proto, int(port)) if port.isdigit() and proto else Foreign(entry)
    if kind is SetKind.IFACE_ADDR:
        addr, _, iface = entry.partition(",")
        return IfaceAddr(iface, addr) if iface and "/" not in addr else Foreign(entry)
    return Foreign(entry)


def iface_elements(entries: list[str], family: int) -> set[Elem]:
    """hash:net,iface entries of an interface set: an interface is both halves of its family."""
    halves: dict[str, set[str]] = {}
    out: set[Elem] = set()
    for e in entries:
        net, _, iface = e.partition(",")
        if net in HALVES[family] and iface:
            halves.setdefault(iface, set()).add(net)
        else:
            out.add(Foreign(e))
    for iface, got in halves.items():
        out.add(iface if got == set(HALVES[family]) else Foreign(f"{sorted(got)},{iface}"))
    return out


def parse_ipset_save(text: str, names: Names, elements: bool = True) -> dict[str, SetDef]:
    """`ipset save` (or, terse, `ipset list -t`) → our sets."""
    heads: dict[str, tuple[SetKind, int]] = {}
    entries: dict[str, list[str]] = {}
    learned: set[str] = set()  # created with timeouts
    name = None
    for line in text.splitlines():
        if line.startswith("create "):
            parts = shlex.split(line)
            n, typ = parts[1], parts[2]
            fam = parts[parts.index("family") + 1] if "family" in parts else "inet"
            if n.startswith(names.set_prefix):
                heads[n] = _head(n, typ, fam, names)
                entries[n] = []
                if "timeout" in parts:
                    learned.add(n)
        elif line.startswith("add "):
            _, n, rest = line.split(" ", 2)
            if n in entries:
                entries[n].append(rest.strip())
        elif line.startswith("Name: "):
            name = line[6:].strip()
        elif line.startswith("Type: ") and name and name.startswith(names.set_prefix):
            heads[name] = _head(name, line[6:].strip(), "inet", names)
        elif line.startswith("Header: ") and name in heads:
            parts = line[8:].split()
            fam = parts[parts.index("family") + 1] if "family" in parts else "inet"
            heads[name] = _head(name, _type_of(heads[name][0]), fam, names)
            if "timeout" in parts:
                learned.add(name)
    out = {}
    for n, (kind, family) in heads.items():
        elems: set[Elem] = set()
        if elements and n in entries and n not in learned:
            elems = iface_elements(entries[n], family) if kind is SetKind.IFACE else {entry_elem(e, kind) for e in entries[n]}
        out[n] = SetDef(n, kind, family, elements=frozenset(elems), learned=n in learned)
    return out


def _type_of(kind: SetKind) -> str:
    return IPSET_TYPES.get(kind, "?")


def _head(name: str, typ: str, fam: str, names: Names) -> tuple[SetKind, int]:
    """(kind, family) of one of our sets; a type or family its name does not have: a header
    no desired set has."""
    try:
        kind, family = set_kind(name, names)
    except Unreadable:
        return SetKind.ADDR, -1
    if IPSET_TYPES[kind] != typ or fam != ("inet" if family == 4 else "inet6"):
        return kind, -1
    return kind, family


def entry_counts(terse: str) -> dict[str, int]:
    """`ipset list -t` → each set's number of entries."""
    out, name = {}, None
    for line in terse.splitlines():
        if line.startswith("Name: "):
            name = line[6:].strip()
        elif line.startswith("Number of entries: ") and name is not None:
            out[name] = int(line.split(":", 1)[1])
    return out


def entries_of(s: SetDef) -> int:
    """How many ipset entries a set's elements are (an interface: two halves)."""
    return 2 * len(s.elements) if s.kind is SetKind.IFACE else len(s.elements)


def to_ruleset(saved: dict[int, Saved], sets: dict[str, SetDef], names: Names) -> Ruleset:
    """Both families' chains and the sets → one Ruleset; dispatch chains (named like the
    maps either mode has) come back as maps."""
    maps = names.dispatch_maps()
    rs = Ruleset(sets=dict(sets))
    for n in sorted(set(saved[4].chains) | set(saved[6].chains)):
        if n in maps:
            m = maps[n]
            # Missing in one of its families is not "empty": an empty dispatch chain lists
            # no rules either, so presence is checked first (else it is never re-created).
            got = [dispatch_elements(saved[f].chains[n]) if n in saved[f].chains else None for f in map_families(m)]
            same = all(g is not None and g == got[0] for g in got)
            rs.maps[n] = MapDef(n, m.side, m.family, got[0] if same and got[0] is not None else (("?", FOREIGN_TARGET),))
            continue
        rules = [parse_rule(line, names, f) for f in FAMILIES for line in saved[f].chains.get(n, [])]
        hooked = [saved[f].hooks[n] for f in FAMILIES if n in saved[f].hooks]
        # Hooked in a family: its one jump stands first; any other jump of it is a stray,
        # to delete before the jump is put first again.
        first = frozenset(f for f in FAMILIES if saved[f].jumps.get(n) == [0])
        stray = tuple(f for f in FAMILIES if f not in first for _ in saved[f].jumps.get(n, []))
        rs.chains[n] = ChainDef.read(n, rules, Hook(hooked[0], 0) if hooked else None, first, stray)
    return rs
